"""Intervals: a paired bootstrap over examples, a t interval over seeds, and the verdict they allow."""
import math

import numpy as np
import pytest

from fusionkit.core.intervals import paired_bootstrap, seed_interval, verdict


def test_a_clear_win_is_a_win_and_noise_is_inconclusive():
    rng = np.random.default_rng(0)
    b = rng.random(400) < 0.6
    better = b | (rng.random(400) < 0.5)  # a gets every example b gets, and half of the rest
    win = paired_bootstrap(better.astype(float), b.astype(float))
    assert win["diff"] == pytest.approx(better.mean() - b.mean())
    assert 0 < win["lo"] < win["diff"] < win["hi"] and verdict(win) == "reproduces"
    assert verdict(paired_bootstrap(b.astype(float), better.astype(float))) == "does not"
    coin = rng.random(400) < 0.6
    noise = paired_bootstrap(coin.astype(float), (rng.random(400) < 0.6).astype(float))
    assert noise["lo"] < 0 < noise["hi"] and verdict(noise) == "inconclusive"


def test_pairing_cancels_example_difficulty():
    """Two systems that differ on 3 of 300 examples are told apart when paired, though each alone is noisy."""
    base = (np.arange(300) % 2).astype(float)  # half the examples are hard for both
    a = base.copy()
    a[[0, 2, 4]] = 1.0  # a also gets three hard ones
    paired = paired_bootstrap(a, base)
    assert paired["lo"] >= 0 and paired["diff"] == pytest.approx(0.01)


def test_several_tasks_resample_within_each_task_and_average_over_tasks():
    a = {"x": np.ones(50), "y": np.zeros(10)}
    b = {"x": np.zeros(50), "y": np.zeros(10)}
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(0.5) and r["lo"] == r["hi"] == pytest.approx(0.5)  # macro mean, no spread
    with pytest.raises(ValueError, match="different tasks"):
        paired_bootstrap(a, {"x": np.zeros(50)})
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(np.ones(5), np.ones(6))


def test_seed_interval_is_students_t():
    r = seed_interval([0.70, 0.72, 0.74])
    assert r["mean"] == pytest.approx(0.72)
    assert r["hi"] - r["mean"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    one = seed_interval([0.7])
    assert math.isnan(one["lo"]) and verdict(one) == "inconclusive"
