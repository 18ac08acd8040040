"""The overall verdict of an A/B/n experiment from its treatment comparisons' verdicts (pure: no database).

Each comparison (one treatment against the shared control) has its own verdict at alpha / k, so together they
hold the family-wise error rate at alpha. The overall verdict says which variant, if any, wins: the contract's
goal surface (`surface.decide`) ranks the treatments on their per-metric intervals and gives the Pareto set;
the winner is the best-ranked treatment whose own verdict is ``variant_wins``.
"""

from __future__ import annotations

from typing import Any, Mapping

from experimenttracker_pipeline.model.experiment import Experiment
from experimenttracker_pipeline.stages.reporting.deciding import deciding_ci
from experimenttracker_pipeline.stages.verdict.rule import CONTROL_WINS, VARIANT_WINS, EvaluationPolicy
from experimenttracker_pipeline.stages.verdict.surface import MetricCI
from experimenttracker_pipeline.stages.verdict.surface import decide as decide_surface

STATISTICAL = (VARIANT_WINS, CONTROL_WINS, "inconclusive", "insufficient_samples")
INSUFFICIENT = "insufficient_samples"


def comparison_metrics(final: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> dict[str, MetricCI]:
    """A comparison's per-metric intervals: every metric of its latest look, the primary edge metric on the
    verdict's own (deciding) interval."""
    out: dict[str, MetricCI] = {}
    for name, ci in ((evaluation or {}).get("metrics") or {}).items():
        if ci.get("estimate") is not None and ci.get("ci_95_low") is not None and ci.get("ci_95_high") is not None:
            out[name] = MetricCI.of(ci)
    if final.get("ci_95_low") is not None and final.get("ci_95_high") is not None and final.get("edge_delta_bps") is not None:
        out["edge_delta_bps"] = MetricCI(float(final["edge_delta_bps"]), float(final["ci_95_low"]),
                                         float(final["ci_95_high"]), int(final.get("samples") or 0))
    return out


def overall_verdict(experiment: Experiment, comparisons: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The overall verdict of ``experiment`` (an A/B/n experiment) from ``comparisons``: variant id -> {``final``:
    the comparison's latest verdict document or None, ``evaluation``: its latest look or None, ``samples``,
    ``drift_signalled``}. Returns the experiment-level fields (``verdict``, ``winning_variant``, the winner's or else
    the best-ranked treatment's ``ci_95_low``/``ci_95_high``/``edge_delta_bps``, ``samples`` summed over the
    comparisons), the ``ranking`` and ``pareto_set`` of the goal surface, and a ``variants`` object."""
    contract = experiment.contract
    treatments = [v.id for v in contract.treatments]
    finals = {vid: (comparisons.get(vid) or {}).get("final") for vid in treatments}
    per_variant = {vid: comparison_metrics(finals[vid], (comparisons.get(vid) or {}).get("evaluation"))
                   for vid in treatments if finals[vid]}
    stat = {vid: (finals[vid]["verdict"] if finals[vid]["verdict"] in STATISTICAL else "inconclusive")
            if finals[vid] else INSUFFICIENT for vid in treatments}
    # The comparisons' intervals are at alpha / k already: the surface must not correct them a second time.
    surface = decide_surface(contract, per_variant, stat_verdicts=stat, alpha=EvaluationPolicy.alpha)
    decided = {vid: (finals[vid] or {}).get("verdict") or INSUFFICIENT for vid in treatments}
    winners = [vid for vid in surface.ranking if vid in decided and decided[vid] == VARIANT_WINS]
    winner = winners[0] if winners else None
    if winner:
        verdict = VARIANT_WINS
    elif all(v == CONTROL_WINS for v in decided.values()):
        verdict = CONTROL_WINS
    elif all(v == INSUFFICIENT for v in decided.values()):
        verdict = INSUFFICIENT
    else:
        verdict = "inconclusive"
    shown = winner or next((vid for vid in surface.ranking if vid in per_variant), None)
    shown_final = (finals.get(shown) or {}) if shown else {}
    variants = {}
    for v in contract.treatments:
        final = finals[v.id] or {}
        info = comparisons.get(v.id) or {}
        ci = deciding_ci(final) if final else None
        variants[v.id] = {
            "variant_slug": v.slug, "experiment_id": f"{experiment.experiment_id}/{v.id}",
            "verdict": final.get("verdict") or INSUFFICIENT,
            "ci_95_low": final.get("ci_95_low"), "ci_95_high": final.get("ci_95_high"),
            "edge_delta_bps": final.get("edge_delta_bps"), "samples": int(info.get("samples") or 0),
            "drift_signalled": bool(info.get("drift_signalled")),
            "ci_method": ci["method"] if ci else final.get("basis"),
            "reason_codes": list(final.get("reason_codes") or []),
        }
    reasons = sorted({code for v in variants.values() for code in v["reason_codes"]})
    return {
        "verdict": verdict, "winning_variant": winner,
        "winning_variant_slug": contract.variant(winner).slug if winner else None,
        "ci_95_low": shown_final.get("ci_95_low"), "ci_95_high": shown_final.get("ci_95_high"),
        "edge_delta_bps": shown_final.get("edge_delta_bps"), "ci_variant": shown,
        "samples": sum(v["samples"] for v in variants.values()),
        "drift_signalled": any(v["drift_signalled"] for v in variants.values()),
        "ranking": list(surface.ranking), "pareto_set": list(surface.pareto_set),
        "multiple_testing": {"correction": "bonferroni_across_treatments", "treatments": len(treatments),
                             "family_alpha": EvaluationPolicy.alpha,
                             "alpha_per_treatment": EvaluationPolicy.alpha / len(treatments)},
        "reason_codes": reasons, "plain_english": _plain(verdict, winner, contract, variants),
        "variants": variants,
    }


def _plain(verdict: str, winner: str | None, contract, variants: Mapping[str, Mapping[str, Any]]) -> str:
    if winner:
        return (f"Variant {winner} ({contract.variant(winner).slug}) beat the control and ranks first among the "
                f"{len(variants)} treatments; each was tested at a family-wise 5% error rate.")
    losers = [vid for vid, v in variants.items() if v["verdict"] == CONTROL_WINS]
    if len(losers) == len(variants):
        return "The control beat every treatment."
    if all(v["verdict"] == INSUFFICIENT for v in variants.values()):
        return "Not enough matched samples yet for any treatment."
    return ("No treatment has been shown better than the control yet"
            + (f"; {', '.join(losers)} did worse" if losers else "") + ".")
