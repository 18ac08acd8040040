"""Register declared experiments: validate each declaration and its contract, record it once, emit EXPERIMENT_STARTED."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experimenttracker_pipeline.model.contract import ContractError, build_contract
from experimenttracker_pipeline.model.declaration import (
    DeclarationError,
    load_declarations,
)
from experimenttracker_pipeline.settings import OPERATIONS_TOPIC
from experimenttracker_pipeline.stages.governance.operations import record_contract
from experimenttracker_pipeline.store import Store

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
    for decl in loaded.declarations:
        try:
            contract = build_contract(decl)  # issue 6: the experiment contract is validated on load
        except ContractError as exc:
            sync.rejected.extend(DeclarationError(issue.file or decl.source_file, issue.path, issue.message) for issue in exc.issues)
            continue
        outcome = store.register_experiment(decl)
        if outcome == "conflict":
            sync.rejected.append(DeclarationError(
                decl.source_file, "experiment_id",
                f"{decl.experiment_id!r} is already recorded with a different declaration; a started experiment "
                "cannot change: declare a new experiment_id"))
            continue
        (sync.new if outcome == "new" else sync.unchanged).append(decl.experiment_id)
        record_contract(store, contract)
        # Emitting is idempotent (dedupe key), so a crash between insert and emit is repaired on the next run.
        with store.begin() as conn:
            started = store.emit_report(
                conn, event_type=EXPERIMENT_STARTED, severity="INFO", dedupe_key=f"{EXPERIMENT_STARTED}:{decl.experiment_id}",
                experiment_id=decl.experiment_id, topic=OPERATIONS_TOPIC,
                payload={"experiment_id": decl.experiment_id, "variant_slug": decl.variant_slug,
                         "control_slug": decl.control_slug, "mode": decl.mode, "principal": decl.principal,
                         "subject": decl.subject, "traffic_split_pct": decl.traffic_split_pct,
                         "min_samples_for_decision": decl.min_samples_for_decision,
                         "started_at": decl.started_at.isoformat().replace("+00:00", "Z")})
            if started:
                sync.emitted.append(started)
            if decl.large_split:
                warn = store.emit_report(
                    conn, event_type=EXPERIMENT_LARGE_SPLIT_WARN, severity="WARN",
                    dedupe_key=f"{EXPERIMENT_LARGE_SPLIT_WARN}:{decl.experiment_id}", experiment_id=decl.experiment_id,
                    topic=OPERATIONS_TOPIC,
                    payload={"experiment_id": decl.experiment_id, "traffic_split_pct": decl.traffic_split_pct,
                             "message": "traffic_split_pct > 50%: high exposure to the variant; human sign-off required before promotion"})
                if warn:
                    sync.emitted.append(warn)
    for error in sync.rejected:
        log.warning("declaration rejected: %s", error)
    return sync


