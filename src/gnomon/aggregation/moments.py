"""VARIANCE, SKEW and KURTOSIS: central moments, folded with numerically stable one-pass updates.

VARIANCE (population) IR: ``[n, mean, m2, nonfinite, del_n, del_mean, del_m2]``.

- ``n, mean, m2`` is the Welford state of the finite inputs (count, mean, sum of squared deviations),
  merged with Chan's parallel formula. A delete undoes a Welford step in place ("reverse Welford").
- ``nonfinite`` counts NaN/±Inf inputs (signed), kept out of the moments so that deleting them is
  exact; any left makes the output None (a NaN/Inf variance is null).
- ``del_n, del_mean, del_m2`` is a second Welford state holding deleted inputs that could not be
  undone in place because ``n`` would drop to 0 or below — e.g. a mutation that deletes row x and
  inserts row y into an empty stream tile. Reverse Welford is singular at n = 0, while the pair
  (inserted, deleted) is exact signed-multiset algebra; the deleted part is folded back into the
  inserted one (exact inverse of Chan's formula) as soon as more rows were inserted than deleted.

SKEW / KURTOSIS IR: ``[n, mean, m2, m3, m4]`` (not reversible), updated with Terriberry's extension
of Welford and merged with Pébay's formulas (Pébay 2008, SAND2008-6212, eq. 3.1). Outputs are the
population skewness ``g1 = sqrt(n) * m3 / m2**1.5`` and excess kurtosis ``g2 = n * m4 / m2**2 - 3``;
null when n < 3 (skew) / n < 4 (kurtosis) or m2 == 0. Equal inputs keep ``m2`` exactly 0.0 in any
merge order (the mean of equal floats is exact), so the zero-variance test is exact, not a tolerance.
"""

from __future__ import annotations

import math
from typing import Any

from gnomon.aggregation.base import IR, Aggregator


class Variance(Aggregator):
    """VARIANCE: population variance ``m2 / n`` (see the module docstring for the IR)."""

    kind = "variance"
    reversible = True

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        x = float(value)
        if math.isfinite(x):
            return [1, x, 0.0, 0, 0, 0.0, 0.0]
        return [0, 0.0, 0.0, 1, 0, 0.0, 0.0]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return self.prepare(value, ts, seq)
        x = float(value)
        if not math.isfinite(x):
            ir[3] += 1
            return ir
        n = ir[0] + 1
        delta = x - ir[1]
        mean = ir[1] + delta / n
        ir[0] = n
        ir[1] = mean
        ir[2] += delta * (x - mean)
        if ir[4] and n > ir[4]:
            _absorb_deleted(ir)
        return ir

    def delete(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            ir = [0, 0.0, 0.0, 0, 0, 0.0, 0.0]
        x = float(value)
        if not math.isfinite(x):
            ir[3] -= 1
            return ir
        n = ir[0]
        if n >= 2:
            remaining = n - 1
            mean = ir[1]
            new_mean = mean - (x - mean) / remaining
            ir[0] = remaining
            ir[1] = new_mean
            ir[2] -= (x - mean) * (x - new_mean)
        elif n == 1 and x == ir[1]:
            ir[0], ir[1], ir[2] = 0, 0.0, 0.0
        else:
            dn = ir[4] + 1
            delta = x - ir[5]
            dmean = ir[5] + delta / dn
            ir[4] = dn
            ir[5] = dmean
            ir[6] += delta * (x - dmean)
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        a[0], a[1], a[2] = _chan(a[0], a[1], a[2], b[0], b[1], b[2])
        a[3] += b[3]
        a[4], a[5], a[6] = _chan(a[4], a[5], a[6], b[4], b[5], b[6])
        if a[4] and a[0] > a[4]:
            _absorb_deleted(a)
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else list(ir)

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[3] != 0:
            return None
        n, m2 = ir[0], ir[2]
        if ir[4]:
            n, _, m2 = _chan_inverse(ir[0], ir[1], ir[2], ir[4], ir[5], ir[6])
        if n <= 0:
            return None
        variance = max(m2, 0.0) / n  # rounding after deletes may leave m2 a hair below 0
        return variance if math.isfinite(variance) else None


def _chan(na: int, ma: float, m2a: float, nb: int, mb: float, m2b: float) -> tuple[int, float, float]:
    """Chan et al.'s parallel Welford merge of two non-negative-count states."""
    if nb == 0:
        return na, ma, m2a
    if na == 0:
        return nb, mb, m2b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def _chan_inverse(pn: int, pm: float, pm2: float, dn: int, dm: float, dm2: float) -> tuple[int, float, float]:
    """The state R with ``chan(R, deleted) == inserted``; only meaningful when ``pn > dn``."""
    n = pn - dn
    if n <= 0:
        return n, 0.0, 0.0
    delta = dm - pm
    return n, pm - delta * dn / n, pm2 - dm2 - delta * delta * pn * dn / n


def _absorb_deleted(ir: list[Any]) -> None:
    ir[0], ir[1], ir[2] = _chan_inverse(ir[0], ir[1], ir[2], ir[4], ir[5], ir[6])
    ir[4], ir[5], ir[6] = 0, 0.0, 0.0


class _HigherMoments(Aggregator):
    """Shared IR ``[n, mean, m2, m3, m4]`` of SKEW and KURTOSIS."""

    def prepare(self, value: Any, ts: int, seq: int) -> IR:
        return [1, float(value), 0.0, 0.0, 0.0]

    def update(self, ir: IR, value: Any, ts: int, seq: int) -> IR:
        if ir is None:
            return [1, float(value), 0.0, 0.0, 0.0]
        x = float(value)
        n1 = ir[0]
        n = n1 + 1
        m2, m3 = ir[2], ir[3]
        delta = x - ir[1]
        delta_n = delta / n
        delta_n2 = delta_n * delta_n
        term1 = delta * delta_n * n1
        ir[0] = n
        ir[1] += delta_n
        ir[4] += term1 * delta_n2 * (n * n - 3 * n + 3) + 6 * delta_n2 * m2 - 4 * delta_n * m3
        ir[3] = m3 + term1 * delta_n * (n - 2) - 3 * delta_n * m2
        ir[2] = m2 + term1
        return ir

    def _merge(self, a: IR, b: IR) -> IR:
        na, ma, m2a, m3a, m4a = a
        nb, mb, m2b, m3b, m4b = b
        n = na + nb
        delta = mb - ma
        delta_n = delta / n
        delta_n2 = delta_n * delta_n
        nab = na * nb
        a[0] = n
        a[1] = ma + delta_n * nb
        a[2] = m2a + m2b + delta * delta_n * nab
        a[3] = m3a + m3b + delta * delta_n2 * nab * (na - nb) + 3 * delta_n * (na * m2b - nb * m2a)
        a[4] = (
            m4a
            + m4b
            + delta * delta_n * delta_n2 * nab * (na * na - nab + nb * nb)
            + 6 * delta_n2 * (na * na * m2b + nb * nb * m2a)
            + 4 * delta_n * (na * m3b - nb * m3a)
        )
        return a

    def clone(self, ir: IR) -> IR:
        return None if ir is None else list(ir)


class Skew(_HigherMoments):
    """SKEW: population skewness g1; null when n < 3 or the variance is zero."""

    kind = "skew"

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[0] < 3 or not ir[2] > 0:
            return None
        try:
            g1 = math.sqrt(ir[0]) * ir[3] / ir[2] ** 1.5
        except (OverflowError, ValueError):
            return None
        return g1 if math.isfinite(g1) else None


class Kurtosis(_HigherMoments):
    """KURTOSIS: population excess kurtosis g2; null when n < 4 or the variance is zero."""

    kind = "kurtosis"

    def finalize(self, ir: IR) -> Any:
        if ir is None or ir[0] < 4 or not ir[2] > 0:
            return None
        try:
            g2 = ir[0] * ir[4] / (ir[2] * ir[2]) - 3.0
        except (OverflowError, ZeroDivisionError):
            return None
        return g2 if math.isfinite(g2) else None
