"""The proposer on a store with a known control history (SQLite and PostgreSQL): the variance and fill rate read
in SQL, the planned size checked against the simulated power of the verdict's interval, the duration against
the history's rate, the pairing history of an earlier experiment, and the `propose` command."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from experimenttracker_pipeline.cli import main
from experimenttracker_pipeline.model.declaration import read_declaration
from experimenttracker_pipeline.stages.declarations.registration import sync_declarations
from experimenttracker_pipeline.stages.design.history import DAY_MS
from experimenttracker_pipeline.stages.design.proposer import DesignRequest, propose
from experimenttracker_pipeline.stages.design.queries import fill_history, pairing_history
from experimenttracker_pipeline.stages.ingestion.landing import ingest_landing
from experimenttracker_pipeline.stages.samples.queries import iter_samples
from experimenttracker_pipeline.stages.samples.recording import record_samples
from experimenttracker_pipeline_tests.builders import BASE_MS, declaration, fill, write_jsonl
from experimenttracker_pipeline_tests.support.power import simulated_size

DAYS, PER_DAY, SD, MEAN = 14, 400, 12.0, 3.0  # the control's known history in the markets in scope
FIRST_DAY_OFFSET = (BASE_MS // DAY_MS + 1) * DAY_MS - BASE_MS  # the history starts at a UTC midnight


def _history(workdirs, *, seed: int = 5) -> np.ndarray:
    """Control live fills: DAYS x PER_DAY in mkt_1/mkt_2 with edge ~ N(MEAN, SD^2) bps; noise that must not count:
    another market, shadow fills of the control, another strategy, and fills from before the window."""
    rng = np.random.default_rng(seed)
    bps = rng.normal(MEAN, SD, DAYS * PER_DAY)
    step = DAY_MS // PER_DAY
    records = [fill(f"c{i}", "ctl", "live", f"k{i}", edge=float(b) / 100.0, notional=100.0,
                    t=FIRST_DAY_OFFSET + i * step, market=("mkt_1", "mkt_2")[i % 2]) for i, b in enumerate(bps)]
    records += [fill(f"x{i}", "ctl", "live", f"x{i}", edge=float(rng.normal(0, 200)), t=FIRST_DAY_OFFSET + i * step,
                     market="mkt_other") for i in range(300)]
    records += [fill(f"s{i}", "ctl", "shadow", f"s{i}", edge=50.0, t=FIRST_DAY_OFFSET + i) for i in range(100)]
    records += [fill(f"o{i}", "other", "live", f"o{i}", edge=-50.0, t=FIRST_DAY_OFFSET + i) for i in range(100)]
    write_jsonl(workdirs["landing"] / "history.jsonl", records)
    return bps


def _request(**overrides) -> DesignRequest:
    fields = dict(variants=("ctl-v2",), control="ctl", principal="desk:sports", subject="strategy:ctl-v2",
                  metric="edge_delta_bps", mde_bps=1.5, markets=("mkt_1", "mkt_2"))
    fields.update(overrides)
    return DesignRequest(**fields)


@lru_cache(maxsize=None)
def _simulated(n0: int, sd: float, mde: float) -> tuple[float, tuple]:
    size, table = simulated_size(n0, mde, sd, 0.05, 0.8, sims=3000, seed=17)
    return size, tuple(table)


def test_control_history_read_in_sql(store, workdirs):
    bps = _history(workdirs)
    assert ingest_landing(store, workdirs["landing"]).balanced
    h = fill_history(store, "ctl", markets=["mkt_1", "mkt_2"])
    assert h.n == DAYS * PER_DAY and h.span_days == DAYS and h.active_days == DAYS and h.markets == 2
    assert h.mean == pytest.approx(bps.mean(), rel=1e-9)
    assert h.variance == pytest.approx(bps.var(ddof=1), rel=1e-9)
    assert h.fills_per_day == pytest.approx(PER_DAY)
    everything = fill_history(store, "ctl")
    assert everything.n == DAYS * PER_DAY + 300 and everything.variance > 10 * h.variance
    window = fill_history(store, "ctl", markets=["mkt_1", "mkt_2"], since_ms=BASE_MS + FIRST_DAY_OFFSET + 7 * DAY_MS)
    assert window.n == 7 * PER_DAY and window.span_days == 7
    assert fill_history(store, "nobody").n == 0


def test_proposal_on_known_history_reaches_the_requested_power(store, workdirs):
    """The proposed pairs per arm are within 5% of the size at which the verdict's confidence sequence reaches
    80% power in simulation at the true delta sd (sqrt(2) x the control's, no pairing history), and the duration
    is that size at the history's 400 pairs per day."""
    _history(workdirs)
    ingest_landing(store, workdirs["landing"])
    proposal = propose(store, _request())
    assert proposal.sd_source == "conservative_independent_arms"
    true_sd = math.sqrt(2) * SD
    assert proposal.sd_delta == pytest.approx(true_sd, rel=0.03)
    simulated, table = _simulated(proposal.samples_per_arm, true_sd, 1.5)
    assert abs(proposal.samples_per_arm - simulated) / simulated < 0.05, (proposal.samples_per_arm, simulated, table)
    assert proposal.pairs_per_day == pytest.approx(PER_DAY)
    assert proposal.expected_duration_days == pytest.approx(proposal.samples_per_arm / PER_DAY)
    end = BASE_MS + FIRST_DAY_OFFSET + DAYS * DAY_MS
    recent = propose(store, _request(history_days=7, now_ms=end))
    assert recent.history.n == 7 * PER_DAY and recent.pairs_per_day == pytest.approx(PER_DAY)


def _feed_pairs(store, workdirs, deltas, exp_id="exp_old"):
    (workdirs["experiments"] / f"{exp_id}.yaml").write_text(declaration(exp_id, control_slug="ctl", variant_slug="ctl-v1"))
    sync_declarations(store, workdirs["experiments"])
    records = []
    for i, d in enumerate(deltas):
        records.append(fill(f"{exp_id}-c{i}", "ctl", "live", f"{exp_id}:{i}", edge=1.0, t=i * 1000))
        records.append(fill(f"{exp_id}-v{i}", "ctl-v1", "shadow", f"{exp_id}:{i}", edge=1.0 + float(d) / 100.0,
                            t=i * 1000 + 1, experiment_id=exp_id))
    write_jsonl(workdirs["landing"] / f"{exp_id}.jsonl", records)
    assert ingest_landing(store, workdirs["landing"]).balanced
    record_samples(store, exp_id)
    return np.array([r["edge_delta_bps"] for r in iter_samples(store, exp_id)])


def test_pairing_history_of_the_same_control_sets_the_delta_sd(store, workdirs):
    rng = np.random.default_rng(8)
    stored = _feed_pairs(store, workdirs, rng.normal(0.5, 6.0, 250))
    [earlier] = pairing_history(store, "ctl", mode="shadow_only")
    assert earlier.experiment_id == "exp_old" and earlier.n == 250
    assert pairing_history(store, "ctl", mode="limited_live") == []
    proposal = propose(store, _request(markets=()))
    assert proposal.sd_source == "pairing_history"
    assert proposal.sd_delta == pytest.approx(stored.std(ddof=1), rel=1e-9)


def test_propose_command_writes_a_loadable_draft(store, db_url, workdirs, monkeypatch, tmp_path, capsys):
    _history(workdirs)
    ingest_landing(store, workdirs["landing"])
    monkeypatch.setenv("EXPERIMENTTRACKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXPERIMENTTRACKER_DB_URL", db_url)
    out = tmp_path / "draft.yaml"
    code = main(["propose", "--variant", "ctl-v2", "--control", "ctl", "--principal", "desk:sports",
                 "--subject", "strategy:ctl-v2", "--metric", "edge_delta_bps", "--mde", "1.5", "--market", "mkt_1",
                 "--market", "mkt_2", "--mode", "limited_live", "--risk", "high", "--experiment-id", "exp_v2",
                 "--start", "2026-06-01T00:00:00Z", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert "pairs per arm" in capsys.readouterr().out
    experiment = read_declaration(out)
    assert experiment.experiment_id == "exp_v2" and experiment.contract.polb_config.rollout_strategy == "canary"
    assert experiment.traffic_split_pct == 1
    code = main(["propose", "--variant", "ctl-v2", "--control", "ctl", "--mde", "1.5", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "principal is missing" in err and "subject is missing" in err and "primary metric is missing" in err
