"""star_sets evaluate: metrics in physical units, baselines, predictions table, plots, real data.

Metrics (flat names, stable across experiments; ``<q>`` is the short target
name, ``mass`` for ``total_mass_within_2x_r_tidal``):

- ``<split>/mae_log_<q>``, ``rmse_log_<q>``, ``median_ae_log_<q>``,
  ``p90_ae_log_<q>``, ``bias_log_<q>`` (dex) and the same without ``log_`` in
  physical units (Msun), per sample;
- ``<split>/snapshot/...``: the same on the mean log prediction of each
  snapshot, plus ``pearson`` and ``spearman`` correlations of those means;
- ``<split>/within_snapshot_std_log_<q>``: mean over snapshots of the
  standard deviation of predictions across the samples of one snapshot (dex);
- ``baseline/median/<split>/...``: the median of the training targets;
- ``<split>/mae_log_<q>_over_baseline``: ratio of the model's MAE to the baseline's;
- ``real/<file>/...``, ``real/mae_log_<q>``: prediction vs truth for the real NBODY6++
  snapshots, read from the table of ``astrobatch star-sets predict``
  (``evaluate.real_predictions``; :func:`~astrobatch.studies.star_sets.predict.real_metrics`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.data.scalers import load_scalers
from astrobatch.data.sets import SetDataModule
from astrobatch.evaluate import metrics as M
from astrobatch.evaluate import plots
from astrobatch.io.predictions import read_predictions
from astrobatch.studies.star_sets.params import StarSetsParams
from astrobatch.studies.star_sets.predict import real_metrics
from astrobatch.studies.star_sets.train import build_model
from astrobatch.study import StudyPaths, staged_outputs, write_evaluation
from astrobatch.tasks.regression import predict
from astrobatch.train import load_model_weights

log = logging.getLogger(__name__)
SHORT = {"total_mass_within_2x_r_tidal": "mass", "n_stars_within_2x_r_tidal": "n_stars"}
UNITS = {"mass": "Msun", "time": "Myr", "r_half_mass": "pc", "r_tidal": "pc", "n_stars": ""}


def short_name(target: str) -> str:
    """Short metric name of a target (``mass`` for ``total_mass_within_2x_r_tidal``)."""
    return SHORT.get(target, target)


def _block(prefix: str, pred_log, true_log, log_target: bool, q: str) -> dict[str, float]:
    out = {}
    if log_target:
        for k, v in M.regression_metrics(pred_log, true_log).items():
            out[f"{prefix}{k}_log_{q}"] = v
        pred_phys, true_phys = 10**pred_log, 10**true_log
    else:
        pred_phys, true_phys = pred_log, true_log
    for k, v in M.regression_metrics(pred_phys, true_phys).items():
        out[f"{prefix}{k}_{q}"] = v
    return out


def headline_keys(q: str, log10: bool = True) -> list[str]:
    """The headline metrics of star_sets (``metrics/star_sets.json``) for target ``q``.

    Test-set error per sample and per snapshot (the snapshot mean of its samples), the
    median baseline and the ratio, bias, rank correlation, the spread of one snapshot's
    predictions, and the mean absolute error on the real NBODY6++ snapshots (when any are
    evaluated). Eight, so that ``astrobatch exp show star_sets`` fits 160 columns.
    """
    e = f"log_{q}" if log10 else q
    return [
        f"test/mae_{e}", f"baseline/median/test/mae_{e}", f"test/mae_{e}_over_baseline",
        f"test/bias_{e}", f"test/snapshot/mae_{e}", "test/snapshot/spearman",
        f"test/within_snapshot_std_log_{q}", f"real/mae_log_{q}",
    ]  # fmt: skip


@staged_outputs("plots", "reports", "metrics")
def evaluate(params: StarSetsParams, paths: StudyPaths) -> dict[str, float]:
    """Evaluate the best checkpoint on val and test; write metrics, predictions and plots.

    Parameters
    ----------
    params : StarSetsParams
    paths : StudyPaths
        Reads ``prepared`` (shards + scalers), ``models`` (``best.ckpt``) and ``live``
        (DVCLive curves); writes ``plots`` (``pred_vs_true.png``, ``residual_hist.png``,
        ``loss_curves.png``), ``reports`` (``predictions.ecsv`` with units, and the same
        as ``predictions.parquet``: ``split, snapshot_id, run_id, sample_id, n_stars,
        prediction, target`` in physical units, plus log10 columns;
        ``metrics_full.json``, every metric) and, last, ``metrics`` (the headline metrics,
        :func:`headline_keys`, ``metrics/star_sets.json``).

    Returns
    -------
    dict
        The metrics written.

    Raises
    ------
    InputError
        Missing prepared data or checkpoint, or a checkpoint that does not
        match the model params.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    metrics_path, plots_dir, reports_dir = paths.need("metrics", "plots", "reports")
    fscaler, tscaler = load_scalers(prepared_dir / "scalers.json")
    q = short_name(params.data.target)
    dm = SetDataModule(
        prepared_dir, params.sampling, params.training.batch_size, params.seed, num_workers=0
    )
    model = build_model(params.model, in_features=len(fscaler.features))
    load_model_weights(model, Path(model_dir) / "best.ckpt")

    train_log = tscaler.to_log_space(dm.dataset("train").y)
    metrics: dict[str, float] = {}
    frames, test_pack = [], None
    for split in ("val", "test"):
        ds = dm.dataset(split)
        out = predict(model, dm.loader(split))
        pred_log, true_log = (
            tscaler.to_log_space(out["prediction"]),
            tscaler.to_log_space(out["target"]),
        )
        metrics.update(_block(f"{split}/", pred_log, true_log, tscaler.log10, q))
        sets, mean, std = M.per_set(pred_log, out["set_index"])
        true_set = tscaler.to_log_space(ds.y[sets])
        metrics.update(_block(f"{split}/snapshot/", mean, true_set, tscaler.log10, q))
        metrics.update(
            {f"{split}/snapshot/{k}": v for k, v in M.correlations(mean, true_set).items()}
        )
        metrics[f"{split}/within_snapshot_std_log_{q}"] = float(std.mean())
        base = M.median_baseline(train_log, len(true_log))
        metrics.update(_block(f"baseline/median/{split}/", base, true_log, tscaler.log10, q))
        key = f"mae_log_{q}" if tscaler.log10 else f"mae_{q}"
        metrics[f"{split}/{key}_over_baseline"] = (
            metrics[f"{split}/{key}"] / metrics[f"baseline/median/{split}/{key}"]
        )
        idx = out["set_index"]
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "snapshot_id": ds.sets["snapshot_id"][idx],
                    "run_id": ds.sets["run_id"][idx],
                    "sample_id": out["sample_index"],
                    "n_stars": out["n_elements"],
                    "prediction": 10**pred_log if tscaler.log10 else pred_log,
                    "target": 10**true_log if tscaler.log10 else true_log,
                    "log10_prediction": pred_log if tscaler.log10 else np.nan,
                    "log10_target": true_log if tscaler.log10 else np.nan,
                }
            )
        )
        if split == "test":
            test_pack = (pred_log, true_log, base, true_set, mean, std)
    metrics["n_test_snapshots"] = int(dm.dataset("test").n_sets)

    real = read_predictions(params.evaluate.real_predictions)
    if real is not None:
        metrics.update(real_metrics(real, q))

    pred_log, true_log, base, true_set, mean, std = test_pack
    u = UNITS.get(q, "")
    label = f"log10 {q} [dex({u})]" if tscaler.log10 else f"{q} [{u}]"
    res_label = f"log10 {q} [dex]" if tscaler.log10 else f"{q} [{u}]"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots.pred_vs_true(
        pred_log, true_log, plots_dir / "pred_vs_true.png", label, (true_set, mean, std)
    )
    plots.residual_hist(
        {params.model.name: pred_log - true_log, "median baseline": base - true_log},
        plots_dir / "residual_hist.png",
        res_label,
    )
    curves = plots.read_dvclive_curves(Path(live_dir))
    if curves:
        plots.loss_curves(curves, plots_dir / "loss_curves.png")
    predictions = pd.concat(frames, ignore_index=True)
    unit = UNITS.get(q) or ""
    # the `dvc plots` scatter (dvc.yaml): one point per test snapshot
    snapshots = pd.DataFrame({f"true_log10_{q}": true_set, f"predicted_log10_{q}": mean,
                              f"predicted_log10_{q}_std": std})  # fmt: skip
    write_evaluation(
        metrics, metrics_path, reports_dir,
        {"predictions.parquet": predictions, "predictions.ecsv": predictions,
         "pred_vs_true.csv": snapshots},
        headline=headline_keys(q, tscaler.log10),
        units={"prediction": unit, "target": unit,
               "log10_prediction": f"dex({unit})" if unit else "dex",
               "log10_target": f"dex({unit})" if unit else "dex"},
    )  # fmt: skip
    return metrics
