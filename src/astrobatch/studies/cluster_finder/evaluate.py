"""cluster_finder evaluate: classifier, detector and member-set models against baselines.

Metrics (test split; :data:`HEADLINE` go to ``metrics/cluster_finder.json``, everything to
``reports/cluster_finder/metrics_full.json``):

- ``classifier/{accuracy,roc_auc,precision,recall}`` at probability 0.5 (scikit-learn).
- ``detector/{completeness,purity}`` at ``detection.score_threshold`` (``"val"``, the
  default: the threshold where min(completeness, purity) is largest on the validation images,
  reported as ``detector/score_threshold``): detections matched
  one-to-one to true boxes at IoU >= ``detection.match_iou``
  (:func:`astrobatch.evaluate.detection.completeness_purity`); completeness over the truths
  with richness >= ``detection.min_richness`` and z <= ``detection.z_max`` (0.35: the
  volume-limited range of redMaPPer on SDSS DR8, Rykoff et al. 2014, arXiv:1303.3562;
  secondary clusters in a cutout reach z ~ 0.6, where SDSS sees few members;
  ``detector/completeness_rich`` counts every z); purity over every detection above the
  threshold, those on empty fields included (a detection matched to any true cluster is not
  a false positive); ``detector/false_positives_empty`` (per empty field); ``detector/ap50``
  (pycocotools AP at IoU 0.5); completeness per redshift and richness bin in the report.
  The seed counted boxes per image without matching; we match boxes.
- ``redshift/{bias,sigma_nmad,outlier_fraction}`` of ``Δz / (1 + z)``
  (:func:`astrobatch.evaluate.metrics.redshift_metrics`), ``richness/{bias_dex,scatter_dex,
  nmad_dex}`` of ``log10 λ_pred / λ_true`` and ``richness/mass_scatter_dex`` (the mass
  proxy M = 10^14.344 (λ/40)^1.33 Msun scales it by 1.33); the same under
  ``baseline/train_median/`` and ``baseline/gradient_boosting/``.
- ``real/{redshift,richness}_{pred,redmapper}``, ``real/n_members`` and ``real/n_clusters``
  from the predictions table of the real clusters (``evaluate.real_predictions``, written by
  ``astrobatch cluster-finder predict``, the ``cluster_finder_predict`` stage;
  :func:`~astrobatch.studies.cluster_finder.predict.real_metrics`: with several clusters
  ``real/redshift/*`` and ``real/richness/*`` instead); none when the path is null or the
  file absent. ``reference/z_lambda_sigma_nmad``: redMaPPer's own Z_LAMBDA against
  BCG_SPEC_Z on the real 412-cluster table (the scatter a member-based redshift can reach).
"""

from __future__ import annotations

import logging
from itertools import pairwise
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from astrobatch.evaluate import plots
from astrobatch.evaluate.detection import (
    CompletenessPurity,
    average_precision,
    completeness_purity,
)
from astrobatch.evaluate.metrics import log_ratio_metrics, redshift_metrics
from astrobatch.io.shards import open_shard
from astrobatch.studies.cluster_finder.catalogues import read_clusters
from astrobatch.studies.cluster_finder.detect import (
    detect_images,
    load_classifier,
    load_detector,
    predict_images,
)
from astrobatch.studies.cluster_finder.geometry import mass_proxy
from astrobatch.studies.cluster_finder.members import (
    baselines,
    load_members_model,
    predict_sets,
)
from astrobatch.studies.cluster_finder.params import ClusterFinderParams
from astrobatch.studies.cluster_finder.predict import real_metrics
from astrobatch.study import StudyPaths, staged_outputs, write_evaluation

log = logging.getLogger(__name__)
#: Metrics shown by ``dvc exp show`` (at most 12).
HEADLINE = (
    "classifier/accuracy", "classifier/roc_auc", "detector/completeness", "detector/purity",
    "detector/ap50", "redshift/sigma_nmad", "redshift/outlier_fraction",
    "baseline/gradient_boosting/redshift/sigma_nmad", "richness/scatter_dex",
    "baseline/gradient_boosting/richness/scatter_dex", "real/redshift_pred",
    "real/richness_pred",
)  # fmt: skip
#: Score thresholds of the completeness / purity curves.
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)
#: |Δz/(1+z)| above which a redshift is an outlier.
OUTLIER = 0.05


def _truths(shard: Path) -> tuple[list[np.ndarray], pd.DataFrame, np.ndarray]:
    with open_shard(shard) as r:
        ptr, xyxy = r.ptr("boxes"), r.read("boxes/xyxy")
        meta = pd.DataFrame({k: r.read(f"boxes/{k}") for k in ("cluster_id", "z", "richness")})
        label = r.read("label")
    boxes = [xyxy[a:b] for a, b in pairwise(ptr)]
    meta["image"] = np.repeat(np.arange(len(boxes)), np.diff(ptr))
    return boxes, meta, label


def classifier_metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Accuracy, ROC AUC, precision and recall of probabilities at 0.5 (scikit-learn).

    Parameters
    ----------
    prob : numpy.ndarray, shape (n,), float
        Predicted cluster probabilities.
    label : numpy.ndarray, shape (n,)
        1 = cluster image, 0 = empty field.

    Returns
    -------
    dict of str to float
        ``accuracy``, ``roc_auc`` (NaN with a single class), ``precision``, ``recall``
        (0 when undefined).
    """
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    pred = (prob >= 0.5).astype(int)
    y = label.astype(int)
    two = len(np.unique(y)) == 2
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, prob)) if two else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
    }


def _detect(detector, shard: Path, params: ClusterFinderParams) -> list:
    """Detections of one image shard down to the lowest threshold of :data:`THRESHOLDS`."""
    return detect_images(detector, shard, score_threshold=float(THRESHOLDS[0]),
                         iou_threshold=params.detection.iou_threshold)  # fmt: skip


def _triples(dets: list, truths: list[np.ndarray]) -> list[tuple]:
    """``(pred_boxes, pred_scores, true_boxes)`` per image, the matching functions' input."""
    return [(b, s, t) for (b, s), t in zip(dets, truths, strict=True)]


def counted_truths(meta: pd.DataFrame, params: ClusterFinderParams) -> np.ndarray:
    """Mask of the truths counted in completeness: ``λ >= min_richness`` and ``z <= z_max``.

    Parameters
    ----------
    meta : pandas.DataFrame
        One row per true box, with ``richness`` and ``z``.
    params : ClusterFinderParams
        Reads ``detection.min_richness`` and ``detection.z_max`` (None: every z).

    Returns
    -------
    numpy.ndarray, shape (len(meta),), bool
    """
    d = params.detection
    keep = meta["richness"].to_numpy() >= d.min_richness
    if d.z_max is not None:
        keep &= meta["z"].to_numpy() <= d.z_max
    return keep


def detection_curve(
    dets: list, truths: list[np.ndarray], meta: pd.DataFrame, label, params: ClusterFinderParams,
    thresholds=THRESHOLDS,
) -> tuple[pd.DataFrame, CompletenessPurity]:  # fmt: skip
    """Completeness (of :func:`counted_truths`), purity and empty-field FPs per threshold.

    Parameters
    ----------
    dets : list of (numpy.ndarray (K, 4), numpy.ndarray (K,))
        Detections per image (:func:`~astrobatch.studies.cluster_finder.detect.detect_images`
        at a threshold at or below the lowest of ``thresholds``).
    truths : list of numpy.ndarray, shape (N, 4)
        True boxes per image, pixels.
    meta : pandas.DataFrame
        One row per true box (``richness``, ``z``), in image order.
    label : array-like, shape (n_images,)
        1 = cluster image, 0 = empty field.
    params : ClusterFinderParams
    thresholds : array-like of float, shape (T,)

    Returns
    -------
    table : pandas.DataFrame
        One row per threshold: ``threshold``, ``completeness``, ``purity``,
        ``false_positives_per_empty_field`` and the counts.
    cp : astrobatch.evaluate.detection.CompletenessPurity
        The matching (``detected`` per truth and threshold, ``truth_score``).
    """
    cp = completeness_purity(_triples(dets, truths), np.asarray(thresholds, float),
                             params.detection.match_iou)  # fmt: skip
    counted = counted_truths(meta, params)
    table = cp.table.copy()
    table["completeness"] = (cp.detected[counted].mean(axis=0) if counted.any()
                             else np.full(len(table), np.nan))  # fmt: skip
    n_empty = max(int((np.asarray(label) == 0).sum()), 1)
    table["false_positives_per_empty_field"] = table["n_false_positive_empty"] / n_empty
    return table, cp


def balanced_threshold(table: pd.DataFrame) -> float:
    """The threshold of a curve where ``min(completeness, purity)`` is largest.

    Ties go to the lowest threshold (the most complete); undefined rows (NaN) are skipped.

    Parameters
    ----------
    table : pandas.DataFrame
        With ``threshold``, ``completeness`` and ``purity`` (:func:`detection_curve`).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If no row has both values.
    """
    worst = np.fmin(table["completeness"].to_numpy(float), table["purity"].to_numpy(float))
    if np.isnan(worst).all():
        raise ValueError("no threshold with both completeness and purity defined")
    return float(table["threshold"].to_numpy()[int(np.nanargmax(worst))])


def detector_metrics(
    dets: list, truths: list[np.ndarray], meta: pd.DataFrame, label, params: ClusterFinderParams,
    score_threshold: float,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Completeness, purity, AP@0.5 and the curves at a score threshold (module docstring).

    Parameters
    ----------
    dets, truths, meta, label, params
        As :func:`detection_curve`.
    score_threshold : float
        In [0, 1] (the resolved ``detection.score_threshold``).

    Returns
    -------
    metrics : dict
        ``completeness`` (counted truths), ``purity``, ``completeness_all`` (every truth),
        ``completeness_rich`` (``λ >= min_richness``, any z), ``false_positives_empty``,
        ``ap50``, ``n_truths`` (counted), ``score_threshold``.
    curve : pandas.DataFrame
        Per threshold (:func:`detection_curve`).
    per_truth : pandas.DataFrame
        ``meta`` plus ``counted``, ``detected`` at the score threshold and the matched score.
    """
    d = params.detection
    thresholds = np.union1d(THRESHOLDS, [score_threshold])
    table, cp = detection_curve(dets, truths, meta, label, params, thresholds)
    counted = counted_truths(meta, params)
    at = int(np.argmin(np.abs(thresholds - score_threshold)))
    per_truth = meta.copy()
    per_truth["counted"] = counted
    per_truth["detected"] = cp.detected[:, at]
    per_truth["score"] = cp.truth_score
    row = table.iloc[at]
    rich = meta["richness"].to_numpy() >= d.min_richness
    m = {
        "completeness": float(row["completeness"]),
        "purity": float(row["purity"]),
        "completeness_all": float(cp.detected[:, at].mean()) if len(meta) else float("nan"),
        "completeness_rich": float(cp.detected[rich, at].mean()) if rich.any() else float("nan"),
        "false_positives_empty": float(row["false_positives_per_empty_field"]),
        "ap50": float(average_precision(_triples(dets, truths), iou_threshold=0.5)),
        "n_truths": int(counted.sum()),
        "score_threshold": float(score_threshold),
    }
    return m, table, per_truth


def _prefixed(prefix: str, m: dict) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in m.items()}


def member_metrics(params: ClusterFinderParams, prepared: Path, models: Path
                   ) -> tuple[dict, pd.DataFrame]:  # fmt: skip
    """Redshift and richness metrics of the set models and baselines; the prediction table.

    Parameters
    ----------
    params : ClusterFinderParams
    prepared, models : pathlib.Path
        The prepared folder (``members_{redshift,richness}/``) and the models folder
        (``redshift/``, ``richness/``).

    Returns
    -------
    metrics : dict of str to float
        ``redshift/*`` (:func:`~astrobatch.evaluate.metrics.redshift_metrics`),
        ``richness/*`` (:func:`~astrobatch.evaluate.metrics.log_ratio_metrics`, dex, plus
        ``mass_scatter_dex``), the same under ``baseline/<name>/``.
    table : pandas.DataFrame
        One row per test set and target: ``target, cluster_id, n_members, true``,
        ``pred_model``, ``pred_train_median``, ``pred_gradient_boosting``.

    Raises
    ------
    InputError
        Missing shards or checkpoints.
    """
    metrics, frames = {}, []
    for which in ("redshift", "richness"):
        folder = prepared / f"members_{which}"
        spec = getattr(params, which)
        model = load_members_model(spec, folder, models / which)
        test = predict_sets(model, folder, "test", spec.sampling, params.seed)
        base = baselines(folder, "test", params.seed)
        preds = {"model": test["prediction"], **base}
        for name, pred in preds.items():
            pre = which if name == "model" else f"baseline/{name}/{which}"
            if which == "redshift":
                metrics.update(_prefixed(pre, redshift_metrics(pred, test["target"], OUTLIER)))
            else:
                m = log_ratio_metrics(np.maximum(pred, 1e-3), test["target"])
                m["mass_scatter_dex"] = float(np.std(np.log10(
                    mass_proxy(np.maximum(pred, 1e-3)) / mass_proxy(test["target"]))))  # fmt: skip
                metrics.update(_prefixed(pre, m))
        frames.append(pd.DataFrame({
            "target": which, "cluster_id": test["cluster_id"], "n_members": test["n_members"],
            "true": test["target"], **{f"pred_{k}": v for k, v in preds.items()},
        }))  # fmt: skip
    return metrics, pd.concat(frames, ignore_index=True)


def read_real_predictions(path: str | None):
    """The predictions table of the real clusters (``evaluate.real_predictions``), or None.

    A null or empty path, or a missing file, means no real-data metrics (logged at INFO),
    not an error: the ``cluster_finder_predict`` stage writes the table after training.

    Parameters
    ----------
    path : str or None
        An ``.ecsv`` or ``.fits`` table of ``astrobatch cluster-finder predict``.

    Returns
    -------
    astropy.table.Table or None
        ``meta["path"]`` set to ``path``.

    Raises
    ------
    InputError
        A file that is not a readable table (or has another suffix).
    """
    from astrobatch.io.predictions import read_predictions

    table = read_predictions(path)
    if table is not None:
        table.meta["path"] = str(path)
    return table


def reference_scatter(path: str) -> dict[str, float]:
    """redMaPPer's own ``Δz/(1+z)`` of Z_LAMBDA against BCG_SPEC_Z (rows with a spec-z).

    Parameters
    ----------
    path : str
        A real cluster catalogue with ``Z_LAMBDA`` and ``BCG_SPEC_Z`` (-1 = none), e.g. the
        redmapper fixture ``redmapper_test_zlamcal_cat.fit``.

    Returns
    -------
    dict of str to float
        ``reference/z_lambda_sigma_nmad``, ``reference/z_lambda_bias``,
        ``reference/n_spec``; empty when no row has a spectrum.

    Raises
    ------
    InputError
        The reader's (missing file or column).
    """
    cl = read_clusters(path, require=("cluster_id", "z_lambda", "richness"))
    ok = np.isfinite(cl["z_spec"].to_numpy(float))
    if not ok.any():
        return {}
    m = redshift_metrics(cl["z_lambda"].to_numpy(float)[ok], cl["z_spec"].to_numpy(float)[ok],
                         OUTLIER)  # fmt: skip
    return {"reference/z_lambda_sigma_nmad": m["sigma_nmad"],
            "reference/z_lambda_bias": m["bias"], "reference/n_spec": m["n"]}  # fmt: skip


@staged_outputs("plots", "reports", "metrics")
def evaluate(params: ClusterFinderParams, paths: StudyPaths) -> dict[str, float]:
    """Evaluate every model of the study on the test split (module docstring).

    Parameters
    ----------
    params : ClusterFinderParams
    paths : StudyPaths
        Reads ``prepared`` and ``models`` (``classifier/``, ``detector/``, ``redshift/``,
        ``richness/``); writes ``plots``, ``reports`` and, last, ``metrics``.

    Returns
    -------
    dict
        Flat metrics.

    Raises
    ------
    InputError
        Missing prepared data or checkpoints.
    """
    prepared, models = paths.need("prepared", "models")
    metrics_path, plots_dir, reports_dir = paths.need("metrics", "plots", "reports")
    prepared, models = Path(prepared), Path(models)
    shard = prepared / "images_test.h5"
    truths, meta, label = _truths(shard)
    metrics: dict[str, float] = {}

    classifier = load_classifier(models / "classifier")
    prob = predict_images(classifier, shard)["probability"]
    metrics.update(_prefixed("classifier", classifier_metrics(prob, label)))

    detector = load_detector(models / "detector")
    threshold = params.detection.score_threshold
    if threshold == "val":  # chosen on the validation images, never on the test split
        val = prepared / "images_val.h5"
        curve_val, _ = detection_curve(_detect(detector, val, params), *_truths(val), params)
        threshold = balanced_threshold(curve_val)
    dets = _detect(detector, shard, params)
    m, curve, per_truth = detector_metrics(dets, truths, meta, label, params, threshold)
    metrics.update(_prefixed("detector", m))

    mm, members = member_metrics(params, prepared, models)
    metrics.update(mm)
    real = read_real_predictions(params.evaluate.real_predictions)
    if real is not None:
        metrics.update(real_metrics(real, OUTLIER))
    if params.data.reference_clusters:
        metrics.update(reference_scatter(params.data.reference_clusters))
    metrics["n_test_images"] = len(label)

    _plots(plots_dir, shard, dets, truths, curve, per_truth, members, params, threshold)
    write_evaluation(
        metrics, metrics_path, reports_dir,
        {"detection_curve.csv": curve, "truth_detection.csv": per_truth,
         "member_predictions.csv": members,
         "pred_vs_true.csv": members[members["target"] == "redshift"][["true", "pred_model"]]
         .rename(columns={"true": "true_redshift", "pred_model": "predicted_redshift"})},
        headline=[k for k in HEADLINE if k in metrics],
    )  # fmt: skip
    return metrics


def _binned(per_truth: pd.DataFrame, col: str, edges) -> tuple[np.ndarray, np.ndarray]:
    idx = np.digitize(per_truth[col].to_numpy(), edges) - 1
    c = [per_truth["detected"].to_numpy()[idx == i].mean() if (idx == i).any() else np.nan
         for i in range(len(edges) - 1)]  # fmt: skip
    return (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2, np.asarray(c, float)


def _plots(
    plots_dir: Path, shard: Path, dets, truths, curve, per_truth, members, params, threshold: float
) -> None:
    plots_dir = Path(plots_dir)
    fig, ax = plt.subplots(figsize=(5, 4))
    d = params.detection
    zcut = "" if d.z_max is None else f", z ≤ {d.z_max:g}"
    ax.plot(curve["threshold"], curve["completeness"],
            label=f"completeness (λ ≥ {d.min_richness:g}{zcut})")  # fmt: skip
    ax.plot(curve["threshold"], curve["purity"], label="purity")
    ax.axvline(threshold, color="k", lw=0.6, ls=":")
    ax.set_xlabel("score threshold")
    ax.set_ylabel(f"fraction (IoU ≥ {params.detection.match_iou:g})")
    ax.set_ylim(0, 1.02)
    ax.legend()
    plots.save_figure(fig, plots_dir / "completeness_purity.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    rich = per_truth["richness"] >= d.min_richness
    low_z = per_truth["z"] <= (np.inf if d.z_max is None else d.z_max)
    for ax, col, edges, lab, sel in (
        (axes[0], "z", np.linspace(0.05, 0.6, 8), f"redshift z (λ ≥ {d.min_richness:g})", rich),
        (
            axes[1],
            "richness",
            np.geomspace(5, 300, 8),
            "richness λ" if d.z_max is None else f"richness λ (z ≤ {d.z_max:g})",
            low_z,
        ),
    ):
        x, c = _binned(per_truth[sel], col, edges)
        ax.plot(x, c, "o-")
        if col == "z" and d.z_max is not None:
            ax.axvline(d.z_max, color="k", lw=0.6, ls=":")
        ax.set_xlabel(lab)
        ax.set_ylabel("completeness")
        ax.set_ylim(0, 1.05)
        if col == "richness":
            ax.set_xscale("log")
    plots.save_figure(fig, plots_dir / "completeness_vs_z_richness.png")

    z = members[members["target"] == "redshift"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for col, lab in (("pred_model", "set model"), ("pred_gradient_boosting", "gradient boosting")):
        ax.scatter(z["true"], (z[col] - z["true"]) / (1 + z["true"]), s=8, label=lab, alpha=0.7)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("true redshift z")
    ax.set_ylabel("Δz / (1 + z)")
    ax.legend()
    plots.save_figure(fig, plots_dir / "dz_vs_z.png")

    with open_shard(shard) as r:
        k = min(6, r.n_rows)
        imgs = r.read("images")[:k] if k else np.zeros((0, 3, 1, 1))
    if k:
        fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.4), squeeze=False)
        for i in range(k):
            ax = axes[0][i]
            ax.imshow(imgs[i].mean(axis=0), origin="lower", cmap="gray")
            for b, colour in [(t, "lime") for t in truths[i]] + [
                    (b, "red") for b, s in zip(*dets[i], strict=True)
                    if s >= threshold]:  # fmt: skip
                ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                           color=colour, lw=1))  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].set_title("true (green), detected (red)", fontsize=8, loc="left")
        plots.save_figure(fig, plots_dir / "examples.png")
