"""How one verdict is shown on its asset page: the deciding CI first, supporting evidence after it, SRM, power
progress, harmed segments, reason codes and stop rules as markdown; numbers rounded for reading."""

from __future__ import annotations

import json
from typing import Any, Mapping

from experimenttracker_pipeline.stages.intervals.queries import latest_evaluation
from experimenttracker_pipeline.stages.reporting.deciding import (
    DECIDING_LABEL,
    SUPPORTING_LABEL,
    deciding_ci,
    fmt_bps,
    fmt_interval,
    rounded,
    supporting_intervals,
)
from experimenttracker_pipeline.stages.reporting.overview import latest_causal_doc, power_progress, srm_state
from experimenttracker_pipeline.store import Store


def intervals_markdown(verdict: Mapping[str, Any], causal: Mapping[str, Any] | None) -> str:
    ci = deciding_ci(verdict)
    rows = [f"| **{DECIDING_LABEL}** | **{ci['method_name']}** | **{fmt_bps(ci['estimate_bps'])}** | "
            f"**{fmt_interval(ci['ci_95_low'], ci['ci_95_high'])}** | decides the verdict |"]
    rows += [f"| {SUPPORTING_LABEL} | {s['label']} | {fmt_bps(s['estimate_bps'])} | "
             f"{fmt_interval(s['ci_95_low'], s['ci_95_high'])} | {s['note']} |" for s in supporting_intervals(verdict, causal)]
    return ("| role | interval | estimate (bps) | 95% interval | note |\n|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\n{ci['why']}")


def power_markdown(progress: Mapping[str, Any]) -> str:
    pct = f"{100 * progress['progress']:.0f}%" if progress["progress"] is not None else "n/a"
    return ("| samples | required samples | progress | power | expected days to a decision |\n|---|---|---|---|---|\n"
            f"| {progress['samples']} | {progress['required_samples']} | {pct} | {progress['power']} | "
            f"{progress['expected_days']} |")


def srm_markdown(srm: Mapping[str, Any]) -> str:
    if srm["p_value"] is None:
        return f"SRM: {srm['note']}."
    return ("| p-value | variant fills | control fills | expected share | observed share | reading |\n|---|---|---|---|---|---|\n"
            f"| {srm['p_value']} | {srm['n_variant']} | {srm['n_control']} | {srm['expected_share']} | "
            f"{srm['observed_share']} | {srm['note']} |")


def stop_rules_markdown(stop_rules: Any) -> str:
    rules = list(stop_rules or [])
    if not rules:
        return "No stop rule fired."
    return "| rule | reason code | action | message | detail |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r.get('rule')} | {r.get('reason_code')} | {r.get('action')} | {r.get('message')} | "
        f"{', '.join(str(d) for d in r.get('detail') or [])} |" for r in rules)


def verdict_summary(store: Store, experiment_id: str, verdict: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the verdict page shows, computed once."""
    row = latest_evaluation(store, experiment_id)
    evaluation = json.loads(row["evaluation_json"]) if row else {}
    causal = latest_causal_doc(store, experiment_id)
    ci = deciding_ci(verdict)
    progress, srm = power_progress(evaluation), srm_state(evaluation)
    harmed = list(verdict.get("harmed_segments") or [])
    codes = list(verdict.get("reason_codes") or [])
    return {
        "deciding_ci": ci, "deciding_ci_text": f"{fmt_interval(ci['ci_95_low'], ci['ci_95_high'])} ({ci['method_name']})",
        "rounded": {k: rounded(verdict.get(k), 3) for k in ("edge_delta_bps", "ci_95_low", "ci_95_high")},
        "intervals_md": intervals_markdown(verdict, causal), "power": progress, "srm": srm,
        "power_md": power_markdown(progress), "srm_md": srm_markdown(srm),
        "harmed_md": "\n".join(f"- {h}" for h in harmed) if harmed else "None.",
        "reason_codes_md": "\n".join(f"- `{c}`" for c in codes) if codes else "None.",
        "stop_rules_md": stop_rules_markdown(verdict.get("stop_rules")),
    }
