"""cluster_age evaluate: age metrics on every split and age subset, baselines, plots.

Metrics (flat names, log age in dex; ``<split>`` is ``train``, ``val``, ``test``,
``test_inner`` (7 <= log_age <= 9.5) or ``test_outer`` (the extremes, present
only when prepare kept them):

- ``<split>/mdae_log_age``: 1.4826 x median |pred - true| (the normal-consistent
  scaling of the median absolute error; upstream used 1.49);
- ``<split>/mae_log_age``, ``rmse_log_age``, ``bias_log_age``, ``r2_log_age``;
- ``baseline/<name>/<split>/...`` for ``mean`` and ``median`` (constant training
  statistics), ``random`` (draws from the training targets, metrics averaged
  over ``evaluate.random_baseline_draws`` draws) and ``photometric`` (gradient
  boosting from the 5 magnitudes and 4 colours to log age, fitted on the same
  training split; catalogue magnitudes when the raw file has them, else
  aperture photometry of the cutouts);
- ``test/mdae_log_age_over_mean_baseline``, ``test/mdae_log_age_over_photometric``:
  ratios of the model's test MdAE to the mean and photometric baselines';
- ``cross_galaxy/...`` (the same age metrics, ``cross_galaxy/n`` rows used,
  ``cross_galaxy/n_predicted`` rows predicted, ``baseline/mean/cross_galaxy/...``): from the
  predictions table of ``astrobatch cluster-age predict`` on the cross-galaxy sample
  (``evaluate.real_predictions``;
  :func:`cross_galaxy_metrics`), rows kept by
  ``data.log_age_range`` as the test split when ``data.remove_extremes``; absent when the
  param is null/empty or the file does not exist.

``metrics/cluster_age.json`` holds the :data:`HEADLINE` metrics, ``reports/cluster_age/
metrics_full.json`` all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.data.images import CutoutDataModule, keep_mask, open_shard
from astrobatch.errors import InputError
from astrobatch.evaluate import plots
from astrobatch.evaluate.metrics import age_metrics
from astrobatch.studies.cluster_age.params import ClusterAgeParams
from astrobatch.studies.cluster_age.train import (
    SPLITS,
    base_transform,
    build_model,
    load_norm_stats,
    make_datasets,
    read_log_age,
    read_manifest,
    unscale_target,
)
from astrobatch.study import StudyPaths, staged_outputs, write_evaluation
from astrobatch.tasks.regression import predict
from astrobatch.train import load_model_weights

#: The headline metrics (``metrics/cluster_age.json``): the test MdAE against every baseline,
#: and the cross-galaxy MdAE (absent without a predictions table).
HEADLINE = (
    "test/mdae_log_age", "baseline/mean/test/mdae_log_age",
    "baseline/photometric/test/mdae_log_age", "baseline/random/test/mdae_log_age",
    "test/mdae_log_age_over_mean_baseline", "test/mdae_log_age_over_photometric",
    "test/bias_log_age", "test_inner/mdae_log_age",
    "cross_galaxy/mdae_log_age", "baseline/mean/cross_galaxy/mdae_log_age", "cross_galaxy/n",
)  # fmt: skip

log = logging.getLogger(__name__)
Q = "log_age"
INNER = (7.0, 9.5)


def _block(prefix: str, pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {f"{prefix}/{k}_{Q}": v for k, v in age_metrics(pred, true).items()}


def _subsets(true: np.ndarray) -> dict[str, np.ndarray]:
    inner = (true >= INNER[0]) & (true <= INNER[1])
    out = {"test": np.ones_like(inner), "test_inner": inner}
    if (~inner).any():
        out["test_outer"] = ~inner
    return out


def photometric_features(prepared_dir: Path, split: str, source: str = "aperture") -> np.ndarray:
    """Magnitudes and adjacent colours of one split, shape (n, 2C - 1), float64, Vega mag.

    Parameters
    ----------
    prepared_dir : pathlib.Path
        Prepared shards (``<split>.h5``).
    split : str
    source : {"aperture", "catalogue"}
        ``aperture``: the ``photometry`` column, measured on each cutout at prepare (what a
        real PHANGS/LEGUS cutout gives); ``catalogue``: ``catalogue_magnitudes``, the
        magnitudes the simulator rendered the cutouts from (simulated data only: an upper
        bound, not a baseline real data can have).

    Raises
    ------
    KeyError
        If the shard has no such column.
    """
    column = {"aperture": "photometry", "catalogue": "catalogue_magnitudes"}[source]
    with open_shard(prepared_dir / f"{split}.h5") as f:
        mags = f[column][:].astype(np.float64)
    colours = mags[:, :-1] - mags[:, 1:]
    return np.concatenate([mags, colours], axis=1)


def has_catalogue_magnitudes(prepared_dir: Path) -> bool:
    """Whether the prepared shards carry ``catalogue_magnitudes`` (simulated inputs)."""
    with open_shard(prepared_dir / "train.h5") as f:
        return "catalogue_magnitudes" in f


def fit_photometric_baseline(prepared_dir: Path, seed: int, source: str = "aperture"):
    """Gradient boosting from magnitudes/colours to log age, fitted on the train split.

    Parameters
    ----------
    prepared_dir : pathlib.Path
    seed : int
    source : {"aperture", "catalogue"}
        The magnitudes (:func:`photometric_features`).

    Returns
    -------
    sklearn.ensemble.HistGradientBoostingRegressor
        Fitted; ``predict(photometric_features(...))`` gives log10 age, yr. Missing
        magnitudes are handled natively.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    gbr = HistGradientBoostingRegressor(random_state=seed, max_iter=300, early_stopping=True)
    return gbr.fit(photometric_features(prepared_dir, "train", source),
                   read_log_age(prepared_dir, "train"))  # fmt: skip


def photometric_baseline(
    prepared_dir: Path, seed: int, source: str = "aperture"
) -> dict[str, np.ndarray]:
    """Predictions of :func:`fit_photometric_baseline` per split, shape (n_split,), log10 yr.

    Parameters
    ----------
    prepared_dir : pathlib.Path
    seed : int
    source : {"aperture", "catalogue"}
    """
    gbr = fit_photometric_baseline(prepared_dir, seed, source)
    return {s: gbr.predict(photometric_features(prepared_dir, s, source)) for s in SPLITS}


def check_predictions_table(table, path: str | Path) -> None:
    """Check that a table of :func:`predict` has finite ``log_age`` and ``log_age_reference``.

    Parameters
    ----------
    table : astropy.table.Table
    path : str or pathlib.Path
        Where it was read from (for the message).

    Raises
    ------
    InputError
        A column missing, or non-finite values in it.
    """
    for col in ("log_age", "log_age_reference"):
        if col not in table.colnames:
            raise InputError(
                "expected a column of log10(age / yr) (a table of `astrobatch cluster-age "
                "predict`)", path, col,
            )  # fmt: skip
        if not np.all(np.isfinite(np.asarray(table[col], float))):
            raise InputError("expected finite log10(age / yr) values", path, col)


def cross_galaxy_metrics(
    table,
    log_age_range: tuple[float, float] | None = None,
    train_log_age: np.ndarray | None = None,
    prefix: str = "cross_galaxy",
) -> dict[str, float]:
    """The ``<prefix>/...`` metrics of a predictions table, as the test split's.

    Parameters
    ----------
    table : astropy.table.Table
        Columns ``log_age`` (prediction) and ``log_age_reference`` (truth), log10 yr.
    log_age_range : (float, float), optional
        Keep rows with ``log_age_reference`` inside it (inclusive), as ``prepare`` keeps the
        test split (``data.remove_extremes``); None keeps every row.
    train_log_age : numpy.ndarray, shape (n_train,), optional
        Training targets: adds the mean baseline ``baseline/mean/<prefix>/...``.
    prefix : str

    Returns
    -------
    dict of str to float
        ``<prefix>/{mdae,mae,rmse,bias,r2}_log_age``
        (:func:`astrobatch.evaluate.metrics.age_metrics`; MdAE = 1.4826 x median
        |pred - true|, dex), ``<prefix>/n`` (rows used), ``<prefix>/n_predicted`` (rows in
        the table); empty when no row is in the range.

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"log_age": [7.0, 8.5, 9.0, 10.0], "log_age_reference": [7.0, 8.0, 9.0, 6.5]})
    >>> m = cross_galaxy_metrics(t, (7.0, 9.5))
    >>> m["cross_galaxy/n"], round(m["cross_galaxy/mae_log_age"], 4)
    (3, 0.1667)
    """
    pred = np.asarray(table["log_age"], np.float64)
    true = np.asarray(table["log_age_reference"], np.float64)
    keep = np.ones(len(true), bool)
    if log_age_range is not None:
        keep = (true >= log_age_range[0]) & (true <= log_age_range[1])
    if not keep.any():
        log.info("%s: no predicted row with a reference log age in %s", prefix, log_age_range)
        return {}
    out = {f"{prefix}/{k}_log_age": v for k, v in age_metrics(pred[keep], true[keep]).items()}
    if train_log_age is not None:
        const = np.full(int(keep.sum()), float(np.mean(train_log_age)))
        out |= {f"baseline/mean/{prefix}/{k}_log_age": v
                for k, v in age_metrics(const, true[keep]).items()}  # fmt: skip
    out[f"{prefix}/n"] = int(keep.sum())
    out[f"{prefix}/n_predicted"] = len(true)
    return out


def real_metrics(params: ClusterAgeParams, train_log_age: np.ndarray | None = None
                 ) -> dict[str, float]:  # fmt: skip
    """The ``cross_galaxy/...`` metrics from the table of ``evaluate.real_predictions``.

    Parameters
    ----------
    params : ClusterAgeParams
        ``evaluate.real_predictions`` (path of the predictions table of ``astrobatch
        cluster-age predict``); ``data.remove_extremes`` and ``data.log_age_range`` select
        the rows as prepare selects the test split.
    train_log_age : numpy.ndarray, shape (n_train,), optional
        Training targets, log10 yr (the mean baseline).

    Returns
    -------
    dict of str to float
        :func:`cross_galaxy_metrics`; empty when the
        param is null or empty or the file does not exist (logged at INFO).

    Raises
    ------
    InputError
        An unreadable table, or one without ``log_age``/``log_age_reference``.
    """
    from astrobatch.io.predictions import read_predictions

    path = params.evaluate.real_predictions
    table = read_predictions(path)  # None (logged): no cross-galaxy metrics
    if table is None:
        return {}
    check_predictions_table(table, path)
    d = params.data
    rng = tuple(d.log_age_range) if d.remove_extremes else None
    return cross_galaxy_metrics(table, rng, train_log_age)


@staged_outputs("plots", "reports", "metrics")
def evaluate(params: ClusterAgeParams, paths: StudyPaths) -> dict[str, float]:
    """Evaluate the best checkpoint, the baselines and write metrics, tables and plots.

    Parameters
    ----------
    params : ClusterAgeParams
        ``mask``, ``model`` and ``training`` rebuild the checkpoint's CNN and its input
        transform; ``evaluate`` sets the random-baseline draws and the cross-galaxy
        predictions table (:func:`real_metrics`); ``seed`` the baselines.
    paths : StudyPaths
        Reads ``prepared``, ``models`` and ``live`` (outputs of prepare and train); writes
        ``plots`` (PNG plots), ``reports`` (``predictions.parquet``) and, last, ``metrics``
        (the flat metrics JSON).

    Returns
    -------
    dict
        Flat metrics: test, test_inner, test_outer, cross_galaxy and the baselines, log age
        in dex.

    Raises
    ------
    InputError
        Missing prepared data or checkpoint, or a checkpoint that does not match params.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    metrics_path, plots_dir, reports_dir = paths.need("metrics", "plots", "reports")
    manifest = read_manifest(prepared_dir)
    transform = base_transform(params, load_norm_stats(model_dir))
    datasets = make_datasets(params, prepared_dir, transform, for_training=False)
    model = load_model_weights(build_model(params, prepared_dir), model_dir / "best.ckpt")
    dm = CutoutDataModule(datasets, params.training.batch_size, params.seed)
    rng = np.random.default_rng(params.seed)
    train_true = read_log_age(prepared_dir, "train")
    phot_pred = photometric_baseline(prepared_dir, params.seed, "aperture")
    upper = (photometric_baseline(prepared_dir, params.seed, "catalogue")
             if has_catalogue_magnitudes(prepared_dir) else None)  # fmt: skip
    metrics: dict[str, float] = {}
    rows, preds = [], {}
    for split in SPLITS:
        out = predict(model, dm.loader(split))
        order = np.argsort(out["row"])
        pred = unscale_target(out["prediction"][order], manifest)
        true = read_log_age(prepared_dir, split)
        preds[split] = (pred, true)
        subsets = _subsets(true) if split == "test" else {split: np.ones(len(true), bool)}
        for name, sel in subsets.items():
            if not sel.any():
                continue
            metrics.update(_block(name, pred[sel], true[sel]))
            n = int(sel.sum())
            const = {
                "mean": np.full(n, train_true.mean()),
                "median": np.full(n, np.median(train_true)),
                "photometric": phot_pred[split][sel],
            }
            if upper is not None:
                const["photometric_catalogue"] = upper[split][sel]
            for b, p in const.items():
                metrics.update(_block(f"baseline/{b}/{name}", p, true[sel]))
            draws = [
                age_metrics(rng.choice(train_true, n), true[sel])
                for _ in range(params.evaluate.random_baseline_draws)
            ]
            for k in draws[0]:
                metrics[f"baseline/random/{name}/{k}_{Q}"] = float(np.mean([d[k] for d in draws]))
        with open_shard(prepared_dir / f"{split}.h5", require=("cluster_id", "galaxy_id")) as f:
            ids, gal = f.read("cluster_id"), f.read("galaxy_id")
        rows.append(
            pd.DataFrame({
                "split": split, "cluster_id": ids, "galaxy_id": gal, "log_age_true": true,
                "log_age_pred": pred, "log_age_photometric": phot_pred[split],
            } | ({"log_age_photometric_catalogue": upper[split]} if upper is not None else {}))
        )  # fmt: skip
    base = metrics["baseline/mean/test/mdae_log_age"]
    metrics["test/mdae_log_age_over_mean_baseline"] = metrics["test/mdae_log_age"] / base
    phot = metrics["baseline/photometric/test/mdae_log_age"]
    metrics["test/mdae_log_age_over_photometric"] = metrics["test/mdae_log_age"] / phot
    metrics["n_train"] = int(manifest["counts"]["train"])
    metrics.update(real_metrics(params, train_true))
    _plots(params, prepared_dir, live_dir, plots_dir, preds, datasets, transform)
    predictions = pd.concat(rows, ignore_index=True)
    write_evaluation(
        metrics, metrics_path, reports_dir,
        {"predictions.parquet": predictions, "predictions.ecsv": predictions,
         # the `dvc plots` scatter (dvc.yaml): the test split
         "pred_vs_true.csv": pd.DataFrame({"true_log_age": preds["test"][1],
                                           "predicted_log_age": preds["test"][0]})},
        headline=HEADLINE,
        units={c: "dex(yr)" for c in ("log_age_true", "log_age_pred", "log_age_photometric",
                                      "log_age_photometric_catalogue")},
    )  # fmt: skip
    return metrics


def _plots(params, prepared_dir, live_dir, plots_dir, preds, datasets, transform) -> None:
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    curves = plots.read_dvclive_curves(Path(live_dir), ("train/loss", "val/loss"))
    if curves:
        plots.loss_curves(curves, plots_dir / "loss_curves.png", ylabel=params.training.loss)
    plots.pred_vs_true_panels(
        {s: (p, t) for s, (p, t) in preds.items()}, plots_dir / "pred_vs_true.png",
        "log age [dex, yr]",
    )  # fmt: skip
    ds = datasets["train"]
    n = min(len(ds), 256)
    x = transform(ds.read(np.arange(n)))
    bands = read_manifest(prepared_dir)["bands"] if params.model.input == "5im" else ["white"]
    plots.histograms(
        {b: x[:, i].ravel() for i, b in enumerate(bands)}, plots_dir / "input_hist.png",
        "normalised pixel value", log=True,
    )  # fmt: skip
    plots.histograms(
        {f"{s} predicted": p for s, (p, _) in preds.items()} | {"train true": preds["train"][1]},
        plots_dir / "output_hist.png", "log age [dex, yr]",
    )  # fmt: skip
    k = min(params.evaluate.n_examples, len(ds))
    raw = ds.read(np.arange(k))
    keep = keep_mask(raw.shape[-1], params.mask.type, params.mask.radius)
    plots.cutout_examples(
        raw, transform(raw), preds["train"][1][:k], params.mask.radius
        if params.mask.type != "none" else 0.0, keep, plots_dir / "example_cutouts.png",
    )  # fmt: skip
