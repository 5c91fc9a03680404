"""Diagnostic plots (matplotlib, Agg backend), written atomically as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from astrobatch.io.atomic import atomic_path


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG (110 dpi) atomically, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def pred_vs_true(
    pred: np.ndarray, true: np.ndarray, path, label: str, per_set: tuple | None = None
) -> None:
    """Scatter of predictions against truth with the 1:1 line.

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (n,)
        Per-sample predictions and targets (same units, e.g. log10 Msun).
    path : str or pathlib.Path
        Output PNG.
    label : str
        Axis quantity with units.
    per_set : tuple of (true, mean, std), optional
        Per-set mean prediction and spread, drawn as error bars.
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=4, alpha=0.25, color="0.5", label="samples")
    if per_set is not None:
        t, m, s = per_set
        ax.errorbar(t, m, yerr=s, fmt="o", ms=3, color="C0", label="snapshot mean ± std")
    lo, hi = np.nanmin([true.min(), pred.min()]), np.nanmax([true.max(), pred.max()])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)


def residual_hist(residuals: dict[str, np.ndarray], path, label: str) -> None:
    """Histograms of residuals (pred - true), one per named model/baseline."""
    fig, ax = plt.subplots(figsize=(6, 4))
    allr = np.concatenate(list(residuals.values()))
    bins = np.linspace(np.percentile(allr, 0.5), np.percentile(allr, 99.5), 50)
    for name, r in residuals.items():
        ax.hist(r, bins=bins, histtype="step", lw=1.5, label=name, density=True)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"residual (predicted - true) {label}")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def loss_curves(curves: dict[str, pd.DataFrame], path, ylabel: str = "Huber loss") -> None:
    """Training curves: each frame has columns ``step`` and ``value``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, df in curves.items():
        ax.plot(df["step"], df["value"], marker="o", ms=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def read_dvclive_curves(
    live_dir: str | Path, names: tuple[str, ...] = ("train/loss", "val/loss")
) -> dict[str, pd.DataFrame]:
    """Curves logged by DVCLive (``<live_dir>/plots/metrics/<name>.tsv``).

    Returns
    -------
    dict of str to pandas.DataFrame
        For each curve found: columns ``step`` and ``value``.

    Raises
    ------
    astrobatch.errors.InputError
        A curve file that is not a DVCLive TSV (missing ``step`` or value column,
        unreadable text).
    """
    from astrobatch.io.errors import reading

    curves = {}
    for name in names:
        p = Path(live_dir) / "plots" / "metrics" / f"{name}.tsv"
        if p.is_file():
            col = name.split("/")[-1]
            with reading(p, "DVCLive curve (TSV with step and value columns)", col):
                df = pd.read_csv(p, sep="\t")
                curves[name] = df[["step", col]].set_axis(["step", "value"], axis=1)
    return curves


def pred_vs_true_panels(panels: dict[str, tuple[np.ndarray, np.ndarray]], path, label: str) -> None:
    """One predicted-vs-true scatter per named split, with the 1:1 line.

    Parameters
    ----------
    panels : dict of str to (pred, true)
        Arrays of shape (n,), same units.
    path : str or pathlib.Path
        Output PNG.
    label : str
        Quantity with units.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    allv = np.concatenate([np.concatenate(v) for v in panels.values()])
    lo, hi = np.nanmin(allv), np.nanmax(allv)
    for ax, (name, (pred, true)) in zip(axes[0], panels.items(), strict=True):
        ax.scatter(true, pred, s=5, alpha=0.4)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"{name} (n={len(true)})")
        ax.set_xlabel(f"true {label}")
    axes[0][0].set_ylabel(f"predicted {label}")
    save_figure(fig, path)


def histograms(series: dict[str, np.ndarray], path, label: str, log: bool = False) -> None:
    """Step histograms of named arrays on common bins (inputs or outputs of a model)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    allv = np.concatenate([np.ravel(v) for v in series.values()])
    allv = allv[np.isfinite(allv)]
    bins = np.linspace(allv.min(), allv.max() if allv.max() > allv.min() else allv.min() + 1, 60)
    for name, v in series.items():
        v = np.ravel(v)
        ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", lw=1.4, label=name, density=True)
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def cutout_examples(
    raw: np.ndarray,
    model_input: np.ndarray,
    log_age: np.ndarray,
    radius: float,
    keep: np.ndarray,
    path,
) -> None:
    """Example cutouts: raw colour-stretched image and model input, mask circle drawn.

    Parameters
    ----------
    raw : numpy.ndarray, shape (k, C, S, S)
        Raw cutouts (before mask), counts/s per pixel.
    model_input : numpy.ndarray, shape (k, C', S, S)
        What the model sees (masked, normalised).
    log_age : numpy.ndarray, shape (k,)
    radius : float
        Mask radius R, pixels (0: no circle).
    keep : numpy.ndarray, shape (S, S), bool
        Kept pixels of the mask.
    path : str or pathlib.Path
    """
    k = len(raw)
    fig, axes = plt.subplots(2, k, figsize=(2 * k, 4.2), squeeze=False)
    c = raw.shape[-1] // 2
    for i in range(k):
        img = raw[i].mean(axis=0)
        lo, hi = np.percentile(img, [1, 99.7])
        axes[0][i].imshow(
            np.arcsinh((img - lo) / max(hi - lo, 1e-12) * 10), origin="lower", cmap="gray"
        )
        axes[1][i].imshow(model_input[i].mean(axis=0), origin="lower", cmap="magma")
        for ax in (axes[0][i], axes[1][i]):
            if radius > 0:
                ax.add_patch(plt.Circle((c, c), radius, fill=False, color="cyan", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][i].set_title(f"log age {log_age[i]:.2f}", fontsize=8)
    axes[0][0].set_ylabel("raw (mean of bands)", fontsize=8)
    axes[1][0].set_ylabel(f"model input ({keep.mean():.0%} kept)", fontsize=8)
    save_figure(fig, path)


def grouped_bars(values: dict[str, dict[str, float]], path, ylabel: str, title: str = "") -> None:
    """Bars of one quantity per label, side by side per named model (or data set).

    Parameters
    ----------
    values : dict of str to dict of str to float
        Model name -> label -> value (e.g. per-answer Pearson r); labels missing from a
        model are left blank, NaN values too.
    path : str or pathlib.Path
        Output PNG.
    ylabel : str
    title : str
    """
    labels = list(dict.fromkeys(k for v in values.values() for k in v))
    n = max(len(values), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) * max(n, 2) / 2 + 2), 4.5))
    x = np.arange(len(labels))
    for i, (name, v) in enumerate(values.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, [v.get(k, np.nan) for k in labels], width,
               label=name)  # fmt: skip
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
