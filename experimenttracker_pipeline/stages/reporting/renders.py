"""Which HTML reports are behind their experiment's latest verdict, and rendering a bounded number of them.

Drawing a report's charts costs about a second, far more than the evaluation it shows, so a pass over many
experiments renders only the newest ``limit`` stale reports and leaves the rest for the next pass or for
`experimenttracker report --all`. The reports folder remembers which verdict each report shows
(``.rendered.json``), so nothing is drawn twice for the same verdict.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from experimenttracker_pipeline.stages.reporting.queries import latest_verdict_ids
from experimenttracker_pipeline.store import Store


def report_file_name(experiment_id: str) -> str:
    """The report's file name in the reports folder: ``<experiment_id>.html``, with the ``/`` of an A/B/n
    comparison (``<experiment_id>/<variant_id>``) written as ``--`` so every report stays in the one folder."""
    return experiment_id.replace("/", "--") + ".html"

RENDERED = ".rendered.json"


def rendered_verdicts(reports_dir: Path) -> dict[str, int]:
    """experiment_id -> the verdict id its report shows (empty when unknown or unreadable)."""
    try:
        data = json.loads((Path(reports_dir) / RENDERED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}


def mark_rendered(reports_dir: Path, shown: dict[str, int]) -> None:
    """Record that the reports of ``shown`` (experiment_id -> verdict id) are current; replaced atomically."""
    if not shown:
        return
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    merged = {**rendered_verdicts(reports_dir), **shown}
    fd, tmp = tempfile.mkstemp(dir=reports_dir, prefix=".rendered-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(merged, handle, sort_keys=True)
    os.replace(tmp, reports_dir / RENDERED)


def stale_reports(store: Store, reports_dir: Path, experiment_ids: list[str]) -> list[str]:
    """Those of ``experiment_ids`` whose report is missing or shows an older verdict, newest verdict first."""
    latest = latest_verdict_ids(store, list(experiment_ids))
    shown = rendered_verdicts(reports_dir)
    stale = [e for e, vid in latest.items()
             if shown.get(e) != vid or not (Path(reports_dir) / report_file_name(e)).exists()]
    return sorted(stale, key=lambda e: latest[e], reverse=True)


@dataclass
class Rendering:
    """What one bounded rendering did: reports written (with their CI-over-time chart) and those left stale."""

    written: dict[str, Path] = field(default_factory=dict)
    charts: dict[str, bytes] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    index: Path | None = None


def render_stale_reports(store: Store, reports_dir: Path, experiment_ids: list[str], *, limit: int | None,
                         index: bool = True) -> Rendering:
    """Write the HTML reports of up to ``limit`` stale experiments among ``experiment_ids`` (None: all of them),
    newest verdict first, then (with ``index``) the index page."""
    from experimenttracker_pipeline.stages.reporting.html_report import render_report, write_index

    stale = stale_reports(store, reports_dir, experiment_ids)
    chosen = stale if limit is None else stale[:max(0, limit)]
    result = Rendering(pending=[e for e in stale if e not in chosen])
    if not chosen:
        return result
    for experiment_id in chosen:
        rendered = render_report(store, experiment_id, Path(reports_dir) / report_file_name(experiment_id))
        if rendered is not None:
            result.written[experiment_id], chart = rendered
            if chart:
                result.charts[experiment_id] = chart
    if index:
        result.index = write_index(store, Path(reports_dir))
    return result
