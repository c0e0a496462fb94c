"""Exact binomial bounds: what a read-back sample proves about the keys it did not read.

With n objects read back and k found wrong, the one-sided Clopper-Pearson upper
bound at confidence 1 - alpha is the p at which P(X <= k | n, p) = alpha, the
(1 - alpha) quantile of Beta(k + 1, n - k).  For k = 0 it is 1 - alpha^(1/n),
about 3/n at 95 % and 4.6/n at 99 %.  Computed exactly here (a bisection on the
binomial CDF in log space), so no SciPy is needed at run time.
"""

from __future__ import annotations

import math


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
             + (n - i) * lq for i in range(0, min(k, n) + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def cp_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on the failure rate, or 1.0 when n == 0."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)
    lo, hi = k / n, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi
