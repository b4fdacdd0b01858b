"""Percentile bootstrap over test images (95 %, B = 1000, seed 0, every metric).

A resample draws `n` images with replacement; a statistic receives the draw as integer **weights** (how many times
each image was drawn), so corpus-level metrics (BLEU, mAP, micro F1...) are recomputed on the resample rather than
averaged. The interval is the (2.5, 97.5) percentile of the resampled values (NaN resamples dropped and counted).

Two kinds of statistics share the same resamples:

* scalar statistics `fn(weights) -> float` (`weights` of shape `(n,)`), evaluated once per resample;
* batch statistics `fn(W) -> {name: values}` with `W` of shape `(B, n)` (one row per resample) returning one value
  per row for every metric it covers. The metric code builds these from per-image statistics (label indicator
  matrices, per-image box counts, per-sample text scores, detection flags...) so that every metric of
  `metrics.json` is recomputed on the resampled images with a few matrix products instead of a Python loop.

`cluster_index` resamples clusters (the records of one image, e.g. the 6 MIMIC existence questions of a study)
together: the weights drawn per cluster are expanded to the records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CHUNK = 250  # resamples evaluated together by batch statistics (bounds memory)

StatFn = Callable[[np.ndarray], float]
BatchStatFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


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


def evaluate_statistics(
    weights: np.ndarray,
    statistics: Mapping[str, StatFn] | None = None,
    batch_statistics: Sequence[BatchStatFn] = (),
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Every statistic on every row of `weights` (B, n): `{name: values (B,)}` (failures -> NaN)."""
    weights = np.asarray(weights)
    resamples = weights.shape[0]
    out: dict[str, np.ndarray] = {}
    funcs = list(batch_statistics)
    iterator: Any = funcs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(funcs, desc="bootstrap", unit="statistic group")
    w_float = weights.astype(np.float64)
    for fn in iterator:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, resamples, CHUNK):
            with np.errstate(divide="ignore", invalid="ignore"):
                values = fn(w_float[start : start + CHUNK])
            for name, vals in values.items():
                parts.setdefault(name, []).append(np.asarray(vals, dtype=np.float64).reshape(-1))
        for name, chunks in parts.items():
            if name in out:
                raise ValueError(f"two bootstrap statistics are named {name!r}")
            out[name] = np.concatenate(chunks)
    for name, fn in (statistics or {}).items():
        if name in out:
            raise ValueError(f"two bootstrap statistics are named {name!r}")
        vals = np.empty(resamples)
        for b in range(resamples):
            try:
                vals[b] = fn(weights[b])
            except (ZeroDivisionError, ValueError):
                vals[b] = np.nan
        out[name] = vals
    return out


def bootstrap_values(
    n: int,
    statistics: Mapping[str, StatFn] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
    batch_statistics: Sequence[BatchStatFn] = (),
    cluster_index: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every statistic on every resample: `{name: values (resamples,)}`.

    `n` = number of resampled units (images). Statistics receive weights per record: with `cluster_index`
    (record -> unit, values in `range(n)`) the unit draw counts are expanded to the records, else records = units.
    `statistics[name](weights)` returns one metric (all-ones weights = the point estimate); `batch_statistics`
    return `{name: values}` for a `(B, n_records)` weight matrix. The resamples depend only on `(n, resamples,
    seed)`: two systems scored on the same units with the same seed get the same resamples, so their values can be
    subtracted resample by resample (`paired_difference_interval`).
    """
    weights = bootstrap_weights(n, resamples, seed)
    if cluster_index is not None:
        weights = weights[:, np.asarray(cluster_index, dtype=np.int64)]
    return evaluate_statistics(weights, statistics, batch_statistics, progress=progress)


def intervals_from_values(
    values: Mapping[str, np.ndarray], resamples: int, seed: int, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """`{name: {"low", "high", "confidence", "resamples", "seed", "nan_resamples"}}` of `bootstrap_values`' output."""
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


def bootstrap_intervals(
    n: int,
    statistics: Mapping[str, StatFn] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
    progress: bool = False,
    batch_statistics: Sequence[BatchStatFn] = (),
    cluster_index: Sequence[int] | np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """95 % percentile intervals of several statistics on the **same** resamples (see `bootstrap_values`)."""
    values = bootstrap_values(n, statistics, resamples, seed, progress, batch_statistics, cluster_index)
    return intervals_from_values(values, resamples, seed, confidence)


def paired_difference_interval(
    first: np.ndarray, second: np.ndarray, confidence: float = 0.95
) -> dict[str, Any]:
    """Percentile interval of `first - second` over paired resamples (the same images drawn for both systems).

    Resamples where either value is undefined (NaN) are dropped and counted. `excludes_zero` tells whether the
    interval lies entirely above or below 0.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired resamples must align: {first.shape} vs {second.shape}")
    low, high = percentile_interval(first - second, confidence)
    return {
        "low": low,
        "high": high,
        "confidence": confidence,
        "nan_resamples": int(np.isnan(first - second).sum()),
        "excludes_zero": bool(low > 0 or high < 0),
    }


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float((np.asarray(values, dtype=np.float64) * weights).sum() / total) if total else float("nan")


def expand_rows(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rows of `matrix` repeated by their draw counts (for statistics that need the resampled matrix)."""
    return np.repeat(matrix, weights, axis=0)


# ======================================================================================= batch statistics


def safe_div(num: Any, den: Any, fill: float = 0.0) -> np.ndarray:
    """`num / den` with `fill` where `den == 0` (sklearn's `zero_division`)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(num, den, out=np.full(num.shape, fill, dtype=np.float64), where=den != 0)


def prf_from_counts(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (`2tp / (2tp + fp + fn)`) with 0 for empty denominators."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    return safe_div(tp, tp + fp), safe_div(tp, tp + fn), safe_div(2 * tp, 2 * tp + fp + fn)


def weighted_mean_statistic(name: str, values: np.ndarray, rows: np.ndarray | None = None) -> BatchStatFn:
    """`{name: weighted mean of values}` (over `rows` only when given; NaN for an empty resample)."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.ones(len(values)) if rows is None else np.asarray(rows, dtype=np.float64)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        wm = w * mask
        total = wm.sum(axis=1)
        return {name: safe_div(wm @ values, total, np.nan)}

    return fn


def multilabel_statistic(
    prefix: str,
    labels: Sequence[str],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    rows: np.ndarray | None = None,
    per_label: bool = True,
    averages: bool = True,
) -> BatchStatFn:
    """P/R/F1 of `classification.multilabel_report` (sklearn's definitions, zero_division 0) on resamples.

    Names: `{prefix}.labels.<label>.{precision,recall,f1}` and `{prefix}.averages.<micro|macro|macro_present|
    weighted|samples>.{precision,recall,f1}`. `rows` (0/1) restricts the rows (protocols that drop answers).
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), len(labels))
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), len(labels))
    mask = np.ones(len(t)) if rows is None else np.asarray(rows, dtype=np.float64)
    tp_rows, fp_rows, fn_rows = t * p, (1 - t) * p, t * (1 - p)
    row_tp, row_t, row_p = tp_rows.sum(axis=1), t.sum(axis=1), p.sum(axis=1)
    row_prf = np.stack([safe_div(row_tp, row_p), safe_div(row_tp, row_t), safe_div(2 * row_tp, row_t + row_p)], axis=1)
    metrics = ("precision", "recall", "f1")

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        wm = w * mask
        tp, fp, fn_ = wm @ tp_rows, wm @ fp_rows, wm @ fn_rows
        prf = prf_from_counts(tp, fp, fn_)
        empty = wm.sum(axis=1) == 0
        out: dict[str, np.ndarray] = {}
        if per_label:
            for k, label in enumerate(labels):
                for m, values in zip(metrics, prf):
                    out[f"{prefix}.labels.{label}.{m}"] = np.where(empty, np.nan, values[:, k])
        if averages:
            support = tp + fn_
            present = support > 0
            n_present = present.sum(axis=1)
            total_support = support.sum(axis=1)
            micro = prf_from_counts(tp.sum(axis=1), fp.sum(axis=1), fn_.sum(axis=1))
            samples = safe_div(wm @ row_prf, wm.sum(axis=1)[:, None], np.nan)
            for j, m in enumerate(metrics):
                values = prf[j]
                avg = {
                    "micro": micro[j],
                    "macro": values.mean(axis=1) if len(labels) else np.full(len(w), np.nan),
                    "macro_present": safe_div((values * present).sum(axis=1), n_present, np.nan),
                    "weighted": safe_div((values * support).sum(axis=1), total_support),
                    "samples": samples[:, j],
                }
                for name, v in avg.items():
                    out[f"{prefix}.averages.{name}.{m}"] = np.where(empty, np.nan, v)
        return out

    return fn


def binary_statistic(
    prefix: str, y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray | None = None, template: str = "{prefix}.{metric}"
) -> BatchStatFn:
    """`{prefix}.{precision,recall,f1}` (names from `template`) of a 0/1 problem (`classification.binary_report`)
    on resamples."""
    inner = multilabel_statistic("x", ("x",), np.asarray(y_true).reshape(-1, 1), np.asarray(y_pred).reshape(-1, 1), rows, averages=False)

    def fn(w: np.ndarray) -> dict[str, np.ndarray]:
        values = inner(w)
        return {template.format(prefix=prefix, metric=m): values[f"x.labels.x.{m}"] for m in ("precision", "recall", "f1")}

    return fn


def auc_batch(y: np.ndarray, scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (ties count one half; equals sklearn's `roc_auc_score(sample_weight=...)`) of every row of
    `w` (B, n); NaN where a resample lacks positives or negatives."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    if not len(y):
        return np.full(len(w), np.nan)
    order = np.argsort(scores, kind="mergesort")
    s_sorted, y_sorted = scores[order], y[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(s_sorted)) + 1))
    ws = w[:, order]
    pos = np.add.reduceat(ws * y_sorted, starts, axis=1)
    neg = np.add.reduceat(ws * (1 - y_sorted), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    return safe_div(num, pos.sum(axis=1) * neg.sum(axis=1), np.nan)


def average_precision_batch(scores: np.ndarray, tp: np.ndarray, image_index: np.ndarray, gt_per_image: np.ndarray,
                            w: np.ndarray) -> np.ndarray:  # fmt: skip
    """VOC-2010 all-point AP of one class's detections on every row of `w` (B, n_images) (see
    `localization.ClassDetections.ap`); NaN where the resample has no reference box of the class."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    n_gt = w @ np.asarray(gt_per_image, dtype=np.float64)
    if not len(scores):
        return np.where(n_gt > 0, 0.0, np.nan)
    order = np.argsort(-np.asarray(scores), kind="stable")
    flags = np.asarray(tp, dtype=np.float64)[order]
    wd = w[:, np.asarray(image_index)[order]]
    ctp = np.cumsum(wd * flags, axis=1)
    cfp = np.cumsum(wd * (1 - flags), axis=1)
    recall = safe_div(ctp, n_gt[:, None])
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    b = len(w)
    mrec = np.concatenate([np.zeros((b, 1)), recall, np.ones((b, 1))], axis=1)
    mpre = np.concatenate([np.zeros((b, 1)), precision, np.zeros((b, 1))], axis=1)
    envelope = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    ap = ((mrec[:, 1:] - mrec[:, :-1]) * envelope[:, 1:]).sum(axis=1)
    return np.where(n_gt > 0, ap, np.nan)


__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "auc_batch",
    "average_precision_batch",
    "binary_statistic",
    "bootstrap_intervals",
    "bootstrap_values",
    "bootstrap_weights",
    "evaluate_statistics",
    "expand_rows",
    "intervals_from_values",
    "multilabel_statistic",
    "paired_difference_interval",
    "percentile_interval",
    "prf_from_counts",
    "safe_div",
    "weighted_mean",
    "weighted_mean_statistic",
]
