"""Regression metrics, per-set aggregation and baselines (NumPy/SciPy).

All functions take predictions and targets in the same units and return plain
floats, keyed by stable names so that metrics JSON files line up in
``dvc exp show``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def _paired(pred, true) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``true`` as float arrays of one non-empty shape (else ValueError)."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"expected equal non-empty shapes, got {pred.shape} and {true.shape}")
    return pred, true


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Absolute-error summary of predictions.

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
        Predictions and targets, same units.

    Returns
    -------
    dict
        ``mae`` (mean |Δ|), ``rmse``, ``median_ae`` (median |Δ|), ``p90_ae``
        (90th percentile of |Δ|), ``bias`` (mean Δ), with Δ = pred - true.

    Raises
    ------
    ValueError
        Empty or mismatched inputs.

    Examples
    --------
    >>> m = regression_metrics(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]))
    >>> m["mae"], m["median_ae"], round(m["rmse"], 4)
    (1.3333333333333333, 1.0, 1.8257)
    """
    pred, true = _paired(pred, true)
    d = pred - true
    a = np.abs(d)
    return {
        "mae": float(a.mean()),
        "rmse": float(np.sqrt((d**2).mean())),
        "median_ae": float(np.median(a)),
        "p90_ae": float(np.percentile(a, 90)),
        "bias": float(d.mean()),
    }


def correlations(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation coefficients (NaN when undefined).

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
    """
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(pred) < 2 or np.std(pred) == 0 or np.std(true) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    with warnings.catch_warnings():  # nearly constant inputs: NaN, not a warning per call
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return {
            "pearson": float(stats.pearsonr(pred, true)[0]),
            "spearman": float(stats.spearmanr(pred, true)[0]),
        }


def per_set(values: np.ndarray, set_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``values`` over the samples of each set.

    Parameters
    ----------
    values : numpy.ndarray, shape (n_samples,)
    set_index : numpy.ndarray, shape (n_samples,), int
        Set (snapshot) of each sample.

    Returns
    -------
    sets : numpy.ndarray, shape (n_sets,)
        Sorted unique set indices.
    mean, std : numpy.ndarray, shape (n_sets,)
        Mean and population standard deviation (ddof=0) per set.

    Examples
    --------
    >>> per_set(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 1]))
    (array([0, 1]), array([2., 5.]), array([1., 0.]))
    """
    sets, inv = np.unique(set_index, return_inverse=True)
    n = np.bincount(inv)
    mean = np.bincount(inv, weights=values) / n
    var = np.bincount(inv, weights=(values - mean[inv]) ** 2) / n
    return sets, mean, np.sqrt(var)


def median_baseline(train_targets: np.ndarray, n: int) -> np.ndarray:
    """The constant predictor: median of the training targets, repeated ``n`` times."""
    return np.full(n, float(np.median(train_targets)))


#: Scale that makes the median absolute deviation a consistent estimator of a normal's sigma.
MAD_TO_SIGMA = 1.4826


def age_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MdAE, MAE, RMSE, bias and R² of predictions (e.g. log age, dex).

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)

    Returns
    -------
    dict
        ``mdae`` = 1.4826 x median |Δ| (the cluster_age study's MdAE; upstream
        used the factor 1.49), ``mae``, ``rmse``, ``bias`` (mean Δ) with
        Δ = pred - true, and ``r2`` = 1 - Σ Δ² / Σ (true - mean(true))²
        (coefficient of determination; NaN when ``true`` is constant).

    Raises
    ------
    ValueError
        Empty or mismatched inputs.

    Examples
    --------
    >>> m = age_metrics(np.array([7.0, 8.5, 9.0]), np.array([7.0, 8.0, 9.0]))
    >>> round(m["mdae"], 4), round(m["mae"], 4), round(m["r2"], 4)
    (0.0, 0.1667, 0.875)
    """
    base = regression_metrics(pred, true)
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    d = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {
        "mdae": MAD_TO_SIGMA * base["median_ae"],
        "mae": base["mae"],
        "rmse": base["rmse"],
        "bias": base["bias"],
        "r2": 1.0 - float((d**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }


def fraction_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Agreement of predicted and observed vote fractions (or any bounded score).

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
        Predicted and observed values of the galaxies that were asked.

    Returns
    -------
    dict
        ``r`` (Pearson), ``r2`` (the coefficient of determination, 1 − SS_res / SS_tot
        around the mean of ``true``), ``r_squared`` (Pearson r², what the Galaxy
        Sommelier seed called R²), ``mae``, ``mse`` and ``n``; correlations are NaN when
        undefined (fewer than 2 values or a constant input).

    Raises
    ------
    ValueError
        Mismatched shapes.

    Examples
    --------
    >>> m = fraction_metrics(np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.5, 0.8]))
    >>> round(m["r"], 3), round(m["r2"], 3), round(m["mse"], 4)
    (1.0, 0.889, 0.0067)
    """
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if pred.shape != true.shape:
        raise ValueError(f"expected equal shapes, got {pred.shape} and {true.shape}")
    n = pred.size
    if n == 0:
        nan = float("nan")
        return {"r": nan, "r2": nan, "r_squared": nan, "mae": nan, "mse": nan, "n": 0}
    d = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    r = correlations(pred, true)["pearson"] if n > 1 else float("nan")
    return {
        "r": r,
        "r2": 1.0 - float((d**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "r_squared": r * r,
        "mae": float(np.abs(d).mean()),
        "mse": float((d**2).mean()),
        "n": int(n),
    }


def nmad(x: np.ndarray) -> float:
    """Normalised median absolute deviation, ``1.4826 median(|x - median(x)|)``.

    The robust estimate of a Gaussian's sigma (1.4826 = 1 / Φ⁻¹(3/4)).

    Examples
    --------
    >>> round(nmad(np.array([-1.0, 0.0, 1.0, 100.0])), 4)
    1.4826
    """
    x = np.asarray(x, float)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def redshift_metrics(pred: np.ndarray, true: np.ndarray, outlier: float = 0.05) -> dict[str, float]:
    """Photometric-redshift metrics of ``Δz / (1 + z)``.

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
        Predicted and true redshifts.
    outlier : float
        ``|Δz / (1 + z)|`` above which a prediction is an outlier.

    Returns
    -------
    dict
        ``bias`` (median of ``Δz / (1 + z)``), ``sigma_nmad`` (:func:`nmad` of it, the
        usual photo-z scatter, e.g. Brammer et al. 2008, arXiv:0807.1533),
        ``outlier_fraction``, ``mean_abs`` (mean ``|Δz / (1 + z)|``), ``n``.

    Raises
    ------
    ValueError
        Empty or mismatched inputs.

    Examples
    --------
    >>> m = redshift_metrics(np.array([0.11, 0.2, 0.5]), np.array([0.1, 0.2, 0.3]))
    >>> round(m["bias"], 4), m["outlier_fraction"]
    (0.0091, 0.3333333333333333)
    """
    pred, true = _paired(pred, true)
    dz = (pred - true) / (1.0 + true)
    return {
        "bias": float(np.median(dz)),
        "sigma_nmad": nmad(dz),
        "outlier_fraction": float(np.mean(np.abs(dz) > outlier)),
        "mean_abs": float(np.mean(np.abs(dz))),
        "n": int(dz.size),
    }


def log_ratio_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Bias and scatter of ``log10(pred / true)`` (richness, mass), in dex.

    Returns
    -------
    dict
        ``bias_dex`` (mean), ``scatter_dex`` (standard deviation), ``nmad_dex``
        (:func:`nmad`), ``n``.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, or values <= 0.

    Examples
    --------
    >>> m = log_ratio_metrics(np.array([10.0, 100.0]), np.array([10.0, 10.0]))
    >>> m["bias_dex"], m["scatter_dex"]
    (0.5, 0.5)
    """
    pred, true = _paired(pred, true)
    if (pred <= 0).any() or (true <= 0).any():
        raise ValueError("expected values > 0 for a log ratio")
    d = np.log10(pred / true)
    return {"bias_dex": float(d.mean()), "scatter_dex": float(d.std()), "nmad_dex": nmad(d),
            "n": int(d.size)}  # fmt: skip
