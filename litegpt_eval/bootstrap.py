"""Percentile bootstrap over test images (DESIGN.md section 5: 95 %, B = 1000, seed 0).

A resample draws `n` images with replacement; a statistic receives the draw as integer **weights** (how many times
each image was drawn), so corpus-level metrics (BLEU, mAP, micro F1...) are recomputed on the resample rather than
averaged. The interval is the (2.5, 97.5) percentile of the resampled values (NaN resamples dropped and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def bootstrap_weights(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples, n) integer draw counts; each row sums to n. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n), dtype=np.int64)
    rows = np.repeat(np.arange(resamples), n)
    np.add.at(weights, (rows, draws.reshape(-1)), 1)
    return weights


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_intervals(
    n: int,
    statistics: Mapping[str, Callable[[np.ndarray], float]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """95 % percentile intervals of several statistics on the **same** resamples.

    `statistics[name](weights)` returns the metric for a weight vector of length `n` (all ones = the point
    estimate). Returns `{name: {"low", "high", "confidence", "resamples", "seed", "nan_resamples"}}`.
    """
    weights = bootstrap_weights(n, resamples, seed)
    values = {name: np.empty(resamples) for name in statistics}
    iterator = range(resamples)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="bootstrap", unit="resample")
    for b in iterator:
        for name, fn in statistics.items():
            try:
                values[name][b] = fn(weights[b])
            except (ZeroDivisionError, ValueError):
                values[name][b] = np.nan
    out = {}
    for name, vals in values.items():
        low, high = percentile_interval(vals, confidence)
        out[name] = {
            "low": low,
            "high": high,
            "confidence": confidence,
            "resamples": resamples,
            "seed": seed,
            "nan_resamples": int(np.isnan(vals).sum()),
        }
    return out


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float((np.asarray(values, dtype=np.float64) * weights).sum() / total) if total else float("nan")


def expand_rows(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rows of `matrix` repeated by their draw counts (for statistics that need the resampled matrix)."""
    return np.repeat(matrix, weights, axis=0)


__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "bootstrap_intervals",
    "bootstrap_weights",
    "expand_rows",
    "percentile_interval",
    "weighted_mean",
]
