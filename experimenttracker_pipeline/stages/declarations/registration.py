"""Register declared experiments: validate each declaration and its contract, record it once, emit EXPERIMENT_STARTED."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experimenttracker_pipeline.model.declaration import load_declarations
from experimenttracker_pipeline.model.fields import DeclarationError
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance.operations import record_contract
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline.stages.declarations.queries import register_experiment

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
    """Register new declarations and emit EXPERIMENT_STARTED (and the large-split warning) once each."""
    loaded = load_declarations(experiments_dir, default_caliper_seconds=default_caliper_seconds)
    sync = DeclarationSync(rejected=list(loaded.errors))
    for experiment in loaded.experiments:  # each validated once, contract included
        outcome = register_experiment(store, experiment)
        if outcome == "conflict":
            sync.rejected.append(DeclarationError(
                experiment.source_file, "experiment_id",
                f"{experiment.experiment_id!r} is already recorded with a different declaration; a started experiment "
                "cannot change: declare a new experiment_id"))
            continue
        (sync.new if outcome == "new" else sync.unchanged).append(experiment.experiment_id)
        record_contract(store, experiment.contract)
        # Emitting is idempotent (dedupe key), so a crash between insert and emit is repaired on the next run.
        with store.begin() as conn:
            started = store.emit_report(
                conn, event_type=EXPERIMENT_STARTED, severity="INFO", dedupe_key=f"{EXPERIMENT_STARTED}:{experiment.experiment_id}",
                experiment_id=experiment.experiment_id, topic=OPERATIONS_TOPIC,
                payload={"experiment_id": experiment.experiment_id, "variant_slug": experiment.variant_slug,
                         "control_slug": experiment.control_slug, "mode": experiment.mode, "principal": experiment.principal,
                         "subject": experiment.subject, "traffic_split_pct": experiment.traffic_split_pct,
                         "min_samples_for_decision": experiment.min_samples_for_decision,
                         "started_at": experiment.started_at.isoformat().replace("+00:00", "Z")})
            if started:
                sync.emitted.append(started)
            if experiment.large_split:
                warn = store.emit_report(
                    conn, event_type=EXPERIMENT_LARGE_SPLIT_WARN, severity="WARN",
                    dedupe_key=f"{EXPERIMENT_LARGE_SPLIT_WARN}:{experiment.experiment_id}", experiment_id=experiment.experiment_id,
                    topic=OPERATIONS_TOPIC,
                    payload={"experiment_id": experiment.experiment_id, "traffic_split_pct": experiment.traffic_split_pct,
                             "message": "traffic_split_pct > 50%: high exposure to the variant; human sign-off required before promotion"})
                if warn:
                    sync.emitted.append(warn)
    for error in sync.rejected:
        log.warning("declaration rejected: %s", error)
    return sync


