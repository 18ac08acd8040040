"""Keep a verdict's plain English in agreement with its stop rules and harm flags (pure).

The statistical verdict's sentence ("no clear difference ... yet") is written before the stop rules and the
causal harm checks run; ``reconcile_wording`` adds what they found, so no page can say the experiment keeps
collecting data after a stop rule fired, or stay silent about a harmed segment it lists.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# Phrases that promise more data collection; never shown once a stop rule fired.
COLLECTING_PHRASES = ("keeps collecting", "still collecting", "collecting data", "more pairs are needed", "yet")
STOPPED_SENTENCE = "No more data will be collected for this decision: the experiment was stopped ({why})."


def fired_stops(stop_rules: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The stop rules whose action is to stop (held early stops are not)."""
    return [r for r in stop_rules or [] if r.get("action") == "stop"]


def harm_found(harmed_segments: Iterable[Any] | None, stop_rules: Iterable[Mapping[str, Any]] | None,
               surface_harm: bool = False) -> bool:
    """Harm is shown whenever a segment is listed as harmed, the surface found harm, or a harm stop rule fired."""
    return bool(list(harmed_segments or [])) or bool(surface_harm) or any(
        r.get("rule") == "harm" for r in fired_stops(stop_rules))


def _segment_label(segment: Any) -> str:
    if isinstance(segment, Mapping):
        return str(segment.get("segment") or f"{segment.get('covariate')}={segment.get('value')}")
    return str(segment)


def without_collecting(text: str) -> str:
    """Drop the sentences of ``text`` that promise more data collection."""
    sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if s.strip()]
    kept = [s for s in sentences if not any(p in s.lower() for p in COLLECTING_PHRASES[:4])]
    kept = [s.replace(" yet", "") if s.lower().endswith(("yet", "yet.")) else s for s in kept]
    out = ". ".join(s.rstrip(".") for s in kept)
    return (out + ".") if out else ""


def reconcile_text(text: str, stop_rules: Iterable[Mapping[str, Any]] | None, harmed_segments: Iterable[Any] | None) -> str:
    """``text`` with what the stop rules and the harm checks found (idempotent)."""
    text = (text or "").strip()
    stops = fired_stops(stop_rules)
    harmed = [_segment_label(s) for s in harmed_segments or []]
    if harmed and not all(h in text for h in harmed):
        text = (text + " " if text else "") + f"It did measurably worse for {', '.join(harmed)}."
    if stops:
        why = "; ".join(str(r.get("message") or r.get("reason_code") or "").rstrip(".") for r in stops)
        sentence = STOPPED_SENTENCE.format(why=why)
        if sentence not in text:
            text = (without_collecting(text) + " " + sentence).strip()
    return text


def reconcile_wording(final: dict[str, Any]) -> None:
    """Update ``final["plain_english"]`` from its stop rules and harmed segments."""
    final["plain_english"] = reconcile_text(final.get("plain_english") or "", final.get("stop_rules"),
                                            final.get("harmed_segments"))
