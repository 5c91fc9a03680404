"""fraction_metrics (r, R², r², MAE, MSE) on hand-computed cases; the morphology counting rule."""

from __future__ import annotations

import numpy as np

from astrobatch.evaluate.metrics import fraction_metrics
from astrobatch.studies.morphology.evaluate import counted, train_mean


def test_r2_is_the_coefficient_of_determination_not_squared_pearson():
    true = np.array([0.2, 0.4, 0.6, 0.8])
    pred = true / 2 + 0.1  # perfectly correlated, biased and shrunk
    m = fraction_metrics(pred, true)
    assert np.isclose(m["r"], 1.0) and np.isclose(m["r_squared"], 1.0)
    ss_res = ((pred - true) ** 2).sum()
    ss_tot = ((true - true.mean()) ** 2).sum()
    assert np.isclose(m["r2"], 1 - ss_res / ss_tot) and m["r2"] < 0.9
    assert np.isclose(m["mse"], ss_res / 4) and np.isclose(m["mae"], np.abs(pred - true).mean())
    const = fraction_metrics(np.full(4, true.mean()), true)
    assert np.isclose(const["r2"], 0.0) and np.isnan(const["r"])  # the mean has R² = 0


def test_counting_rule_and_vote_weighted_train_mean():
    # one galaxy: 40 volunteers on question 0, 30 on question 1, 5 on question 2
    w = np.array([[40.0, 40.0, 30.0, 30.0, 5.0, 5.0]])
    y = np.stack([np.full_like(w, 0.5), w, w], axis=1)
    assert counted(y, 0.5).tolist() == [[True] * 4 + [False] * 2]
    assert counted(y, 0.0).all()
    w0 = w.copy()
    w0[0, 4:] = 0  # never asked: never counted
    assert not counted(np.stack([w0, w0, w0], axis=1), 0.0)[0, 4:].any()
    # the baseline weighs each galaxy by its question's votes
    frac = np.array([[0.0], [1.0]])
    votes = np.array([[30.0], [10.0]])
    assert np.isclose(train_mean(np.stack([frac, votes, votes], axis=1))[0], 0.25)
