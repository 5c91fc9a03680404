"""morphology evaluate: vote-fraction metrics in and out of distribution, baselines, plots.

Models: ``full`` (the fine-tuned backbone + head, ``models/morphology/full``) and
``head_only`` (the frozen-backbone stage, ``models/morphology/head``), and the per-answer
train-mean baseline (the vote-weighted mean fraction of each answer over the training
galaxies that were asked). Sets: ``test`` (in distribution: the training surveys' test
split), ``ood_<survey>`` (each held-out survey) and ``real`` (the real galaxies: the
sim-to-real case), scored from the predictions table that ``astrobatch morphology predict``
wrote (``evaluate.real_predictions``: its ``<answer>`` and ``<answer>_reference`` columns,
:func:`real_from_table`; no ``head_only/real`` metrics, as predict runs the full model only).

Metrics (:func:`astrobatch.evaluate.metrics.fraction_metrics` over the answers a galaxy
was asked, by at least ``evaluate.min_asked_share`` of its volunteers: :func:`counted`):
per answer ``<set>/<answer>/{r,r2,r_squared,mae,mse}`` and overall
``<set>/{r,r2,r_squared,mae,mse}`` (all counted (galaxy, answer) pairs pooled);
``head_only/<set>/...`` and ``baseline/train_mean/<set>/...`` the same for the other
models; ``<set>/degradation/<m>`` = OOD minus in-distribution value of every metric
(``mse``, ``mae``: positive is worse; ``r``, ``r2``, ``r_squared``: negative is worse);
``test/answers_beating_baseline`` (answers whose test MSE is below the baseline's, of
``n_answers``); with the Dirichlet loss ``<set>/coverage_68`` (and per answer
``<set>/<answer>/coverage_68``), the share of counted answers whose observed fraction lies
in the 68% predictive interval (beta-binomial marginal of the Dirichlet-multinomial).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.data.images import open_shard
from astrobatch.evaluate import plots
from astrobatch.evaluate.metrics import fraction_metrics
from astrobatch.io.atomic import read_manifest
from astrobatch.studies.morphology.params import MorphologyParams
from astrobatch.studies.morphology.predict import predict_batches
from astrobatch.studies.morphology.train import VoteTask, image_datasets, image_transform, load_task
from astrobatch.study import StudyPaths, staged_outputs, write_evaluation
from astrobatch.tasks.votes import interval_coverage, predictive_interval

log = logging.getLogger(__name__)
KEYS = ("r", "r2", "r_squared", "mae", "mse")
#: The set name of the real galaxies' metrics (``real/r``, ``real/mae``, ...).
REAL = "real"


def headline(manifest: dict, loss: str) -> list[str]:
    """The headline metric names for a prepared set list (at most 12).

    The in-distribution test MSE of the full and head-only models and of the baseline,
    r and the answers beating the baseline; the first held-out survey's MSE (and its
    baseline's), degradation and r; the real galaxies' r and MAE; the 68% coverage with
    the Dirichlet loss.
    """
    ood = [s for s in manifest["sets"] if s.startswith("ood_")][:1]
    keys = ["test/mse", "head_only/test/mse", "baseline/train_mean/test/mse", "test/r",
            "test/answers_beating_baseline"]  # fmt: skip
    for s in ood:
        keys += [f"{s}/mse", f"baseline/train_mean/{s}/mse", f"{s}/degradation/mse", f"{s}/r"]
    keys += ["real/r", "real/mae"]
    if loss == "dirichlet":
        keys.append("test/coverage_68")
    return keys


def predict_set(task: VoteTask, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted fractions and raw outputs (concentrations for Dirichlet), each (n, A).

    The batches of a prepared set through :func:`.predict.predict_batches`.
    """
    batches = (dataset.__getitems__(list(range(a, min(a + batch_size, len(dataset)))))["x"]
               for a in range(0, len(dataset), batch_size))  # fmt: skip
    return predict_batches(task, batches)


def real_from_table(path: str | Path | None, answers: list[str], qindex: np.ndarray
                    ) -> tuple[np.ndarray, ...] | None:  # fmt: skip
    """Predictions and targets of the real galaxies from a ``morphology predict`` table.

    Parameters
    ----------
    path : str or pathlib.Path or None
        ECSV or FITS table (``evaluate.real_predictions``). Empty, None or a missing file:
        None (logged at INFO: no real-data metrics).
    answers : list of str
        The prepared schema's answers (A).
    qindex : numpy.ndarray, shape (A,), int
        Question of each answer.

    Returns
    -------
    (pred, targets, votes, ids, surveys) or None
        ``pred`` float64 (n, A), the table's ``<answer>`` columns (0 where absent);
        ``targets`` float64 (n, 3, A) as the prepared shards hold them: fractions (the
        ``<answer>_reference`` columns, NaN -> 0), counts (0: the table has none) and
        weights (the question's ``<question>_votes`` where the table has them, else 1,
        and 0 where the reference or the prediction is missing); ``votes`` float64
        (n, A), the question's votes of each answer (NaN: not in the table); ``ids``
        (``galaxy_id``) and ``surveys`` (``survey``, else ``real``) str (n,). None as
        above, or when no answer has both columns.

    Raises
    ------
    InputError
        A file that is not a readable table.
    """
    from astrobatch.io.predictions import read_predictions

    t = read_predictions(path)  # None (logged) when unset or not written yet
    if t is None:
        return None
    n, a = len(t), len(answers)
    pred = np.zeros((n, a))
    targets = np.zeros((n, 3, a))
    votes = np.full((n, a), np.nan)
    used = 0
    for j, name in enumerate(answers):
        if name not in t.colnames or f"{name}_reference" not in t.colnames:
            continue
        p = np.asarray(t[name], np.float64)
        ref = np.asarray(t[f"{name}_reference"], np.float64)
        q = name.split("_", 1)[0]
        if f"{q}_votes" in t.colnames:
            votes[:, j] = w = np.asarray(t[f"{q}_votes"], np.float64)
        else:
            w = np.ones(n)
        ok = np.isfinite(p) & np.isfinite(ref) & np.isfinite(w)
        pred[:, j] = np.where(ok, p, 0.0)
        targets[:, 0, j] = np.where(ok, ref, 0.0)
        targets[:, 2, j] = np.where(ok, w, 0.0)
        used += 1
    if not used:
        log.info("%s: no <answer> with <answer>_reference column of the schema: no real-data "
                 "metrics", path)  # fmt: skip
        return None
    ids = np.asarray(t["galaxy_id"]).astype(str) if "galaxy_id" in t.colnames \
        else np.arange(n).astype(str)  # fmt: skip
    surveys = np.asarray(t["survey"]).astype(str) if "survey" in t.colnames \
        else np.full(n, "real")  # fmt: skip
    log.info("real: %d galaxies, %d answers from %s", n, used, path)
    return pred, targets, votes, ids, surveys


def counted(targets: np.ndarray, min_asked_share: float) -> np.ndarray:
    """Which (galaxy, answer) pairs the metrics count, bool (n, A).

    An answer counts when its question was asked (weight > 0) and, for vote counts, of at
    least ``min_asked_share`` of the galaxy's volunteers (its question's votes over the most
    votes of any question, the first one): a fraction from two votes down the tree is mostly
    noise. Walmsley et al. (2022, arXiv:2102.08414) evaluate GZ DECaLS questions on the
    galaxies where at least half the volunteers were asked. Fraction-only rows (weight 1)
    count wherever a fraction is given.
    """
    w = targets[:, 2].astype(float)
    top = np.maximum(w.max(axis=1, keepdims=True), 1e-12)
    return (w > 0) & (w >= min_asked_share * top)


def set_metrics(prefix: str, pred: np.ndarray, targets: np.ndarray, answers: list[str],
                keep: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Overall and per-answer metrics of predictions ``(n, A)`` against targets ``(n, 3, A)``.

    Only the pairs ``keep`` (:func:`counted`) count; answers with fewer than 2 galaxies
    are skipped.
    """
    frac = targets[:, 0].astype(float)
    out = {f"{prefix}/{k}": v for k, v in fraction_metrics(pred[keep], frac[keep]).items()
           if k in KEYS}  # fmt: skip
    for j, name in enumerate(answers):
        sel = keep[:, j]
        if sel.sum() >= 2:
            m = fraction_metrics(pred[sel, j], frac[sel, j])
            out.update({f"{prefix}/{name}/{k}": m[k] for k in KEYS})
    return out


def train_mean(targets: np.ndarray) -> np.ndarray:
    """Vote-weighted mean fraction of each answer over the asked training galaxies, (A,)."""
    frac, w = targets[:, 0].astype(float), targets[:, 2].astype(float)
    tot = w.sum(0)
    return np.where(tot > 0, (frac * w).sum(0) / np.maximum(tot, 1e-12), 0.0)


@staged_outputs("plots", "reports", "metrics")
def evaluate(params: MorphologyParams, paths: StudyPaths) -> dict[str, float]:
    """Evaluate the full and head-only models and the baseline on every prepared set.

    Parameters
    ----------
    params : MorphologyParams
    paths : StudyPaths
        Reads ``prepared``, ``pretrained`` (head stage), ``models`` (full stage),
        ``live`` and the real galaxies' predictions table ``evaluate.real_predictions``
        (:func:`real_from_table`); writes ``plots``, ``reports`` (``predictions.parquet``,
        ``pred_vs_true.csv``) and, last, ``metrics``.

    Returns
    -------
    dict
        Flat metrics (module docstring).

    Raises
    ------
    InputError
        Missing prepared data or checkpoints, or checkpoints that do not match params.
    """
    prepared_dir, model_dir, head_dir = paths.need("prepared", "models", "pretrained")
    metrics_path, plots_dir, reports_dir = paths.need("metrics", "plots", "reports")
    manifest = read_manifest(prepared_dir, require=("answers", "sets", "question_index"))
    answers = list(manifest["answers"])
    qindex = np.asarray(manifest["question_index"])
    full = load_task(params, manifest, model_dir)
    head = load_task(params, manifest, head_dir)
    # a prepared folder of an older prepare may still hold a `real` set: scored from the
    # predictions table below instead
    names = ["train", *[s for s in manifest["sets"] if s not in ("train", REAL)]]
    data = image_datasets(params, Path(prepared_dir), image_transform(full.model), names)
    base = train_mean(data["train"].targets)
    bs = max(params.full.batch_size, 64)
    metrics: dict[str, float] = {}
    rows, preds = [], {}
    for name in names[1:]:
        ds = data[name]
        y = ds.targets
        pf, raw = predict_set(full, ds, bs)
        ph, _ = predict_set(head, ds, bs)
        preds[name] = (pf, ph, y)
        keep = counted(y, params.evaluate.min_asked_share)
        metrics.update(set_metrics(name, pf, y, answers, keep))
        metrics.update(set_metrics(f"head_only/{name}", ph, y, answers, keep))
        metrics.update(set_metrics(f"baseline/train_mean/{name}", np.tile(base, (len(y), 1)),
                                   y, answers, keep))  # fmt: skip
        if params.loss == "dirichlet" and (y[:, 1] > 0).any():
            totals = _question_totals(y[:, 1], qindex)
            lo, hi = predictive_interval(raw, totals, qindex, params.evaluate.interval)
            ok = keep & (totals > 0)
            metrics[f"{name}/coverage_68"] = float(interval_coverage(lo, hi, y[:, 0], ok))
            for j, a in enumerate(answers):
                if ok[:, j].sum() >= 2:
                    metrics[f"{name}/{a}/coverage_68"] = float(interval_coverage(
                        lo[:, j], hi[:, j], y[:, 0, j], ok[:, j]))  # fmt: skip
        with open_shard(Path(prepared_dir) / f"{name}.h5", require=("galaxy_id", "survey")) as f:
            ids, surveys = f.read("galaxy_id"), f.read("survey")
        votes = _question_totals(y[:, 1], qindex)
        for j, a in enumerate(answers):
            sel = keep[:, j]
            if sel.any():
                rows.append(pd.DataFrame({
                    "set": name, "galaxy_id": ids[sel], "survey": surveys[sel], "answer": a,
                    "fraction_true": y[sel, 0, j], "fraction_pred": pf[sel, j],
                    "fraction_pred_head_only": ph[sel, j], "question_votes": votes[sel, j],
                }))  # fmt: skip
    real = real_from_table(params.evaluate.real_predictions, answers, qindex)
    if real is not None:
        pf, y, votes, ids, surveys = real
        preds[REAL] = (pf, np.full_like(pf, np.nan), y)
        keep = counted(y, params.evaluate.min_asked_share)
        metrics.update(set_metrics(REAL, pf, y, answers, keep))
        metrics.update(set_metrics(f"baseline/train_mean/{REAL}", np.tile(base, (len(y), 1)),
                                   y, answers, keep))  # fmt: skip
        for j, a in enumerate(answers):
            sel = keep[:, j]
            if sel.any():
                rows.append(pd.DataFrame({
                    "set": REAL, "galaxy_id": ids[sel], "survey": surveys[sel], "answer": a,
                    "fraction_true": y[sel, 0, j], "fraction_pred": pf[sel, j],
                    "fraction_pred_head_only": np.nan, "question_votes": votes[sel, j],
                }))  # fmt: skip
    for name in names[1:]:
        if name.startswith("ood_") and "test/mse" in metrics:
            for k in KEYS:  # OOD minus in distribution: + is worse for mse, mae; - for r, r2
                for pre in ("", "head_only/"):
                    metrics[f"{pre}{name}/degradation/{k}"] = (
                        metrics[f"{pre}{name}/{k}"] - metrics[f"{pre}test/{k}"]
                    )
    beats = [metrics[f"test/{a}/mse"] < metrics[f"baseline/train_mean/test/{a}/mse"]
             for a in answers if f"test/{a}/mse" in metrics]  # fmt: skip
    metrics["test/answers_beating_baseline"] = int(sum(beats))
    metrics["head_only/test/answers_beating_baseline"] = int(sum(
        metrics[f"head_only/test/{a}/mse"] < metrics[f"baseline/train_mean/test/{a}/mse"]
        for a in answers if f"head_only/test/{a}/mse" in metrics
    ))  # fmt: skip
    metrics["n_answers"] = len(beats)
    metrics["n_train"] = int(manifest["counts"]["train"])
    _plots(params, paths, plots_dir, data, preds, answers, metrics)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    test = table[table["set"] == "test"] if len(table) else table
    write_evaluation(
        metrics, metrics_path, reports_dir,
        {"predictions.parquet": table,
         "pred_vs_true.csv": pd.DataFrame({"true_fraction": test.get("fraction_true", []),
                                           "predicted_fraction": test.get("fraction_pred", [])})},
        headline=headline(manifest, params.loss),
    )  # fmt: skip
    return metrics


def _question_totals(counts: np.ndarray, qindex: np.ndarray) -> np.ndarray:
    """Total votes of each answer's question, (n, A)."""
    q = int(qindex.max()) + 1
    tot = np.zeros((len(counts), q))
    np.add.at(tot.T, qindex, counts.T)
    return tot[:, qindex]


def _plots(params, paths: StudyPaths, plots_dir, data, preds, answers, metrics) -> None:
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    live = paths.live
    if live is not None:
        curves = plots.read_dvclive_curves(Path(live), ("train/loss", "val/loss"))
        if curves:
            plots.loss_curves(curves, plots_dir / "loss_curves_full.png", ylabel=params.loss)
    for name in preds:
        bars = {
            "full": {a: metrics.get(f"{name}/{a}/r", np.nan) for a in answers},
            "head only": {a: metrics.get(f"head_only/{name}/{a}/r", np.nan) for a in answers},
        }
        plots.grouped_bars(bars, plots_dir / f"answer_r_{name}.png", "Pearson r",
                           f"{name}: per-answer r of the vote fractions")  # fmt: skip
    sets = {name: {a: metrics.get(f"{name}/{a}/r", np.nan) for a in answers} for name in preds}
    plots.grouped_bars(sets, plots_dir / "answer_r_by_set.png", "Pearson r",
                       "full model: per-answer r, in distribution vs held out")  # fmt: skip
    panels = {}
    for name, (pf, _, y) in preds.items():
        keep = counted(y, params.evaluate.min_asked_share)
        panels[name] = (pf[keep], y[:, 0][keep])
    plots.pred_vs_true_panels(panels, plots_dir / "pred_vs_true.png", "vote fraction")
    # examples: images with their votes (first question) against the prediction
    name = "test"
    ds = data[name]
    pf, _, y = preds[name]
    k = min(params.evaluate.n_examples, len(ds))
    raw = ds.read(np.arange(k))
    first = [j for j, a in enumerate(answers) if a.startswith(answers[0].split("_", 1)[0] + "_")]
    fig, axes = plt.subplots(2, k, figsize=(2.0 * k, 4.2), squeeze=False)
    for i in range(k):
        axes[0][i].imshow(np.transpose(raw[i], (1, 2, 0)))
        axes[0][i].set_axis_off()
        ax = axes[1][i]
        xs = np.arange(len(first))
        ax.bar(xs - 0.2, y[i, 0, first], 0.4, label="volunteers")
        ax.bar(xs + 0.2, pf[i, first], 0.4, label="model")
        ax.set_xticks(xs, [answers[j].split("_", 1)[1][:8] for j in first], rotation=60,
                      fontsize=6)  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_title(f"{int(y[i, 2, first[0]])} votes", fontsize=7)
    axes[1][0].legend(fontsize=6)
    fig.suptitle(f"{answers[0].split('_', 1)[0]}: test galaxies, vote fractions")
    plots.save_figure(fig, plots_dir / "examples.png")
