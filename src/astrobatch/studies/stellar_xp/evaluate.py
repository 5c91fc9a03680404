"""stellar_xp evaluate: per-label accuracy, quantile calibration, baselines, reconstruction.

Metrics (flat names; ``<label>`` in ``teff`` (K), ``logg`` (dex), ``fe_h`` (dex),
``alpha`` (dex), ``age`` (Gyr), ``parallax`` (mas); residual = predicted median - true):

- ``test/<label>/r2``, ``rmse``, ``mae``, ``bias`` (median residual), ``scatter``
  (1.4826 x median absolute deviation of the residuals), in physical units;
- ``test/<label>/coverage_68``: fraction of true values inside [q16, q84] (ideal 0.68);
  ``test/<label>/frac_below_q50`` (ideal 0.5);
- ``baseline/median/test/<label>/...`` (the training median) and
  ``baseline/hgb/test/<label>/...`` (scikit-learn ``HistGradientBoostingRegressor``
  on the same scaled features and split; for parallax without the PARALLAX input and
  its error, the same leakage rule as the two-pass network);
- ``test/<label>/rmse_over_hgb``: the network's RMSE over the gradient-boosting one;
- ``recon/sim/xp_mae``, ``recon/real/xp_mae`` (and ``_rmse``): masked-XP reconstruction
  error of the pretrained autoencoder on held-out simulated and real sources, in scaled
  units: half of each source's XP coefficients hidden at random and predicted from the
  rest (:func:`masked_xp_error`); ``recon/<name>/xp_block_mae``: the whole XP block hidden
  and predicted from the other columns (the pretraining objective; for real sources,
  which have nothing but XP, this measures the learned prior only);
- ``real/n_sources``, ``real/<first label>/median``: a summary of the predictions table
  of real Gaia XP sources that the predict stage wrote (``evaluate.real_predictions``;
  :func:`astrobatch.studies.stellar_xp.predict.real_metrics`; none when it is null or
  the file is missing). Those sources have no labels.

Per-bin residuals (bias, scatter and count in quantile bins of the true value) go to
``reports/stellar_xp/residual_bins.csv``; predictions to ``predictions.ecsv`` (one row per
``source_id``, with units) and ``predictions.parquet`` (long form). ``metrics/stellar_xp.json``
holds the headline metrics (:func:`headline_keys`), ``reports/stellar_xp/metrics_full.json``
all of them.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astrobatch.data.scalers import load_table_scalers
from astrobatch.data.tables import TableArrayDataset, TableDataModule
from astrobatch.errors import InputError
from astrobatch.evaluate import plots
from astrobatch.evaluate.metrics import MAD_TO_SIGMA
from astrobatch.io.predictions import read_predictions
from astrobatch.studies.stellar_xp.columns import LABEL_UNITS
from astrobatch.studies.stellar_xp.params import StellarXPParams
from astrobatch.studies.stellar_xp.predict import (
    load_finetuned,
    physical_quantiles,
    predict_quantiles,
    real_metrics,
)
from astrobatch.studies.stellar_xp.train import build_pretrain_task, read_manifest
from astrobatch.study import StudyPaths, staged_outputs, write_evaluation
from astrobatch.tasks.masked import reconstruction_error
from astrobatch.train import load_model_weights

log = logging.getLogger(__name__)


def label_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """R², RMSE, MAE, robust bias and scatter of residuals (NaN truths ignored).

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)

    Returns
    -------
    dict
        ``r2``, ``rmse``, ``mae``, ``bias`` = median(Δ), ``scatter`` = 1.4826 x
        median |Δ - median(Δ)|, ``n``; Δ = pred - true.

    Examples
    --------
    >>> m = label_metrics(np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.0, 3.0]))
    >>> m["bias"], round(m["rmse"], 4), m["n"]
    (0.0, 0.2887, 3)
    """
    ok = np.isfinite(true) & np.isfinite(pred)
    p, t = np.asarray(pred, float)[ok], np.asarray(true, float)[ok]
    if len(t) == 0:
        return {k: float("nan") for k in ("r2", "rmse", "mae", "bias", "scatter")} | {"n": 0}
    d = p - t
    ss = float(((t - t.mean()) ** 2).sum())
    med = float(np.median(d))
    return {
        "r2": 1 - float((d**2).sum()) / ss if ss > 0 else float("nan"),
        "rmse": float(np.sqrt((d**2).mean())),
        "mae": float(np.abs(d).mean()),
        "bias": med,
        "scatter": MAD_TO_SIGMA * float(np.median(np.abs(d - med))),
        "n": len(t),
    }


def calibration(q: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Coverage of [q16, q84] and fraction below q50 (NaN truths ignored).

    Parameters
    ----------
    q : numpy.ndarray, shape (n, 3)
        Predicted 16/50/84 % quantiles.
    true : numpy.ndarray, shape (n,)

    Examples
    --------
    >>> q = np.array([[0.0, 1.0, 2.0]] * 4)
    >>> calibration(q, np.array([0.5, 1.5, 3.0, -1.0]))
    {'coverage_68': 0.5, 'frac_below_q16': 0.25, 'frac_below_q50': 0.5, 'frac_below_q84': 0.75}
    """
    ok = np.isfinite(true)
    q, t = q[ok], true[ok]
    if len(t) == 0:
        return dict.fromkeys(
            ("coverage_68", "frac_below_q16", "frac_below_q50", "frac_below_q84"), float("nan")
        )
    return {
        "coverage_68": float(((t >= q[:, 0]) & (t <= q[:, 2])).mean()),
        "frac_below_q16": float((t < q[:, 0]).mean()),
        "frac_below_q50": float((t < q[:, 1]).mean()),
        "frac_below_q84": float((t < q[:, 2]).mean()),
    }


def residual_bins(pred: np.ndarray, true: np.ndarray, n_bins: int = 6) -> pd.DataFrame:
    """Bias and scatter of residuals in quantile bins of the true value."""
    ok = np.isfinite(true)
    p, t = pred[ok], true[ok]
    edges = np.unique(np.quantile(t, np.linspace(0, 1, n_bins + 1)))
    rows = []
    for a, b in itertools.pairwise(edges):
        sel = (t >= a) & ((t < b) | (b == edges[-1]))
        if sel.sum() < 2:
            continue
        m = label_metrics(p[sel], t[sel])
        rows.append({"lo": a, "hi": b, "centre": float(np.median(t[sel])), **m})
    return pd.DataFrame(rows)


def hgb_baseline(
    train: dict, test: dict, label_idx: int, drop_cols: list[int], seed: int
) -> np.ndarray:
    """Gradient boosting from scaled features (NaN = missing) to one scaled label."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    keep = np.setdiff1d(np.arange(train["x"].shape[1]), drop_cols)
    y = train["y"][:, label_idx]
    ok = np.isfinite(y)
    gbr = HistGradientBoostingRegressor(random_state=seed, max_iter=300, early_stopping=True)
    gbr.fit(train["x"][ok][:, keep], y[ok])
    return gbr.predict(test["x"][:, keep])


@staged_outputs("plots", "reports", "metrics")
def evaluate(params: StellarXPParams, paths: StudyPaths) -> dict[str, float]:
    """Evaluate the fine-tuned model, the baselines and the pretrained reconstruction.

    Parameters
    ----------
    params : StellarXPParams
        ``model``, ``masking`` and ``finetune`` rebuild both checkpoints' models; ``data``
        names the labels; ``seed`` seeds the baselines and the reconstruction masks;
        ``evaluate.real_predictions`` is the predict stage's table of real sources
        (summarised as ``real/`` metrics; null or missing: none).
    paths : StudyPaths
        Reads ``prepared`` (output of prepare), ``pretrained`` and ``models``
        (``best.ckpt`` of pretrain and finetune); writes ``plots`` (PNG plots),
        ``reports`` (``predictions.parquet``, ``residual_bins.csv``) and, last,
        ``metrics`` (the flat metrics JSON).

    Returns
    -------
    dict
        Flat metrics: per label and split, the baselines and ``recon/*``.

    Raises
    ------
    InputError
        Missing prepared data or checkpoints, checkpoints that do not match params or the
        prepared scalers, or a real predictions table without the first label's column.
    """
    prepared_dir, pretrained_dir, model_dir = paths.need("prepared", "pretrained", "models")
    metrics_path, plots_dir, reports_dir = paths.need("metrics", "plots", "reports")
    manifest = read_manifest(prepared_dir)
    labels = manifest["labels"]
    _, lscaler = load_table_scalers(prepared_dir / "scalers.json")
    dm = TableDataModule(prepared_dir, "finetune", in_memory_eval=True)
    test_ds = TableArrayDataset(dm.path("test"))
    train_ds = TableArrayDataset(dm.path("train"))

    # fine-tuned model (weights of best.ckpt into a freshly built task), as predict loads it
    task = load_finetuned(params, model_dir / "best.ckpt", prepared_dir, manifest)
    q = physical_quantiles(predict_quantiles(task, test_ds.arrays["x"]), lscaler)  # (n, L, 3)
    mean, std = np.asarray(lscaler.mean), np.asarray(lscaler.std)
    y_true = test_ds.arrays["y"] * std[None, :] + mean[None, :]
    y_train = train_ds.arrays["y"] * std[None, :] + mean[None, :]

    metrics: dict[str, float] = {}
    bins, frames = [], {}
    par_in = manifest.get("parallax_index")
    par_cols = [par_in] if par_in is not None else []
    for i, lab in enumerate(labels):
        t = y_true[:, i]
        for k, v in label_metrics(q[:, i, 1], t).items():
            metrics[f"test/{lab}/{k}"] = v
        for k, v in calibration(q[:, i], t).items():
            metrics[f"test/{lab}/{k}"] = v
        med = np.full(len(t), np.nanmedian(y_train[:, i]))
        for k, v in label_metrics(med, t).items():
            if k != "n":
                metrics[f"baseline/median/test/{lab}/{k}"] = v
        drop = par_cols if i == manifest.get("parallax_label_index") else []
        hgb = hgb_baseline(train_ds.arrays, test_ds.arrays, i, drop, params.seed)
        hgb = hgb * std[i] + mean[i]
        for k, v in label_metrics(hgb, t).items():
            if k != "n":
                metrics[f"baseline/hgb/test/{lab}/{k}"] = v
        metrics[f"test/{lab}/rmse_over_hgb"] = (
            metrics[f"test/{lab}/rmse"] / metrics[f"baseline/hgb/test/{lab}/rmse"]
        )
        b = residual_bins(q[:, i, 1], t)
        b.insert(0, "label", lab)
        bins.append(b)
        frames[lab] = pd.DataFrame(
            {"source_id": test_ds.source_id, "true": t, "q16": q[:, i, 0], "q50": q[:, i, 1],
             "q84": q[:, i, 2], "hgb": hgb}
        )  # fmt: skip

    # pretrained autoencoder: masked-XP reconstruction on held-out simulated and real sources
    ptask = build_pretrain_task(params, manifest)
    load_model_weights(ptask.model, pretrained_dir / "best.ckpt")
    pdm = TableDataModule(prepared_dir, "pretrain", in_memory_eval=True, eval_batch_size=1024)
    recon_examples = {}
    for name, split in (("sim", "val"), ("real", "val_real")):
        if pdm.n_rows(split) == 0 or (name == "sim" and not manifest.get("sources", {}).get(
                "simulated", params.data.pretrain_sources != "real")):  # fmt: skip
            continue
        ds = pdm.dataset(split)
        r = masked_xp_error(ptask, ds.arrays["x"], manifest["xp_indices"], 0.5, params.seed)
        metrics[f"recon/{name}/xp_mae"] = r["mae"]
        metrics[f"recon/{name}/xp_rmse"] = r["rmse"]
        metrics[f"recon/{name}/xp_mae_median_predictor"] = r["mae_median_predictor"]
        metrics[f"recon/{name}/n_sources"] = r["n_rows"]
        r = reconstruction_error(ptask, pdm.loader(split), seed=params.seed, xp_masking_ratio=1.0)
        metrics[f"recon/{name}/xp_block_mae"] = float(r["mae"])
        recon_examples[name] = _recon_examples(ptask, pdm.dataset(split), manifest)
    metrics.update(real_summary(params, labels))  # real Gaia XP sources (no labels)
    for k in ("rmse_over_hgb", "coverage_68"):  # one figure over the labels
        metrics[f"test/mean/{k}"] = float(np.mean([metrics[f"test/{lab}/{k}"] for lab in labels]))
    table = pd.concat({k: v for k, v in frames.items()}, names=["label", "row"]).reset_index()
    bins_table = pd.concat(bins, ignore_index=True)
    _plots(plots_dir, frames, bins_table, recon_examples, manifest)
    write_evaluation(
        metrics, metrics_path, reports_dir,
        {"predictions.parquet": table, "predictions.ecsv": wide_predictions(frames),
         "residual_bins.csv": bins_table,
         # the `dvc plots` scatter (dvc.yaml): true vs predicted median per label
         "pred_vs_true.csv": pd.DataFrame(
             {f"{k}_{lab}": frames[lab][c] for lab in labels
              for k, c in (("true", "true"), ("predicted", "q50"))})},
        headline=headline_keys(labels),
        units={f"{lab}_{c}": ECSV_UNITS[lab] for lab in labels
               for c in ("true", "q16", "q50", "q84", "hgb")},
    )  # fmt: skip
    return metrics


def real_summary(params: StellarXPParams, labels) -> dict[str, float]:
    """The ``real/`` metrics of the predict stage's table ``evaluate.real_predictions``.

    Parameters
    ----------
    params : StellarXPParams
    labels : sequence of str
        The model's labels (the first is summarised).

    Returns
    -------
    dict
        :func:`astrobatch.studies.stellar_xp.predict.real_metrics` of the table; empty
        when the param is null or the file is missing (logged at INFO).

    Raises
    ------
    InputError
        An unreadable table, or one without the first label's column (naming the file).
    """
    path = params.evaluate.real_predictions
    real = read_predictions(path)
    if real is None:
        return {}
    try:
        return real_metrics(real, labels)
    except InputError as err:
        raise err.in_file(path) from None


#: astropy units of the labels (columns.LABEL_UNITS in words; dex for the abundances)
ECSV_UNITS = {"teff": "K", "logg": "dex(cm / s2)", "fe_h": "dex", "alpha": "dex", "age": "Gyr",
              "parallax": "mas"}  # fmt: skip


def headline_keys(labels) -> list[str]:
    """The headline metrics of stellar_xp (``metrics/stellar_xp.json``).

    The test RMSE of each label (at most six), the mean over labels of the RMSE over the
    gradient-boosting baseline's and of the 68% interval coverage (ideal 0.68), and the
    masked-XP reconstruction error on real sources.
    """
    return [
        *(f"test/{lab}/rmse" for lab in list(labels)[:6]),
        "test/mean/rmse_over_hgb", "test/mean/coverage_68", "recon/real/xp_mae",
    ]  # fmt: skip


def wide_predictions(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per test star: ``source_id`` then ``<label>_true``, ``_q16``, ``_q50``,
    ``_q84``, ``_hgb`` (physical units) for every label."""
    labs = list(frames)
    out = pd.DataFrame({"source_id": frames[labs[0]]["source_id"].to_numpy()})
    for lab in labs:
        for c in ("true", "q16", "q50", "q84", "hgb"):
            out[f"{lab}_{c}"] = frames[lab][c].to_numpy()
    return out


@torch.no_grad()
def masked_xp_error(
    task, x: np.ndarray, xp_idx, fraction: float, seed: int, batch_size: int = 1024
) -> dict[str, float]:
    """Reconstruction error of randomly masked XP coefficients (scaled units).

    A seeded ``fraction`` of the present XP coefficients of every source is
    hidden (filled as in pretraining, indicators set when the model uses them)
    and predicted from the rest of the row; the error counts those positions
    only. Unlike masking whole XP blocks, this is defined for sources that have
    nothing but XP coefficients (the real Gaia sources).

    Parameters
    ----------
    task : MaskedReconstructionTask
    x : numpy.ndarray, shape (n, F), float32
        Scaled features, NaN = missing.
    xp_idx : sequence of int
        XP coefficient columns (all inside the reconstructed prefix).
    fraction : float
        Share of present XP coefficients hidden.
    seed : int

    Returns
    -------
    dict
        ``mae``, ``rmse`` over the hidden positions, ``mae_median_predictor``
        (the error of predicting the training median, 0 in scaled units: the
        reference a useful reconstruction must beat; noise-dominated high-order
        coefficients keep both near their noise level), ``n_rows`` (sources with
        at least one hidden coefficient).
    """
    task.eval()
    xp = torch.as_tensor(np.asarray(xp_idx))
    g = torch.Generator().manual_seed(int(seed))
    abs_sum = sq_sum = zero_sum = 0.0
    count, rows = 0, 0
    for a in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.asarray(x[a : a + batch_size], np.float32))
        mask = torch.zeros(xb.shape, dtype=torch.bool)
        mask[:, xp] = torch.rand((len(xb), len(xp)), generator=g) < fraction
        recon, mask = _reconstruct(task, xb, mask)
        m = mask[:, : recon.shape[1]]
        d = (recon - torch.nan_to_num(xb[:, : recon.shape[1]]))[m]
        abs_sum += float(d.abs().sum())
        zero_sum += float(torch.nan_to_num(xb[:, : recon.shape[1]])[m].abs().sum())
        sq_sum += float((d**2).sum())
        count += int(m.sum())
        rows += int(m.any(dim=1).sum())
    if count == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "mae_median_predictor": float("nan"),
                "n_rows": 0}  # fmt: skip
    return {
        "mae": abs_sum / count,
        "rmse": (sq_sum / count) ** 0.5,
        "mae_median_predictor": zero_sum / count,
        "n_rows": rows,
    }


def _reconstruct(task, xb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide ``mask & present`` as in pretraining (fill value, indicators) and decode.

    Returns the reconstruction (B, R) and the effective mask (B, F): masked and present.
    """
    from astrobatch.tasks.masked import fill_masked

    present = torch.isfinite(xb)
    mask = mask & present
    inp = fill_masked(xb, mask, task.hparams.fill_value)
    ind = (mask | ~present).float() if task.model.in_features == 2 * xb.shape[1] else None
    return task.model.decode(task.model.encode(inp, ind)), mask


@torch.no_grad()
def _recon_examples(task, ds, manifest: dict, k: int = 3) -> dict[str, np.ndarray]:
    """True and reconstructed XP coefficients (scaled) of the first ``k`` sources with XP."""
    xp = np.asarray(manifest["xp_indices"])
    x = ds.arrays["x"]
    rows = np.flatnonzero(np.isfinite(x[:, xp]).all(axis=1))[:k]
    if len(rows) == 0:
        return {}
    xb = torch.from_numpy(x[rows])
    mask = torch.zeros(xb.shape, dtype=torch.bool)
    mask[:, xp] = True
    recon = _reconstruct(task, xb, mask)[0].numpy()
    xp_r = xp[xp < recon.shape[1]]
    return {"true": x[rows][:, xp_r], "recon": recon[:, xp_r]}


def _plots(plots_dir: Path, frames, bins: pd.DataFrame, recon, manifest) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    labs = list(frames)
    n = len(labs)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    for ax, lab in zip(axes[0], labs, strict=True):
        f = frames[lab].dropna(subset=["true"])
        ax.errorbar(f.true, f.q50, yerr=[f.q50 - f.q16, f.q84 - f.q50], fmt=".", ms=2,
                    alpha=0.3, elinewidth=0.5)  # fmt: skip
        lo, hi = np.nanpercentile(f.true, [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(lab)
        ax.set_xlabel(f"true {lab} [{LABEL_UNITS.get(lab, '')}]")
        ax.set_ylabel(f"predicted median, q16-q84 [{LABEL_UNITS.get(lab, '')}]")
    plots.save_figure(fig, plots_dir / "pred_vs_true.png")

    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, lab in zip(axes[0], labs, strict=True):
        b = bins[bins.label == lab]
        ax.errorbar(b.centre, b.bias, yerr=b.scatter, marker="o", capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(lab)
        ax.set_xlabel(f"true {lab} [{LABEL_UNITS.get(lab, '')}]")
        ax.set_ylabel(f"residual bias ± scatter [{LABEL_UNITS.get(lab, '')}]")
    plots.save_figure(fig, plots_dir / "residual_trends.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    nominal = [0.16, 0.5, 0.84]
    for lab in labs:
        f = frames[lab].dropna(subset=["true"])
        obs = [(f.true < f[c]).mean() for c in ("q16", "q50", "q84")]
        ax.plot(nominal, obs, marker="o", label=lab)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("nominal quantile")
    ax.set_ylabel("fraction of true values below it")
    ax.legend(fontsize=8)
    plots.save_figure(fig, plots_dir / "calibration.png")

    if recon:
        fig, axes = plt.subplots(1, len(recon), figsize=(5 * len(recon), 3.4), squeeze=False)
        for ax, (name, ex) in zip(axes[0], recon.items(), strict=True):
            for j in range(len(ex.get("true", []))):
                ax.plot(ex["true"][j], color=f"C{j}", lw=1.2)
                ax.plot(ex["recon"][j], color=f"C{j}", lw=1, ls="--")
            ax.set_title(f"{name}: XP coefficients (solid) and reconstruction (dashed)", fontsize=8)
            ax.set_xlabel("coefficient (bp_1..bp_55, rp_1..rp_55)")
        axes[0][0].set_ylabel("scaled value")
        plots.save_figure(fig, plots_dir / "reconstruction_examples.png")
