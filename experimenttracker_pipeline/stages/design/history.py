"""What the proposer reads from the store, as plain values: the control's fill history and earlier pairings."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000
# Metrics whose control history can be read from single fills (a paired delta's variance is built from two
# fills of the metric); fill_size_ratio has no per-fill analogue.
HISTORY_METRICS = ("edge_delta_bps", "slippage_delta_bps", "fill_quality_delta")


@dataclass(frozen=True)
class FillHistory:
    """Count, mean and centred sums of one metric over the control's fills, and the days they span."""

    n: int
    mean: float | None
    sum_sq: float  # sum of (x - mean)^2
    sum_cube: float  # sum of (x - mean)^3
    first_ms: int | None
    last_ms: int | None
    active_days: int  # distinct UTC days with at least one fill
    span_days: int  # UTC days from the first fill's day to the last's, inclusive
    markets: int

    @property
    def variance(self) -> float | None:
        return self.sum_sq / (self.n - 1) if self.n >= 2 else None

    @property
    def skewness(self) -> float | None:
        if self.n < 3 or not self.sum_sq > 0:
            return None
        m2 = self.sum_sq / self.n
        return (self.sum_cube / self.n) / m2 ** 1.5

    @property
    def fills_per_day(self) -> float | None:
        return self.n / self.span_days if self.span_days else None



@dataclass(frozen=True)
class PairingHistory:
    """Paired deltas of one earlier experiment against the same control: count, mean, centred sum of squares."""

    experiment_id: str
    mode: str
    n: int
    mean: float
    sum_sq: float
