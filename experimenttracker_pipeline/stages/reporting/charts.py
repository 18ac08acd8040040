"""PNG charts of the reporting stage (matplotlib, no display): at least 1000x500 px, axes fitted to what the
decision depends on, the MDE band and the decision look marked."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Sequence

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 5.0, 100  # 1000 x 500 px


def _figure(height_in: float = HEIGHT_IN):
    from matplotlib.figure import Figure  # no pyplot: thread-safe, no GUI backend

    fig = Figure(figsize=(WIDTH_IN, max(HEIGHT_IN, height_in)), dpi=DPI)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode()


@dataclass(frozen=True)
class IntervalRow:
    """One row of a forest plot."""

    label: str
    estimate: float | None
    low: float
    high: float
    flagged: bool = False  # drawn red (a harmed segment, a losing variant)
    note: str = ""


def forest_plot(rows: Sequence[IntervalRow], title: str, xlabel: str = "edge delta (bps)",
                mde_bps: float | None = None) -> bytes | None:
    """Horizontal intervals, one per row, zero line and (when given) the +/-MDE band."""
    rows = [r for r in rows if r.low is not None and r.high is not None]
    if not rows:
        return None
    fig, ax = _figure(1.2 + 0.45 * len(rows))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows):
        color = "#c0392b" if r.flagged else "#1f5fa8"
        ax.plot([r.low, r.high], [y, y], color=color, lw=3, solid_capstyle="butt")
        if r.estimate is not None:
            ax.plot([r.estimate], [y], "o", color=color, ms=7)
        ax.annotate(f"[{r.low:+.2f}, {r.high:+.2f}]" + (f"  {r.note}" if r.note else ""), (r.high, y),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=9, color=color)
    if mde_bps:
        ax.axvspan(-abs(mde_bps), abs(mde_bps), color="#f1c40f", alpha=0.15, label=f"smaller than the MDE (±{abs(mde_bps):g} bps)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=9, frameon=False)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([r.label for r in rows], fontsize=10)
    lo, hi = min(r.low for r in rows), max(r.high for r in rows)
    span = max(hi - lo, 1e-9)
    ax.set_xlim(min(lo, 0) - 0.05 * span, max(hi, 0) + 0.55 * span)  # room for the labels on the right
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


@dataclass(frozen=True)
class SequencePoint:
    n: int
    estimate: float
    low: float
    high: float


def fitted_range(points: Sequence[SequencePoint], focus_from_n: int, extra: Sequence[float] = ()) -> tuple[float, float]:
    """The y-range of a CI-over-time chart: the intervals from ``focus_from_n`` samples on (early looks, whose
    intervals are wide, would otherwise flatten the ones the decision rests on), zero and ``extra`` values."""
    focus = [p for p in points if p.n >= focus_from_n] or list(points[-max(1, len(points) // 4):])
    values = [v for p in focus for v in (p.low, p.high)] + [0.0, *extra]
    lo, hi = min(values), max(values)
    pad = 0.12 * max(hi - lo, 1e-9)
    return lo - pad, hi + pad


def ci_over_time(points: Sequence[SequencePoint], *, title: str, mde_bps: float | None, decision_n: int | None,
                 decision_label: str, looks: Sequence[int] = (), deciding: tuple[float, float, float] | None = None,
                 deciding_label: str = "deciding CI", min_samples: int = 0, mde_label: str = "") -> bytes | None:
    """The confidence sequence narrowing with samples; the MDE band, the looks, the decision look and the deciding CI."""
    if len(points) < 2:
        return None
    fig, ax = _figure()
    n = [p.n for p in points]
    ax.fill_between(n, [p.low for p in points], [p.high for p in points], color="#1f5fa8", alpha=0.25,
                    label="always-valid 95% confidence sequence (paired)")
    ax.plot(n, [p.estimate for p in points], color="#1f5fa8", lw=1.5, label="estimate")
    ax.axhline(0, color="black", lw=0.8)
    extra: list[float] = []
    if mde_bps:
        ax.axhspan(-abs(mde_bps), abs(mde_bps), color="#f1c40f", alpha=0.18,
                   label=f"smaller than the MDE ({mde_label or f'±{abs(mde_bps):g} bps'})")
        extra += [-abs(mde_bps), abs(mde_bps)]
    for look in looks:
        ax.axvline(look, color="grey", lw=0.6, ls=":")
    if decision_n is not None:
        ax.axvline(decision_n, color="#8e44ad", lw=2, ls="--", label=decision_label)
    if deciding is not None:
        est, lo, hi = deciding
        ax.errorbar([n[-1]], [est], yerr=[[est - lo], [hi - est]], fmt="o", color="#c0392b", capsize=6, lw=2.5,
                    label=f"{deciding_label} [{lo:+.2f}, {hi:+.2f}]")
        extra += [lo, hi]
    focus_from = max(min_samples, int(0.25 * n[-1]))
    ax.set_ylim(*fitted_range(points, focus_from, extra))
    ax.set_xlim(0, n[-1] * 1.04)
    ax.set_xlabel("paired samples")
    ax.set_ylabel("edge delta (bps)")
    ax.set_title(title + (f"  (y-axis fitted from {focus_from} samples on; earlier looks are clipped)" if focus_from > n[0] else ""),
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)  # below: never over the CI
    ax.grid(alpha=0.3)
    return _png(fig)
