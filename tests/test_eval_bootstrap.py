"""Bootstrap intervals: deterministic, resamples of size n, intervals that behave like intervals."""

from __future__ import annotations

import numpy as np
import pytest

from litegpt_eval.bootstrap import bootstrap_intervals, bootstrap_weights, percentile_interval, weighted_mean


def test_weights_are_deterministic_resamples_of_size_n():
    a, b = bootstrap_weights(50, 200, seed=0), bootstrap_weights(50, 200, seed=0)
    assert (a == b).all() and (a.sum(axis=1) == 50).all()
    assert not (a == bootstrap_weights(50, 200, seed=1)).all()


def test_interval_of_a_mean_brackets_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(30), rng.random(3000)
    ci_small = bootstrap_intervals(30, {"m": lambda w: weighted_mean(small, w)}, resamples=500)["m"]
    ci_large = bootstrap_intervals(3000, {"m": lambda w: weighted_mean(large, w)}, resamples=500)["m"]
    assert ci_small["low"] < small.mean() < ci_small["high"]
    assert ci_large["low"] < large.mean() < ci_large["high"]
    assert (ci_large["high"] - ci_large["low"]) < (ci_small["high"] - ci_small["low"])
    # normal approximation check: half width ~ 1.96 * sd / sqrt(n)
    expected = 1.96 * large.std() / np.sqrt(3000)
    assert (ci_large["high"] - ci_large["low"]) / 2 == pytest.approx(expected, rel=0.25)


def test_nan_resamples_are_dropped_and_counted():
    out = bootstrap_intervals(4, {"x": lambda w: float("nan") if w[0] == 0 else 1.0}, resamples=100)["x"]
    assert out["nan_resamples"] > 0 and out["low"] == out["high"] == 1.0
    assert percentile_interval(np.array([np.nan])) != percentile_interval(np.array([1.0]))
