"""The chain-anchor key (configured, or generated once under the data folder) and the anchor and sign-off HMACs."""

from __future__ import annotations

import stat

import pytest

from experimenttracker_pipeline.settings import AnchorKey, SettingsError, anchor_key
from experimenttracker_pipeline.stages.samples.anchoring import (
    anchor_problem,
    key_id,
    make_head,
    signoff_hmac,
    signoff_problem,
)

KEY = AnchorKey(b"k" * 32, "test")


def test_key_from_the_variable_the_file_or_generated_once(tmp_path):
    assert anchor_key({"EXPERIMENTTRACKER_ANCHOR_KEY": "s" * 16}).secret == b"s" * 16
    with pytest.raises(SettingsError, match="EXPERIMENTTRACKER_ANCHOR_KEY: the anchor key must be at least 16"):
        anchor_key({"EXPERIMENTTRACKER_ANCHOR_KEY": "short"})
    (tmp_path / "key").write_text("f" * 40 + "\n")
    from_file = anchor_key({"EXPERIMENTTRACKER_ANCHOR_KEY_FILE": str(tmp_path / "key")})
    assert from_file.secret == b"f" * 40 and from_file.source == str(tmp_path / "key")
    with pytest.raises(SettingsError, match="EXPERIMENTTRACKER_ANCHOR_KEY_FILE"):
        anchor_key({"EXPERIMENTTRACKER_ANCHOR_KEY_FILE": str(tmp_path / "missing")})

    env = {"EXPERIMENTTRACKER_DATA_DIR": str(tmp_path / "data")}
    first = anchor_key(env)
    path = tmp_path / "data" / "anchor.key"
    assert first.generated and first.source == str(path) and len(first.secret) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = anchor_key(env)
    assert again.secret == first.secret and not again.generated


def test_anchor_verifies_only_for_the_same_head_digest_and_key():
    head = make_head(KEY, "exp", 10, "a" * 64, "d" * 64).to_row()
    hashes = {10: "a" * 64}
    assert anchor_problem(KEY, head, hashes, 10, "d" * 64) is None
    assert "made with key" in anchor_problem(AnchorKey(b"o" * 32, "other"), head, hashes, 10, "d" * 64)
    assert "invalid HMAC" in anchor_problem(KEY, {**head, "sample_n": 9}, {9: "a" * 64}, 10, "d" * 64)
    assert "invalid HMAC" in anchor_problem(KEY, {**head, "experiment_id": "exp2"}, hashes, 10, "d" * 64)
    assert "samples removed" in anchor_problem(KEY, head, {}, 9, "d" * 64)
    assert "chain rewritten" in anchor_problem(KEY, head, {10: "b" * 64}, 10, "d" * 64)
    assert "declaration rewritten" in anchor_problem(KEY, head, hashes, 10, "e" * 64)


def test_signoff_hmac_binds_approver_note_report_and_verdict():
    row = {"id": 1, "experiment_id": "exp", "report_id": "r1", "verdict": "variant_wins", "approver": "alice",
           "note": None}
    row["anchor_hmac"] = signoff_hmac(KEY, "exp", "r1", "variant_wins", "alice", None)
    assert row["anchor_hmac"].startswith(key_id(KEY) + ":")
    assert signoff_problem(KEY, row) is None
    for field, value in (("approver", "mallory"), ("note", "ok"), ("report_id", "r2"), ("verdict", "control_wins")):
        assert "does not match its HMAC" in signoff_problem(KEY, {**row, field: value})
    assert "certified with key" in signoff_problem(AnchorKey(b"o" * 32, "other"), row)
