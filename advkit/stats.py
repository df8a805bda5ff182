"""Small statistics helpers for reports (confidence intervals of success and transfer rates)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["wilson_interval"]


def wilson_interval(k: Any, n: Any, z: float = 1.96) -> tuple[Any, Any]:
    """Wilson score interval for a binomial proportion ``k / n`` (default z = 1.96: 95%).

    ``center = (p + z^2 / 2n) / (1 + z^2 / n)``,
    ``half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)`` with ``p = k / n``;
    the interval is ``(center - half, center + half)``, clipped to [0, 1] against rounding.
    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at k = 0 or
    k = n (Wilson 1927; Newcombe 1998, method 3: 81/263 -> 0.2553 to 0.3662).

    ``k`` and ``n`` are counts (ints) or arrays of counts (broadcast with NumPy; then arrays are
    returned). ``n = 0`` gives ``(nan, nan)``: no data, no interval. Raises ``ValueError`` for
    negative counts, ``k > n`` or ``z <= 0``.
    """
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    scalar = np.ndim(k) == 0 and np.ndim(n) == 0
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if np.any(k_arr < 0) or np.any(n_arr < 0):
        raise ValueError(f"counts must be >= 0, got k={k}, n={n}")
    if np.any(k_arr > n_arr):
        raise ValueError(f"k must be <= n, got k={k}, n={n}")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        z2 = z * z
        denom = 1 + z2 / n_arr
        center = (p + z2 / (2 * n_arr)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n_arr + z2 / (4 * n_arr * n_arr))
        low = np.clip(center - half, 0.0, 1.0)
        high = np.clip(center + half, 0.0, 1.0)
    empty = n_arr == 0
    low = np.where(empty, np.nan, low)
    high = np.where(empty, np.nan, high)
    if scalar:
        return float(low), float(high)
    return low, high
