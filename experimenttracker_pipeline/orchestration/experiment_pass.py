"""One pass over many experiments: for each, pair new fills and evaluate when due, isolated from the others.

No Dagster here: `defs/experiment_pass.py` runs `process_experiment` for the experiments of a step and turns each
outcome into that experiment's partition materializations and check results. The decisions (is pairing due, is
an evaluation due) are `due_work`'s, taken again under a per-experiment lock from fresh watermarks, so two passes
(two `run` processes, or the CLI and the daemon) never work on one experiment at once and never evaluate the same
sample count twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from experimenttracker_pipeline.orchestration.due_work import PAUSED, SET_ASIDE, EvaluationRule, pairing_due
from experimenttracker_pipeline.stages.causal_effects.estimation import CausalRun, compute_causal, sandbox_samples
from experimenttracker_pipeline.stages.declarations.queries import known_experiment_ids
from experimenttracker_pipeline.stages.design.recommendation import ExperimentAllocation, recommend_after_evaluation
from experimenttracker_pipeline.stages.drift.registry import StrategyRegistry
from experimenttracker_pipeline.stages.drift.signal import DriftResult, signal_drift
from experimenttracker_pipeline.stages.intervals.evaluation import IntervalsResult, compute_intervals
from experimenttracker_pipeline.stages.promotion.signoff import PromotionResult, promotion_state
from experimenttracker_pipeline.stages.samples.pairing import ChainBreak
from experimenttracker_pipeline.stages.samples.recording import SamplingResult, record_samples, verify_samples
from experimenttracker_pipeline.stages.samples.queries import sensor_snapshot
from experimenttracker_pipeline.stages.verdict.decision import VerdictResult, decide, publish_overall
from experimenttracker_pipeline.store import Store, advisory_lock

log = logging.getLogger(__name__)

# Advisory-lock namespace of per-experiment pass work (see store.advisory_lock).
EXPERIMENT_WORK = 7423005

NO_SUCH_EXPERIMENT = "no such experiment"


class UnknownExperiments(LookupError):
    """Experiment ids no declaration backs (e.g. a partition key typed into the UI): a permanent error."""

    def __init__(self, experiment_ids: list[str]):
        self.experiment_ids = experiment_ids
        super().__init__(f"{NO_SUCH_EXPERIMENT}: {', '.join(experiment_ids)} (not declared in the experiments folder)")


def check_known(store: Store, experiment_ids: list[str]) -> None:
    """Raise `UnknownExperiments` naming every id the store does not know."""
    known = known_experiment_ids(store, experiment_ids)
    unknown = [e for e in experiment_ids if e not in known]
    if unknown:
        raise UnknownExperiments(unknown)


@dataclass
class ExperimentOutcome:
    """What a pass did to one experiment. Stages not run are None; ``error`` names the stage that failed."""

    experiment_id: str
    samples: SamplingResult | None = None
    chain_checked: int | None = None
    chain_break: ChainBreak | None = None
    intervals: IntervalsResult | None = None
    causal: CausalRun | None = None
    verdict: VerdictResult | None = None
    drift: DriftResult | None = None
    promotion: PromotionResult | None = None
    allocation: ExperimentAllocation | None = None  # adaptive allocation's recommendation, when declared
    overall: dict[str, Any] | None = None  # EXPERIMENT_OVERALL_RESULT emitted after a comparison's verdict
    failed_stage: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def paired(self) -> bool:
        return self.samples is not None

    @property
    def evaluated(self) -> bool:
        return self.verdict is not None

    def summary(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "paired": self.paired, "evaluated": self.evaluated,
                "new_samples": self.samples.new_samples if self.samples else 0,
                "verdict": self.verdict.verdict["verdict"] if self.verdict else None,
                "failed_stage": self.failed_stage, "error": self.error}


def process_experiment(store: Store, registry: StrategyRegistry, experiment_id: str, rule: EvaluationRule,
                       newest_batch_by_slug: Mapping[str, int]) -> ExperimentOutcome:
    """Pair the experiment's new fills if a newer batch brought any, verify its hash chain, then run the evaluation
    chain (intervals -> causal -> verdict -> drift signal -> allocation recommendation, when declared -> promotion
    gate) if ``rule`` says it is due (counting a sandbox experiment's usable logs, since it has no pairs). Never
    raises for the experiment's own failures: the outcome says which stage failed and why (a failed recommendation
    is a note: it stops nothing)."""
    outcome = ExperimentOutcome(experiment_id)
    stage = "experiment_samples"
    try:
        with advisory_lock(store, EXPERIMENT_WORK, experiment_id):
            row = sensor_snapshot(store, experiment_id)
            if not row:
                raise UnknownExperiments([experiment_id])
            row = row[0]
            if row.get("status") == PAUSED:
                outcome.notes.append("paused: not paired or evaluated until resumed")
                return outcome
            if row.get("has_comparisons"):
                outcome.notes.append("A/B/n experiment: paired and evaluated as its comparisons, one per treatment")
                return outcome
            if row.get("status") == SET_ASIDE:
                outcome.notes.append("set aside: its stored declaration cannot be used (see the experiments asset)")
                return outcome
            samples = int(row["samples"] or 0)
            if pairing_due(row, newest_batch_by_slug):
                outcome.samples = record_samples(store, experiment_id)
                samples = outcome.samples.total_samples
                # The blocking check of the samples: a broken chain stops this experiment's evaluation.
                outcome.chain_checked, outcome.chain_break = verify_samples(store, experiment_id)
                if outcome.chain_break is not None:
                    outcome.failed_stage = stage
                    outcome.error = (f"hash chain broken at sample_n {outcome.chain_break.sample_n} "
                                     f"({outcome.chain_break.problem}); not evaluated")
                    return outcome
            # A sandbox experiment has no pairs: it is evaluated on its usable logs (the control's logged fills).
            logs = sandbox_samples(store, experiment_id) if row.get("sandbox") else None
            samples = samples if logs is None else logs
            evaluated = row.get("evaluated_samples")
            if not rule.due(samples, int(row["min_samples_for_decision"]), None if evaluated is None else int(evaluated)):
                return outcome
            stage = "confidence_intervals"
            started = time.perf_counter()
            outcome.intervals = compute_intervals(store, experiment_id)
            store.record_stage_duration("evaluation", time.perf_counter() - started)  # read by the metrics endpoint
            stage = "causal_estimates"
            outcome.causal = compute_causal(store, experiment_id)
            stage = "verdicts"
            outcome.verdict = decide(store, experiment_id)
            stage = "drift_signals"
            outcome.drift = signal_drift(store, experiment_id, registry)
            if row.get("parent_experiment_id"):  # a comparison: its A/B/n experiment's overall verdict may change
                stage = "verdicts"
                outcome.overall = publish_overall(store, row["parent_experiment_id"])
            try:  # advice for the router: a failure is noted and never stops the experiment's other stages
                outcome.allocation = recommend_after_evaluation(store, experiment_id, samples)
            except Exception as exc:  # noqa: BLE001
                outcome.notes.append(f"allocation not recommended: {type(exc).__name__}: {exc}")
                log.warning("%s: allocation not recommended: %s", experiment_id, exc)
            stage = "promotions"
            outcome.promotion = promotion_state(store, experiment_id, apply=True)
    except Exception as exc:  # noqa: BLE001 - one experiment's failure is reported, the pass goes on
        outcome.failed_stage = stage
        outcome.error = f"{type(exc).__name__}: {exc}"
        log.warning("%s failed at %s: %s", experiment_id, stage, outcome.error)
    return outcome
