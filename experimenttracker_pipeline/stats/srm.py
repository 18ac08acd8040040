"""Sample ratio mismatch (chi-square test of the arms' counts against the declared split)."""

from __future__ import annotations

import math

from scipy import special

from .sufficient import SRMResult, _check_alpha

# ---------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------


def srm_test(n_variant: int, n_control: int, expected_variant_share: float, alpha: float = 0.001) -> SRMResult:
    """Pearson chi-square (1 df) of the observed variant share vs the configured one.

    A strict alpha (0.001, as Eppo) because the check is repeated at every evaluation.
    """
    _check_alpha(alpha)
    if not 0 < expected_variant_share < 1:
        raise ValueError("expected_variant_share must be in (0, 1)")
    if n_variant < 0 or n_control < 0:
        raise ValueError("counts must be >= 0")
    total = n_variant + n_control
    if total == 0:
        return SRMResult(0.0, 1.0, False, math.nan, expected_variant_share, n_variant, n_control, alpha)
    ev = total * expected_variant_share
    ec = total - ev
    chi2 = (n_variant - ev) ** 2 / ev + (n_control - ec) ** 2 / ec
    p = float(special.chdtrc(1, chi2))
    return SRMResult(float(chi2), p, p < alpha, n_variant / total, expected_variant_share, n_variant, n_control, alpha)


