"""The allocation recommendation of a limited-live experiment from its fills in the store (SQLite and PostgreSQL):
the better arm gets the most traffic within the floor and the PoLB cap, one EXPERIMENT_ALLOCATION_RECOMMENDED
report per sample count, shadow experiments refused, and the `allocate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experimenttracker_pipeline.cli import main
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.design.allocation import EXPERIMENT_ALLOCATION_RECOMMENDED
from experimenttracker_pipeline.stages.design.recommendation import AllocationRefused, recommend_for_experiment
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline_tests.builders import declaration, fill, write_jsonl

ABN = """experiment_id: exp_abn
principal: desk:sports
variant_slug: v-good
control_slug: c-slug
mode: limited_live
traffic_split_pct: 20
started_at: "2026-05-01T00:00:00Z"
polb_config:
  max_population_share_bp: 3000
variants:
  control: {slug: c-slug, traffic_share_bp: 8000}
  good: {slug: v-good, traffic_share_bp: 1000}
  bad: {slug: v-bad, traffic_share_bp: 1000}
"""


def _setup(store, workdirs):
    (workdirs["experiments"] / "exp_abn.yaml").write_text(ABN)
    (workdirs["experiments"] / "exp_shadow.yaml").write_text(declaration("exp_shadow"))
    sync_declarations(store, workdirs["experiments"])
    rng = np.random.default_rng(3)
    records = []
    for slug, mean, n in (("c-slug", 0.0, 800), ("v-good", 2.0, 100), ("v-bad", -2.0, 100)):
        for i in range(n):
            records.append(fill(f"{slug}-{i}", slug, "live", f"{slug}:{i}",
                                edge=float(rng.normal(mean, 5.0)) / 100.0, t=i * 1000))
    records.append(fill("other-exp", "v-good", "live", "x", edge=99.0, experiment_id="exp_other"))  # not ours
    write_jsonl(workdirs["landing"] / "abn.jsonl", records)
    assert ingest_landing(store, workdirs["landing"]).balanced


def test_recommendation_from_stored_fills(store, workdirs):
    _setup(store, workdirs)
    result = recommend_for_experiment(store, "exp_abn", emit=True)
    shares = result.recommendation.shares_bp
    assert sum(shares.values()) == 10_000 and min(shares.values()) >= 500
    assert shares["good"] + shares["bad"] <= 3000
    assert shares["good"] == 2500 and shares["bad"] == 500  # clear winner: the cap less the loser's floor
    assert result.arms["good"]["n"] == 100 and result.arms["control"]["declared_share_bp"] == 8000
    assert result.report is not None and result.report["event_type"] == EXPERIMENT_ALLOCATION_RECOMMENDED
    again = recommend_for_experiment(store, "exp_abn", emit=True)
    assert again.report is None  # once per sample count
    [stored] = store.reports("exp_abn", EXPERIMENT_ALLOCATION_RECOMMENDED)
    assert stored["recommended_shares_bp"] == shares and stored["applied_by"] == "router"


def test_shadow_and_unknown_experiments_are_refused(store, workdirs):
    _setup(store, workdirs)
    with pytest.raises(AllocationRefused, match="no live traffic"):
        recommend_for_experiment(store, "exp_shadow")
    with pytest.raises(AllocationRefused, match="no such experiment"):
        recommend_for_experiment(store, "exp_missing")


def test_allocate_command(store, db_url, workdirs, monkeypatch, tmp_path, capsys):
    _setup(store, workdirs)
    monkeypatch.setenv("EXPERIMENTTRACKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXPERIMENTTRACKER_DB_URL", db_url)
    assert main(["allocate", "exp_abn", "--json", "--emit"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["recommended_shares_bp"]["good"] == 2500 and "emitted" in captured.err
    assert main(["allocate", "exp_abn"]) == 0
    assert "recommended bp" in capsys.readouterr().out
    assert main(["allocate", "exp_shadow"]) == 2
    assert "no live traffic" in capsys.readouterr().err
