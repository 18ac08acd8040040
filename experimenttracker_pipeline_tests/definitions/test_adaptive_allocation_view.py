"""The allocation recommendation on the experiment's verdicts materialization (the metadata the pass logs per
partition): per arm slug, n, mean, declared and recommended share, probability best; absent without the opt-in."""

from __future__ import annotations

import dagster as dg

from experimenttracker_pipeline.defs.verdict import verdict_metadata
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.store import Store
from experimenttracker_pipeline_tests.store.test_adaptive_allocation import _land, _pass, declaration, routed_fills


def test_verdict_metadata_shows_the_newest_recommendation(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    workdirs = {"experiments": tmp_path / "experiments", "landing": tmp_path / "landing"}
    for folder in workdirs.values():
        folder.mkdir()
    (workdirs["experiments"] / "exp_adaptive.yaml").write_text(declaration("exp_adaptive", "ad", adaptive=True))
    (workdirs["experiments"] / "exp_fixed.yaml").write_text(declaration("exp_fixed", "fx", adaptive=False))
    sync_declarations(store, workdirs["experiments"])
    declared = {"control": 8000, "good": 1000, "bad": 1000}
    _land(store, workdirs, "b1.jsonl", routed_fills("ad", declared, 0, 800, seed=1) + routed_fills("fx", declared, 0, 800, seed=1))
    try:
        outcome = _pass(store, "exp_adaptive/good")  # a treatment's comparison: the experiment's recommendation
        metadata = verdict_metadata(store, outcome.verdict, write_report=False)
        assert metadata["allocation_report_id"] == outcome.allocation.report["report_id"]
        table = metadata["allocation"].value
        assert "| arm | slug | n | mean | declared bp | recommended bp | P(best) |" in table and "| good | ad-good |" in table
        shown = metadata["allocation_json"].value
        assert shown["arms"]["good"]["recommended_share_bp"] == outcome.allocation.recommendation.shares_bp["good"]
        assert metadata["recommended_share_bp_good"] == float(shown["arms"]["good"]["recommended_share_bp"])
        assert metadata["deciding_ci_method"] == "aipw_adaptive_always_valid"
        assert isinstance(metadata["allocation"], dg.MarkdownMetadataValue)

        assert "experiment_overall" in metadata  # its A/B/n experiment's verdicts, next to the shares
        fixed = verdict_metadata(store, _pass(store, "exp_fixed/good").verdict, write_report=False)
        assert not any(key.startswith(("allocation", "recommended_share")) for key in fixed)
    finally:
        store.dispose()
