"""Chain anchors: the head (sample_n, sample_hash) of an experiment's sample chain, signed with an HMAC whose key
the store does not hold (pure: no database).

Whoever can write the database can recompute every sample hash (sha256 is unkeyed), so the chain alone shows only
changes made without recomputing it. An anchor made at an evaluation is different: it can only be made, or made
again for a rewritten chain, with the key. The blocking chain check therefore requires every anchored (n, hash)
to still be the hash at n of the recomputed chain, and every anchor's HMAC to verify.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from experimenttracker_pipeline.settings import AnchorKey

ANCHOR_VERSION = "et-anchor/v1"


@dataclass(frozen=True)
class ChainHead:
    """The head of a chain an evaluation used, with its anchor."""

    experiment_id: str
    sample_n: int
    sample_hash: str
    declaration_sha256: str
    key_id: str
    anchor_hmac: str

    def to_row(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "sample_n": self.sample_n, "sample_hash": self.sample_hash,
                "declaration_sha256": self.declaration_sha256, "key_id": self.key_id, "anchor_hmac": self.anchor_hmac}

    def to_report(self) -> dict[str, Any]:
        """What the evaluation and EXPERIMENT_RESULT carry (``chain_head``)."""
        return {"sample_n": self.sample_n, "sample_hash": self.sample_hash,
                "declaration_sha256": self.declaration_sha256, "key_id": self.key_id, "anchor_hmac": self.anchor_hmac}


def key_id(key: AnchorKey) -> str:
    """A short public fingerprint of the key: tells which key made an anchor without revealing it."""
    return hashlib.sha256(b"experimenttracker anchor key id\n" + key.secret).hexdigest()[:16]


def anchor_hmac(key: AnchorKey, experiment_id: str, sample_n: int, sample_hash: str, declaration_sha256: str) -> str:
    message = "\n".join([ANCHOR_VERSION, experiment_id, str(int(sample_n)), sample_hash, declaration_sha256])
    return hmac.new(key.secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


def make_head(key: AnchorKey, experiment_id: str, sample_n: int, sample_hash: str, declaration_sha256: str) -> ChainHead:
    return ChainHead(experiment_id, int(sample_n), sample_hash, declaration_sha256, key_id(key),
                     anchor_hmac(key, experiment_id, sample_n, sample_hash, declaration_sha256))


def anchor_problem(key: AnchorKey, anchor: Mapping[str, Any], chain_hashes: Mapping[int, str], chain_length: int,
                   declaration_sha256: str) -> str | None:
    """Why a stored anchor does not vouch for the chain as it is now, or None when it does.

    ``chain_hashes``: sample_n -> sample_hash of the recomputed (intact) chain, at least at the anchored n;
    ``chain_length``: the number of samples in it; ``declaration_sha256``: the experiment's stored digest."""
    n = int(anchor["sample_n"])
    if anchor["key_id"] != key_id(key):
        return (f"the anchor at sample_n {n} was made with key {anchor['key_id']}, this process holds key "
                f"{key_id(key)}: every process must use the same EXPERIMENTTRACKER_ANCHOR_KEY")
    expected = anchor_hmac(key, anchor["experiment_id"], n, anchor["sample_hash"], anchor["declaration_sha256"])
    if not hmac.compare_digest(expected, str(anchor["anchor_hmac"])):
        return f"the anchor at sample_n {n} has an invalid HMAC (anchor forged or altered)"
    if n > chain_length:
        return (f"an evaluation anchored sample_n {n} but the chain has {chain_length} samples "
                "(samples removed)")
    if chain_hashes.get(n) != anchor["sample_hash"]:
        return f"sample_n {n} no longer has the anchored hash (chain rewritten since it was evaluated)"
    if anchor["declaration_sha256"] != declaration_sha256:
        return f"the declaration digest changed since the anchor at sample_n {n} (declaration rewritten)"
    return None


def signoff_hmac(key: AnchorKey, experiment_id: str, report_id: str, verdict: str, approver: str,
                 note: str | None) -> str:
    """``<key id>:<HMAC>`` binding a sign-off's approver and note to the report and verdict it approves."""
    message = "\n".join([ANCHOR_VERSION, "signoff", experiment_id, report_id, verdict, approver, note or ""])
    return f"{key_id(key)}:" + hmac.new(key.secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


def signoff_problem(key: AnchorKey, signoff: Mapping[str, Any]) -> str | None:
    """Why a stored sign-off's HMAC does not vouch for it, or None when it does (the caller decides what a
    sign-off without one means)."""
    stored = str(signoff["anchor_hmac"])
    made_with = stored.split(":", 1)[0]
    if made_with != key_id(key):
        return (f"sign-off {signoff['id']} was certified with key {made_with}, this process holds key {key_id(key)}: "
                "every process must use the same EXPERIMENTTRACKER_ANCHOR_KEY")
    expected = signoff_hmac(key, signoff["experiment_id"], signoff["report_id"], signoff["verdict"],
                            signoff["approver"], signoff["note"])
    if not hmac.compare_digest(expected, stored):
        return (f"sign-off {signoff['id']} by {signoff['approver']!r} does not match its HMAC "
                "(approver, note, report or verdict rewritten)")
    return None
