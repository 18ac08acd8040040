"""Family-wise error control across several hypotheses (primary metrics x treatments)."""

from __future__ import annotations

from typing import Sequence


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``).

    Reject hypothesis i at family-wise level alpha when its adjusted p-value is <= alpha. Applied to
    always-valid p-values the control holds under continuous monitoring too: Holm rejects a true null only
    when some true null's p-value falls below alpha / (number of true nulls), which each always-valid
    p-value does with probability at most that level at any time.
    """
    m = len(p_values)
    if m == 0:
        return []
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def bonferroni_adjust(p_values: Sequence[float]) -> list[float]:
    """Bonferroni adjusted p-values min(1, m p)."""
    m = len(p_values)
    return [min(1.0, m * p) for p in p_values]
