"""Register declared experiments: validate each declaration and its contract, record it once, emit EXPERIMENT_STARTED."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experimenttracker_pipeline.model.declaration import load_declarations
from experimenttracker_pipeline.model.experiment import Experiment, experiment_from_row
from experimenttracker_pipeline.model.fields import DOCUMENT, DeclarationError
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance.operations import contract_record
from experimenttracker_pipeline.store import Store, StoreUnavailable
from experimenttracker_pipeline.stages.declarations.queries import (
    SET_ASIDE,
    experiment_rows,
    experiments_without_contract,
    register_experiment,
    set_aside_experiment,
)

log = logging.getLogger(__name__)


EXPERIMENT_STARTED = "EXPERIMENT_STARTED"
EXPERIMENT_LARGE_SPLIT_WARN = "EXPERIMENT_LARGE_SPLIT_WARN"

@dataclass
class DeclarationSync:
    new: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[DeclarationError] = field(default_factory=list)
    emitted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def registered(self) -> list[str]:
        return sorted(self.new + self.unchanged)


def sync_declarations(store: Store, experiments_dir: Path, *, default_caliper_seconds: float = 60.0) -> DeclarationSync:
    """Register new declarations and emit EXPERIMENT_STARTED (and the large-split warning) once each.

    Each experiment is registered in one transaction with its contract and its reports; one that cannot be
    (its contract cannot be exported, or the store refuses a value) is rejected with its file named and writes
    nothing, and the others still register. A stored experiment left without its contract by an older version,
    or whose stored declaration fails today's checks, is set aside (status ``rejected``) and listed as rejected,
    so it never fails a later run."""
    loaded = load_declarations(experiments_dir, default_caliper_seconds=default_caliper_seconds)
    sync = DeclarationSync(rejected=list(loaded.errors))
    for experiment in loaded.experiments:  # each validated once, contract included
        try:
            emitted: list[dict[str, Any]] = []
            outcome = register_experiment(store, experiment, contract_record(experiment.contract),
                                          _started_reports(experiment), emitted)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - this file is rejected, the others still register
            sync.rejected.append(DeclarationError(
                experiment.source_file, DOCUMENT, f"could not be registered (nothing was recorded): "
                                                  f"{type(exc).__name__}: {exc}"[:500]))
            continue
        if outcome == "conflict":
            sync.rejected.append(DeclarationError(
                experiment.source_file, "experiment_id",
                f"{experiment.experiment_id!r} is already recorded with a different declaration; a started experiment "
                "cannot change: declare a new experiment_id"))
            continue
        (sync.new if outcome == "new" else sync.unchanged).append(experiment.experiment_id)
        sync.emitted.extend(emitted)
    sync.rejected.extend(_set_aside_unusable(store))
    for error in sync.rejected:
        log.warning("declaration rejected: %s", error)
    return sync


def _started_reports(experiment: Experiment) -> list[dict[str, Any]]:
    """EXPERIMENT_STARTED (and EXPERIMENT_LARGE_SPLIT_WARN), as ``emit_report`` arguments; the dedupe keys make a
    re-registration emit nothing new."""
    reports = [dict(
        event_type=EXPERIMENT_STARTED, severity="INFO", dedupe_key=f"{EXPERIMENT_STARTED}:{experiment.experiment_id}",
        experiment_id=experiment.experiment_id, topic=OPERATIONS_TOPIC,
        payload={"experiment_id": experiment.experiment_id, "variant_slug": experiment.variant_slug,
                 "control_slug": experiment.control_slug, "mode": experiment.mode, "principal": experiment.principal,
                 "subject": experiment.subject, "traffic_split_pct": experiment.traffic_split_pct,
                 "min_samples_for_decision": experiment.min_samples_for_decision,
                 "started_at": experiment.started_at.isoformat().replace("+00:00", "Z")})]
    if experiment.large_split:
        reports.append(dict(
            event_type=EXPERIMENT_LARGE_SPLIT_WARN, severity="WARN",
            dedupe_key=f"{EXPERIMENT_LARGE_SPLIT_WARN}:{experiment.experiment_id}", experiment_id=experiment.experiment_id,
            topic=OPERATIONS_TOPIC,
            payload={"experiment_id": experiment.experiment_id, "traffic_split_pct": experiment.traffic_split_pct,
                     "message": "traffic_split_pct > 50%: high exposure to the variant; human sign-off required before promotion"}))
    return reports


def _set_aside_unusable(store: Store) -> list[DeclarationError]:
    """Set aside the stored experiments that would fail every later run: no contract, or a stored declaration
    that no longer validates."""
    errors = []
    unusable = {r["experiment_id"]: (r["source_file"], "was recorded without its contract by an earlier version "
                                     "(its declaration could not be recorded whole)")
                for r in experiments_without_contract(store)}
    for row in experiment_rows(store):
        if row["status"] == SET_ASIDE or row["experiment_id"] in unusable:
            continue
        try:
            experiment_from_row(row)
        except Exception as exc:  # noqa: BLE001 - InvalidDeclaration, or a value the checks of its day let through
            unusable[row["experiment_id"]] = (row["source_file"], f"has a stored declaration that fails today's checks "
                                              f"({str(exc).splitlines()[-1].strip()[:300]})")
    for experiment_id, (source, why) in sorted(unusable.items()):
        set_aside_experiment(store, experiment_id)
        errors.append(DeclarationError(source, "experiment_id", f"{experiment_id!r} {why}: set aside (status "
                                       f"{SET_ASIDE!r}), never paired or evaluated; declare it again under a new "
                                       "experiment_id"))
    return errors
