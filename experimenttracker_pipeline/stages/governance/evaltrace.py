"""EvalTrace (spec 10): the auditable record of one experiment, and its persona views (spec 9.2).

``build_eval_trace`` assembles plain inputs into one canonical JSON document
(``si/jcs-strict/v1``, see :mod:`.canonical`) and its ``sha256:`` digest. No clock is read and
set-like inputs (ETH findings, harmed segments, sign-offs, approvals, PoLB history) are sorted,
so the same inputs always give the same bytes. Floats in free-form inputs are exported as
integer micros under ``<key>_micros`` (spec 0: no floats in digest-bound artifacts).

``render_persona`` renders a trace for a ``trader`` (plain English), ``risk`` (guardrails,
harmed segments, stop rules, ETH) or ``governance`` (contract, approvals, trace digest) reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import experimenttracker_pipeline.model.canonical as cj
from experimenttracker_pipeline.model.contract import ExperimentContract
from experimenttracker_pipeline.stages.governance.risk import evaluate_governance
from experimenttracker_pipeline.stages.reporting.deciding import DECIDING_LABEL, method_name
from experimenttracker_pipeline.stages.verdict.wording import fired_stops, harm_found, reconcile_text
from experimenttracker_pipeline.stages.verdict.surface import (
    FiredRule,
    MetricCI,
    SurfaceDecision,
    decide,
)

SCHEMA = "experimenttracker/eval-trace/v1"
PERSONAS = ("trader", "risk", "governance")


@dataclass(frozen=True)
class EvalTrace:
    data: dict[str, Any]
    canonical_bytes: bytes
    digest: str

    def write(self, path: str | Path) -> None:
        """Write the canonical bytes (exporting twice writes identical files)."""
        Path(path).write_bytes(self.canonical_bytes)


def _sorted_records(items: Iterable[Any], path: str) -> list[Any]:
    recs = [cj.to_exportable(x, f"{path}[{i}]") for i, x in enumerate(items)]
    return sorted(recs, key=cj.canonical_json)


def _time_key(rec: Any) -> str:
    if isinstance(rec, Mapping):
        for k in ("at", "time", "date", "start", "recorded_at", "signed_at"):
            if isinstance(rec.get(k), str):
                return rec[k]
    return ""


def build_eval_trace(
    contract: ExperimentContract, *, as_of: datetime | str, created_at: datetime | str | None = None,
    outcomes: Mapping[str, Any] | None = None, window: str | None = None,
    decision: SurfaceDecision | None = None, stat_verdicts: Mapping[str, str] | None = None,
    verdict: Mapping[str, Any] | None = None, assignments: Mapping[str, Any] | None = None,
    stop_rules_fired: Iterable[FiredRule | Mapping[str, Any]] = (),
    eth_findings: Iterable[Mapping[str, Any]] = (), harmed_segments: Iterable[Mapping[str, Any]] = (),
    approvals: Iterable[Any] = (), signoffs: Iterable[Mapping[str, Any]] = (),
    polb_history: Iterable[Mapping[str, Any]] = (), bindings: Mapping[str, Any] | None = None,
) -> EvalTrace:
    """Assemble the EvalTrace of ``contract`` from plain inputs; same inputs -> same bytes.

    ``outcomes``: ``{variant_id: {metric: {estimate, ci_95_low, ci_95_high, n}}}`` (or metric-keyed
    for one treatment); the surface ``decision`` is computed from it when not given.
    ``verdict``: the EXPERIMENT_RESULT fields of the latest verdict. ``assignments``: a summary from
    :func:`.assignment.summarize`. ``bindings``: extra ``{name: {id, digest}}`` pins.
    ``as_of`` is the time of the evidence (e.g. the last sample); ``created_at`` defaults to it.
    """
    if decision is None and outcomes:
        decision = decide(contract, outcomes, stat_verdicts=stat_verdicts)
    metrics: dict[str, Any] = {}
    if decision is not None:
        metrics = {d.variant: {m: ci.to_export() for m, ci in sorted(d.metrics.items())}
                   for d in decision.variants}
    elif outcomes:
        metrics = {v: {m: MetricCI.of(ci).to_export() for m, ci in sorted(per.items())}
                   for v, per in outcomes.items()}

    binds: dict[str, Any] = {"experiment": contract.binding,
                             "eval_surface": contract.eval_surface_binding}
    for name, b in (bindings or {}).items():
        if not isinstance(b, Mapping) or set(b) != {"id", "digest"} or not cj.is_digest(b["digest"]):
            raise ValueError(f"binding {name!r} must be {{id, digest}} with a sha256: digest")
        if name in binds:
            raise ValueError(f"binding {name!r} is reserved")
        binds[name] = {"id": str(b["id"]), "digest": b["digest"]}

    fired = [f.to_export() if isinstance(f, FiredRule) else cj.to_exportable(f, "stop_rules_fired")
             for f in stop_rules_fired]
    gov = evaluate_governance(contract, approvals)
    history = [cj.to_exportable(x, f"polb_history[{i}]") for i, x in enumerate(polb_history)]
    history.sort(key=lambda r: (_time_key(r), cj.canonical_json(r)))
    signs = [cj.to_exportable(x, f"signoffs[{i}]") for i, x in enumerate(signoffs)]
    signs.sort(key=lambda r: (_time_key(r), cj.canonical_json(r)))

    data = {
        "schema": SCHEMA,
        "kind": "eval_trace",
        "experiment_id": contract.experiment_id,
        "subject": contract.subject,
        "principal": contract.principal,
        "eval_surface_id": contract.eval_surface.id,
        **cj.provenance_fields(created_at if created_at is not None else as_of, as_of),
        "bindings": binds,
        "contract": contract.to_canonical(),
        "assignments": cj.to_exportable(assignments, "assignments") if assignments is not None else None,
        "outcomes": {"window": window, "metrics": metrics},
        "verdict": cj.to_exportable(verdict, "verdict") if verdict is not None else None,
        "surface": decision.to_export(include_metrics=False) if decision is not None else None,
        "stop_rules_fired": fired,
        "ethics": {
            "violations_detected": list(decision.harm_reasons) if decision is not None else [],
            "findings": _sorted_records(eth_findings, "eth_findings"),
            "harmed_segments": _sorted_records(harmed_segments, "harmed_segments"),
        },
        "governance": gov.to_export(),
        "signoffs": signs,
        "polb": {**contract.polb_config.to_canonical(), "history": history},
    }
    raw = cj.canonical_json(data)
    return EvalTrace(data, raw, cj.digest_bytes(raw))


# -- persona views ---------------------------------------------------------------------------

_LABEL = {"edge_delta_bps": "Edge", "slippage_delta_bps": "Slippage",
          "fill_quality_delta": "Fill quality", "fill_size_ratio": "Fill size"}
_OP_WORDS = {"<=": "at most", "<": "below", ">=": "at least", ">": "above"}

TRADER_TEXT = {
    # spec (bot) section 17 wording where it exists
    "variant_wins": "The new strategy version performed better in testing and has been flagged "
                    "for promotion review.",
    "insufficient_samples": "The experiment is still collecting data. No conclusion yet.",
    "control_wins": "The new strategy version performed worse than the current one in testing "
                    "and will not be promoted.",
    "inconclusive": "So far there is no clear difference between the new strategy version and "
                    "the current one. The experiment keeps collecting data.",
    "guardrail_violated": "The new strategy version broke one of its safety limits and will not "
                          "be promoted.",
    "blocked_by_guardrail": "The new strategy version looks better, but it has not yet been shown "
                            "to stay within its safety limits, so it is not a winner yet.",
}


def _load(trace: EvalTrace | Mapping[str, Any] | bytes | str) -> tuple[dict[str, Any], str]:
    if isinstance(trace, EvalTrace):
        return trace.data, trace.digest
    if isinstance(trace, (bytes, str)):
        data = json.loads(trace)
        return data, cj.digest(data)
    return dict(trace), cj.digest(trace)


def _fmt(x: float | None, metric: str, signed: bool = True) -> str:
    if x is None:
        return "n/a"
    unit = " bps" if metric.endswith("_bps") else ""
    return f"{x:+.2f}{unit}" if signed else f"{x:.2f}{unit}"


def _describe_constraint(expr: str, contract: Mapping[str, Any]) -> str:
    for c in contract["eval_surface"]["constraints"]["hard"] + contract["eval_surface"]["constraints"]["soft"]:
        if c["expr"] == expr:
            unit = " bps" if c["metric"].endswith("_bps") else ""
            return (f"{_LABEL.get(c['metric'], c['metric']).lower()} difference "
                    f"{_OP_WORDS[c['op']]} {c['threshold_micros'] / cj.MICROS:g}{unit}")
    return expr


def render_persona(trace: EvalTrace | Mapping[str, Any] | bytes | str, persona: str) -> str:
    """Markdown view of an EvalTrace for ``trader``, ``risk`` or ``governance``."""
    if persona not in PERSONAS:
        raise ValueError(f"unknown persona {persona!r}; expected one of {', '.join(PERSONAS)}")
    data, trace_digest = _load(trace)
    return {"trader": _trader, "risk": _risk, "governance": _governance}[persona](data, trace_digest)


def _variant_slug(data: Mapping[str, Any], vid: str) -> str:
    return data["contract"]["variants"].get(vid, {}).get("slug", vid)


def _trader(data: Mapping[str, Any], _digest: str) -> str:
    c = data["contract"]
    lines = [f"# {data['experiment_id']}: {c['variant_slug']} vs {c['control_slug']}", ""]
    surface = data.get("surface")
    stops = fired_stops(data.get("stop_rules_fired"))
    harmed = data["ethics"]["harmed_segments"]
    if not surface or not surface["variants"]:
        lines.append(reconcile_text(TRADER_TEXT["insufficient_samples"], stops, harmed))
    basis = (data.get("verdict") or {}).get("basis")
    for v in (surface or {}).get("variants", []):
        vid = v["variant"]
        head = "" if len(surface["variants"]) == 1 else f"**{_variant_slug(data, vid)}**: "
        lines.append(head + reconcile_text(TRADER_TEXT.get(v["verdict"], v["verdict"]), stops, harmed))
        broken = [h for h in v["hard_constraints"] if h["status"] != "holds"]
        for h in broken:
            what = _describe_constraint(h["expr"], c)
            state = {"violated": "was broken", "unresolved": "is not yet confirmed",
                     "no_data": "has no data yet"}[h["status"]]
            lines.append(f"- Safety limit {state}: {what}.")
        for m, ci in sorted(data["outcomes"]["metrics"].get(vid, {}).items()):
            est, lo, hi = (cj.from_micros(ci[k]) for k in ("estimate_micros", "ci_95_low_micros", "ci_95_high_micros"))
            if m == "fill_size_ratio":
                lines.append(f"- Fill size: {est:.2f}x the current strategy's (95% range {lo:.2f}x "
                             f"to {hi:.2f}x), from {ci['n']} paired fills.")
            elif m == "edge_delta_bps" and basis and len(surface["variants"]) == 1:
                lines.append(f"- Edge ({DECIDING_LABEL}, {method_name(basis)}): {_fmt(est, m)} versus the current "
                             f"strategy (95% range {_fmt(lo, m)} to {_fmt(hi, m)}), from {ci['n']} paired fills.")
            else:
                lines.append(f"- {_LABEL.get(m, m)}: {_fmt(est, m)} versus the current strategy "
                             f"(95% range {_fmt(lo, m)} to {_fmt(hi, m)}), from {ci['n']} paired fills.")
        lines.append("")
    promoted = [h for h in data["polb"]["history"] if h.get("event") == "promoted"]
    if promoted:
        last = promoted[-1]
        lines.append(f"Promoted: {last.get('variant_slug')} on report {last.get('report_id')} ({last.get('at')}).")
    elif data["governance"]["promotion_blocked"]:
        missing = ", ".join(data["governance"]["missing_roles"]) or "risk above the declared limit"
        lines.append(f"Promotion is blocked until the experiment is approved (missing: {missing}).")
    elif c["require_human_signoff"] and surface and surface.get("winner"):
        lines.append("A person must sign off before anything is promoted.")
    return "\n".join(lines).rstrip() + "\n"


def _risk(data: Mapping[str, Any], _digest: str) -> str:
    c, g, p = data["contract"], data["governance"], data["polb"]
    out = [f"# Risk view: {data['experiment_id']}", "",
           f"- Envelope: {p['envelope_mode']} ({p['mode_name']}), rollout {p['rollout_strategy']}, "
           f"max population share {p['max_population_share_bp']} bp",
           f"- Risk level: {g['risk']['level']} (score {g['risk']['score']}: "
           + ", ".join(f"{f['factor']} +{f['points']}" for f in g['risk']['factors']) + ")"]
    surface = data.get("surface")
    segs = data["ethics"]["harmed_segments"]
    harm = harm_found(segs, data.get("stop_rules_fired"), bool(surface and surface["harm"]))
    if surface or harm:
        out.append(f"- Harm detected: {'YES' if harm else 'no'}")
    out += ["", "## Guardrails (hard constraints)"]
    hard = c["eval_surface"]["constraints"]["hard"]
    if not hard:
        out.append("No hard constraint declared (counts against the risk score).")
    else:
        out += ["| variant | constraint | status | estimate | 95% CI |", "|---|---|---|---|---|"]
        for v in (surface or {}).get("variants", []):
            mets = data["outcomes"]["metrics"].get(v["variant"], {})
            for h in v["hard_constraints"]:
                metric = next(x["metric"] for x in hard if x["expr"] == h["expr"])
                ci = mets.get(metric)
                est = _fmt(cj.from_micros(ci["estimate_micros"]), metric) if ci else "n/a"
                rng = (f"[{_fmt(cj.from_micros(ci['ci_95_low_micros']), metric)}, "
                       f"{_fmt(cj.from_micros(ci['ci_95_high_micros']), metric)}]") if ci else "n/a"
                out.append(f"| {v['variant']} | `{h['expr']}` | {h['status']} | {est} | {rng} |")
    soft = [(v["variant"], s) for v in (surface or {}).get("variants", []) for s in v["soft_constraints"]]
    if soft:
        out += ["", "## Soft constraints", "| variant | constraint | status | penalty_bp |", "|---|---|---|---|"]
        out += [f"| {vid} | `{s['expr']}` | {s['status']} | {s['penalty_bp']} |" for vid, s in soft]
    out += ["", "## Harmed segments"]
    if segs:
        out += ["| segment | fills | estimate | 95% CI |", "|---|---|---|---|"]
        out += [_segment_row(s) for s in segs]
    else:
        out.append("None reported.")
    out += ["", "## Stop rules fired"]
    out += [f"- {f.get('reason_code')} ({f.get('action')}): {f.get('message')} "
            f"{', '.join(f.get('detail', []))}".rstrip() for f in data["stop_rules_fired"]] or ["None."]
    eth = c["eth_constraints"]
    out += ["", "## ETH",
            f"- Never randomised (forced control): markets {eth['forbid']['markets'] or '-'}, "
            f"principals {eth['forbid']['principals'] or '-'}, units {eth['forbid']['units'] or '-'}"]
    if eth["forbid"]["statements"]:
        out.append(f"- Declared (not machine-enforced): {eth['forbid']['statements']}")
    if eth["require"]:
        out.append(f"- Required: {eth['require']}")
    out.append(f"- Violations detected: {data['ethics']['violations_detected'] or 'none'}")
    out += [f"- Finding: {_plain(f)}" for f in data["ethics"]["findings"]]
    forced = ((data.get("assignments") or {}).get("eth_forced_control_by_kind") or {})
    if forced:
        out.append(f"- Units forced to control: {forced}")
    return "\n".join(out) + "\n"


def _plain(record: Mapping[str, Any]) -> str:
    """A record as ``key value`` pairs for reading: ``*_micros`` integers shown as numbers, no JSON braces."""
    parts = []
    for key, value in sorted(record.items()):
        if key.endswith("_micros") and isinstance(value, int):
            key, value = key[: -len("_micros")], f"{cj.from_micros(value):.2f}"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _segment_row(segment: Mapping[str, Any]) -> str:
    def num(key: str) -> float | None:
        micros = segment.get(f"{key}_micros")
        return cj.from_micros(micros) if isinstance(micros, int) else segment.get(key)

    est, lo, hi = num("estimate_bps"), num("ci_95_low"), num("ci_95_high")
    rng = f"[{_fmt(lo, 'x_bps')}, {_fmt(hi, 'x_bps')}]" if lo is not None and hi is not None else "n/a"
    n = num("n")
    return f"| {segment.get('segment')} | {'n/a' if n is None else int(n)} | {_fmt(est, 'x_bps')} | {rng} |"


def _governance(data: Mapping[str, Any], trace_digest: str) -> str:
    c, g = data["contract"], data["governance"]
    b = data["bindings"]
    out = [f"# Governance view: {data['experiment_id']}", "",
           f"- Principal: {c['principal']}; subject: {c['subject']['id']}; personas: {', '.join(c['personas'])}",
           f"- Contract digest: `{b['experiment']['digest']}`",
           f"- Eval surface: {b['eval_surface']['id']} `{b['eval_surface']['digest']}`",
           f"- Canonicalization: {data['canonicalization']} (profile `{data['canonicalization_profile_digest']}`)",
           f"- Created at: {data['created_at']}; as of {data['as_of']['time']} ({data['as_of']['clock_profile']})",
           f"- Mode: {c['mode']}, envelope {c['polb_config']['envelope_mode']}, max risk level "
           f"{c['polb_config']['max_risk_level']}; auto-promote {c['auto_promote_on_winning']}, "
           f"human sign-off required {c['require_human_signoff']}",
           "", "## Risk and approvals",
           f"- Risk level: {g['risk']['level']} (score {g['risk']['score']}); required reviewers: "
           f"{', '.join(g['risk']['required_reviewers'])}"
           + ("; formal ethics committee approval required" if g['risk']['ethics_committee'] else ""),
           f"- Approved: {'yes' if g['approved'] else 'NO'}"
           + (f" (missing: {', '.join(g['missing_roles'])})" if g['missing_roles'] else ""),
           f"- Flags: {', '.join(g['flags']) or 'none'}; promotion blocked: {g['promotion_blocked']}"]
    if g["approvals"]:
        out += ["", "| approver | role | approved at | contract digest | counts |", "|---|---|---|---|---|"]
        out += [f"| {a['approver']} | {a['role']} | {a['approved_at']} | `{a['contract_digest'][:19]}...` | "
                f"{'yes' if a['counts'] else 'no (other contract)'} |" for a in g["approvals"]]
    out += ["", "## Sign-offs"]
    if data["signoffs"]:
        out += ["| signed at | approver | verdict | report | note |", "|---|---|---|---|---|"]
        out += [f"| {s.get('signed_at')} | {s.get('approver')} | {s.get('verdict')} | {s.get('report_id')} | "
                f"{s.get('note') or ''} |" for s in data["signoffs"]]
    else:
        out.append("None.")
    out += ["", "## PoLB history"]
    out += [f"- {h.get('at')}: {h.get('event')} ({_plain({k: v for k, v in h.items() if k not in ('at', 'event')})})"
            for h in data["polb"]["history"]] or ["None recorded."]
    extra = {k: v for k, v in b.items() if k not in ("experiment", "eval_surface")}
    if extra:
        out += ["", "## Other bindings"] + [f"- {k}: {v['id']} `{v['digest']}`" for k, v in sorted(extra.items())]
    surface = data.get("surface")
    if surface:
        out += ["", f"Surface: winner {surface['winner'] or 'none'}; ranking {', '.join(surface['ranking'])}; "
                    f"Pareto set {', '.join(surface['pareto_set'])}"]
    out += ["", f"**EvalTrace digest:** `{trace_digest}`"]
    return "\n".join(out) + "\n"
