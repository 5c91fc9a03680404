"""Photo-z and log-ratio metrics against independent computations (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from astrobatch.evaluate.metrics import log_ratio_metrics, nmad, redshift_metrics


def test_nmad_matches_scipy_normal_scale():
    x = np.random.default_rng(0).standard_t(3, 501)
    assert nmad(x) == pytest.approx(stats.median_abs_deviation(x, scale="normal"), rel=1e-4)


def test_redshift_metrics_of_a_known_scatter():
    rng = np.random.default_rng(1)
    z = rng.uniform(0.1, 0.4, 20000)
    dz = rng.normal(0.002, 0.01, z.size)
    dz[:200] = 0.3  # 1 % catastrophic outliers
    pred = z + dz * (1 + z)
    m = redshift_metrics(pred, z, outlier=0.05)
    assert m["sigma_nmad"] == pytest.approx(0.01, rel=0.03)  # robust to the outliers
    assert m["bias"] == pytest.approx(0.002, abs=5e-4)
    assert m["outlier_fraction"] == pytest.approx(0.01, abs=0.002)
    assert m["n"] == z.size


def test_log_ratio_metrics_and_errors():
    true = np.array([10.0, 20.0, 40.0, 80.0])
    pred = true * 10 ** np.array([0.1, -0.1, 0.1, -0.1])
    m = log_ratio_metrics(pred, true)
    assert m["bias_dex"] == pytest.approx(0.0, abs=1e-12)
    assert m["scatter_dex"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="> 0"):
        log_ratio_metrics(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        redshift_metrics(np.zeros(2), np.zeros(3))
