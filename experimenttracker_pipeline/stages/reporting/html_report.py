"""Self-contained HTML experiment reports (no script, no CDN, no network: charts are embedded base64 PNGs) and an
index page of every experiment."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experimenttracker_pipeline.stages.declarations.queries import experiment_row
from experimenttracker_pipeline.stages.promotion.queries import promotions, signoffs
from experimenttracker_pipeline.stages.promotion.signoff import promotion_state
from experimenttracker_pipeline.stages.reporting import charts
from experimenttracker_pipeline.stages.reporting.deciding import (
    DECIDING_LABEL,
    SUPPORTING_LABEL,
    deciding_ci,
    fmt_bps,
    fmt_interval,
    supporting_intervals,
)
from experimenttracker_pipeline.stages.reporting.overview import (
    OVERVIEW_COLUMNS,
    ci_over_time_png,
    drift_state,
    latest_causal_doc,
    overview_forest,
    overview_rows,
    power_progress,
    segment_forest_png,
    segment_rows,
    srm_state,
)
from experimenttracker_pipeline.stages.reporting.queries import drift_signal_states
from experimenttracker_pipeline.stages.intervals.queries import latest_evaluation
from experimenttracker_pipeline.stages.verdict.queries import latest_result_report_id, latest_verdict
from experimenttracker_pipeline.stages.reporting.renders import report_file_name
from experimenttracker_pipeline.store import Store

INDEX = "index.html"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f5f8}tr.deciding td{background:#eef6ee;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;background:#eee;font-weight:600}
.variant_wins{background:#d4f0d4}.control_wins,.harm_detected,.guardrail_violated{background:#f6d5d5}
.summary{font-size:1.05em;background:#f8f8fb;border-left:4px solid #1f5fa8;padding:8px 12px}
img.chart{max-width:100%;height:auto;border:1px solid #eee}pre{background:#f6f6f6;padding:10px;white-space:pre-wrap;word-break:break-word;font-size:0.85em}
.muted{color:#666}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str | None = None,
           row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{escape(_cell(v))}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else f"<td>{escape(_cell(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _img(png: bytes | None, ident: str, alt: str) -> str:
    data = charts.b64(png)
    if data is None:
        return f'<p class="muted">No {escape(alt)} yet (too few samples).</p>'
    return f'<img class="chart" id="{ident}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def experiment_report_data(store: Store, experiment_id: str) -> dict[str, Any] | None:
    """Everything one experiment report shows, or None before the experiment's first verdict."""
    exp = experiment_row(store, experiment_id)
    verdict_row = latest_verdict(store, experiment_id)
    if exp is None or verdict_row is None:
        return None
    verdict = json.loads(verdict_row["verdict_json"])
    evaluation_row = latest_evaluation(store, experiment_id)
    evaluation = json.loads(evaluation_row["evaluation_json"]) if evaluation_row else {}
    causal = latest_causal_doc(store, experiment_id)
    report_id = latest_result_report_id(store, experiment_id)
    return {
        "experiment": exp, "verdict": verdict, "verdict_id": int(verdict_row["id"]), "evaluation": evaluation, "causal": causal,
        "deciding_ci": deciding_ci(verdict), "supporting": supporting_intervals(verdict, causal),
        "power": power_progress(evaluation), "srm": srm_state(evaluation),
        "drift": drift_state(drift_signal_states(store).get(experiment_id), bool(verdict.get("drift_signalled"))),
        "promotion": promotion_state(store, experiment_id), "signoffs": signoffs(store, experiment_id),
        "promotions": promotions(store, experiment_id), "report_id": report_id,
        "result_json": store.report(report_id) if report_id else None,
        "segments": segment_rows(causal),
        "ci_chart": ci_over_time_png(store, experiment_id, evaluation or None, verdict),
        "segment_chart": segment_forest_png(experiment_id, causal),
    }


def render_experiment(data: Mapping[str, Any]) -> str:
    """The HTML report of one experiment (``experiment_report_data``)."""
    exp, v, ci = data["experiment"], data["verdict"], data["deciding_ci"]
    eid = exp["experiment_id"]
    parts = [f"<h1>{escape(eid)}: {escape(exp['variant_slug'])} vs {escape(exp['control_slug'])}</h1>",
             f'<p class="muted">{escape(exp["mode"])} experiment, {escape(str(exp.get("status")))}; report written '
             f'{datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}. <a href="{INDEX}">All experiments</a></p>',
             f'<p>Verdict: <span class="verdict {escape(v["verdict"])}" id="verdict">{escape(v["verdict"])}</span></p>',
             f'<p class="summary" id="plain-english">{escape(v.get("plain_english") or "")}</p>',
             "<h2>Results</h2>"]
    rows = [[DECIDING_LABEL, ci["method_name"], fmt_bps(ci["estimate_bps"]), fmt_interval(ci["ci_95_low"], ci["ci_95_high"]),
             v.get("samples"), "decides the verdict"]]
    rows += [[SUPPORTING_LABEL, s["label"], fmt_bps(s["estimate_bps"]), fmt_interval(s["ci_95_low"], s["ci_95_high"]),
              v.get("samples"), s["note"]] for s in data["supporting"]]
    parts.append(_table(["role", "interval", "estimate (bps)", "95% interval", "samples", "note"], rows, "results",
                        ["deciding"] + [""] * len(data["supporting"])))
    parts.append(f'<p id="why-deciding">{escape(ci["why"])}</p>')
    parts += ["<h2>Edge delta over samples</h2>", _img(data["ci_chart"], "ci-over-time", "CI-over-time chart")]
    p, srm = data["power"], data["srm"]
    parts += ["<h2>Power and sample size</h2>", _table(
        ["samples", "required samples", "progress", "power", "expected days to a decision", "samples per day"],
        [[p["samples"], p["required_samples"], f"{100 * p['progress']:.0f}%" if p["progress"] is not None else None,
          p["power"], p["expected_days"], p["samples_per_day"]]], "power")]
    parts += ["<h2>Sample ratio mismatch (SRM)</h2>", _table(
        ["p-value", "variant fills", "control fills", "expected share", "observed share", "reading"],
        [[srm.get("p_value"), srm.get("n_variant"), srm.get("n_control"), srm.get("expected_share"),
          srm.get("observed_share"), srm["note"]]], "srm")]
    parts.append("<h2>Segments</h2>")
    if data["segments"]:
        parts.append(_table(["segment", "fills", "estimate (bps)", "95% interval", "harmed"],
                            [[s["segment"], s["n"], fmt_bps(s["estimate_bps"]), fmt_interval(s["ci_95_low"], s["ci_95_high"]),
                              "HARMED" if s["harmed"] else "no"] for s in data["segments"]], "segments"))
        parts.append(_img(data["segment_chart"], "segment-forest", "segment forest plot"))
    else:
        parts.append('<p class="muted">No segment effects estimated.</p>')
    stops = v.get("stop_rules") or []
    parts.append("<h2>Stop rules</h2>")
    parts.append(_table(["rule", "reason code", "action", "message"],
                        [[r.get("rule"), r.get("reason_code"), r.get("action"), r.get("message")] for r in stops], "stop-rules")
                 if stops else '<p class="muted">No stop rule fired.</p>')
    gov, d, promo = v.get("governance") or {}, data["drift"], data["promotion"]
    parts += ["<h2>Governance, sign-off and promotion</h2>", _table(
        ["risk level", "approved", "missing roles", "promotion state", "detail", "drift signal", "drift sent at"],
        [[gov.get("risk_level"), "yes" if gov.get("approved") else "no", ", ".join(gov.get("missing_roles") or []) or "none",
          promo.state, promo.detail, d["state"], d["sent_at"]]], "governance")]
    if data["signoffs"]:
        parts.append(_table(["signed at", "approver", "verdict", "report", "note"],
                            [[str(s["signed_at"]), s["approver"], s["verdict"], s["report_id"], s.get("note") or ""]
                             for s in data["signoffs"]], "signoffs"))
    else:
        parts.append('<p class="muted">No sign-off recorded.</p>')
    parts.append(f"<p>Reason codes: {escape(', '.join(v.get('reason_codes') or []) or 'none')}</p>")
    parts += ["<h2>EXPERIMENT_RESULT</h2>",
              f'<pre id="result-json">{escape(json.dumps(data["result_json"], indent=2, sort_keys=True)) if data["result_json"] else "No result report emitted yet."}</pre>']
    return _page(f"{eid}: experiment report", "\n".join(parts))


def render_index(rows: list[dict[str, Any]], forest_png: bytes | None) -> str:
    """The index page: every experiment's overview row, linking to its report, and the forest plot."""
    names = [name for name, _, _ in OVERVIEW_COLUMNS]
    body = ["<h1>Experiments</h1>", f'<p class="muted">{len(rows)} experiments; written '
            f'{datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.</p>']
    head = "".join(f"<th>{escape(n.replace('_', ' '))}</th>" for n in names)
    lines = []
    for row in rows:
        cells = []
        for n in names:
            value = row[n]
            if n == "experiment_id" and row.get("_ci"):
                cells.append(f'<td><a href="{escape(report_file_name(value))}">{escape(value)}</a></td>')
            else:
                cells.append(f"<td>{escape(_cell(value))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    body.append(f'<table id="experiments"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>')
    body += ["<h2>Deciding CIs</h2>", _img(forest_png, "forest-plot", "forest plot")]
    return _page("Experiments", "\n".join(body))


def render_report(store: Store, experiment_id: str, out: Path) -> tuple[Path, bytes | None] | None:
    """Write one experiment's report to ``out``; (path, its CI-over-time PNG), None before its first verdict.
    Reports written into the reports folder are remembered as showing their verdict (see ``renders``)."""
    from experimenttracker_pipeline.stages.reporting.renders import mark_rendered

    data = experiment_report_data(store, experiment_id)
    if data is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_experiment(data), encoding="utf-8")
    if out.name == report_file_name(experiment_id):
        mark_rendered(out.parent, {experiment_id: data["verdict_id"]})
    return out, data["ci_chart"]


def write_experiment_report(store: Store, experiment_id: str, out: Path) -> Path | None:
    """Write one experiment's report to ``out``; its path, None before the experiment's first verdict."""
    rendered = render_report(store, experiment_id, out)
    return None if rendered is None else rendered[0]


def write_index(store: Store, reports_dir: Path) -> Path:
    rows = overview_rows(store)
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / INDEX
    path.write_text(render_index(rows, overview_forest(rows)), encoding="utf-8")
    return path
