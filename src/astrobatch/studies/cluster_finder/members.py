"""cluster_finder member-set models: redshift and richness from the member catalogue.

Each target has its own model and stage (``train-redshift``, ``train-richness``): k-ary
Janossy pooling (Murphy et al. 2019, arXiv:1811.01900; k = 2 for redshift, k = 10 for
richness as in the seed) or the shared Deep Sets / Set Transformer
(:func:`astrobatch.nn.sets.build_set_model`), trained by the shared driver
(:func:`astrobatch.train.train_model`) on the prepared ``members_<target>/`` set shards
through the shared set sampler (:class:`astrobatch.data.sets.SetDataModule`).

Augmentation: one uniform random 3-D rotation per training set applied to the members' unit
vectors (:class:`astrobatch.data.rotations.RandomSkyRotation`): a cluster's redshift and
richness do not depend on where it is on the sky, and the rotation keeps the angular
separations between members.

Baselines (same split): the train median, and a gradient-boosting regressor
(scikit-learn ``HistGradientBoostingRegressor``) on summary statistics of the member
features (:func:`summary_features`: per-feature mean, median, std, quartiles, min, max and
the number of members).
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from astrobatch.data.rotations import RandomSkyRotation
from astrobatch.data.scalers import load_scalers
from astrobatch.data.sets import SetDataModule
from astrobatch.errors import InputError
from astrobatch.io.shards import open_shard
from astrobatch.nn.sets import build_set_model
from astrobatch.studies.cluster_finder.params import (
    UNIT_VECTOR,
    ClusterFinderParams,
    MembersTarget,
)
from astrobatch.study import StudyPaths
from astrobatch.tasks.regression import RegressionTask, predict
from astrobatch.train import load_model_weights, train_model

TARGETS = ("redshift", "richness")


class MemberRegressionTask(RegressionTask):
    """:class:`~astrobatch.tasks.regression.RegressionTask` with sky rotations of training sets.

    Parameters
    ----------
    model : torch.nn.Module
        A set model ``(x (B, N, F), mask (B, N)) -> (B, 1)``.
    rotate_columns : tuple of int or None
        The unit-vector columns of ``x`` (rotated together); None: no rotation.
    **kwargs
        Of :class:`~astrobatch.tasks.regression.RegressionTask`.
    """

    def __init__(self, model, rotate_columns: tuple[int, int, int] | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.rotate = None if rotate_columns is None else RandomSkyRotation(rotate_columns)

    def training_step(self, batch, batch_idx):
        """Huber loss of one batch, its sets rotated on the sky first."""
        if self.rotate is not None:
            x, mask = self.rotate(batch["x"], batch["mask"])
            batch = {**batch, "x": x, "mask": mask}
        return self._step(batch, "train")


def _folder(paths: StudyPaths, which: str) -> Path:
    prepared = paths.need("prepared")[0]
    folder = prepared / f"members_{which}"
    for name in ("manifest.json", "scalers.json", "train.h5"):
        if not (folder / name).is_file():
            raise InputError("missing prepared file (run prepare first)", folder / name)
    return folder


def _rotate_columns(folder: Path, rotate: bool) -> tuple[int, int, int] | None:
    feats = json.loads((folder / "manifest.json").read_text())["features"]
    if not rotate or not all(u in feats for u in UNIT_VECTOR):
        return None
    return tuple(feats.index(u) for u in UNIT_VECTOR)


def build_task(spec: MembersTarget, n_features: int, rotate_columns) -> MemberRegressionTask:
    """The set model of ``spec.model`` in its regression task.

    Parameters
    ----------
    spec : MembersTarget
        ``model`` (passed to :func:`astrobatch.nn.sets.build_set_model`) and ``training``
        (lr, weight decay, Huber delta, epochs of the cosine schedule).
    n_features : int
        F, features per member.
    rotate_columns : tuple of int or None
        The unit-vector columns to rotate in training (None: no rotation).

    Returns
    -------
    MemberRegressionTask
    """
    t = spec.training
    model = build_set_model(in_features=n_features, **spec.model.model_dump())
    return MemberRegressionTask(
        model, rotate_columns, lr=t.lr, weight_decay=t.weight_decay,
        huber_delta=t.huber_delta, max_epochs=t.max_epochs,
    )  # fmt: skip


def train_members(
    params: ClusterFinderParams, paths: StudyPaths, which: str,
    callbacks: list[Callback] | None = None,
) -> dict:  # fmt: skip
    """Train the ``which`` (redshift or richness) member-set model.

    Parameters
    ----------
    params : ClusterFinderParams
        ``<which>`` (sampling: members per drawn set and draws per cluster; model,
        training, rotate) and ``seed``.
    paths : StudyPaths
        Reads ``prepared/members_<which>/``; writes ``models`` (``best.ckpt``,
        ``last.ckpt``, and copies of the training ``manifest.json`` and ``scalers.json``,
        so that the folder alone predicts) and ``live`` (curves).
    which : {"redshift", "richness"}

    Returns
    -------
    dict
        The final training state.

    Raises
    ------
    InputError
        Missing prepared files.
    """
    if which not in TARGETS:
        raise ValueError(f"which must be one of {TARGETS}, got {which!r}")
    folder = _folder(paths, which)
    model_dir, live_dir = paths.need("models", "live")
    spec: MembersTarget = getattr(params, which)
    t = spec.training
    dm = SetDataModule(folder, spec.sampling, t.batch_size, params.seed, t.num_workers)
    n_features = dm.dataset("train").n_features
    rot = _rotate_columns(folder, spec.rotate)
    return train_model(
        lambda: build_task(spec, n_features, rot), dm, t, model_dir, live_dir,
        seed=params.seed, config=[which, spec.model.model_dump(), spec.rotate,
                                  spec.sampling.model_dump()],
        inputs=[folder / "manifest.json", folder / "scalers.json"], callbacks=callbacks,
        bundle=[folder / "manifest.json", folder / "scalers.json"],
    )  # fmt: skip


def load_members_model(spec: MembersTarget, folder: Path, model_dir: Path) -> torch.nn.Module:
    """The trained set model of ``model_dir/best.ckpt`` (weights only), in eval mode.

    Parameters
    ----------
    spec : MembersTarget
        Its ``model`` must be the one the checkpoint was trained with.
    folder : pathlib.Path
        A folder with the training ``manifest.json`` (its ``features`` give F): the
        prepared ``members_<target>/`` or the model folder, which keeps a copy.
    model_dir : pathlib.Path

    Returns
    -------
    torch.nn.Module
        ``(x (B, N, F), mask (B, N)) -> (B, 1)`` in model (scaled target) space.

    Raises
    ------
    InputError
        A missing or incompatible checkpoint, or a missing manifest.
    """
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        raise InputError("missing training manifest (run prepare, then train)", manifest)
    n_features = len(json.loads(manifest.read_text()).get("features") or [])
    model = build_set_model(in_features=n_features, **spec.model.model_dump())
    return load_model_weights(model, Path(model_dir) / "best.ckpt")


def predict_sets(model: torch.nn.Module, folder: Path, split: str, sampling, seed: int,
                 batch_size: int = 128) -> dict[str, np.ndarray]:  # fmt: skip
    """Physical predictions and targets of every set of ``folder/<split>.h5``.

    A set larger than ``sampling.num_star_per_sample`` is drawn several times
    (``num_sample_per_snapshot`` fixed seeded draws) and the predictions averaged in model
    space.

    Returns
    -------
    dict of numpy.ndarray, shape (n_sets,)
        ``prediction``, ``target`` (physical units: redshift, or richness), ``cluster_id``.
    """
    dm = SetDataModule(folder, sampling, batch_size, seed)
    ds = dm.dataset(split)
    out = predict(model, dm.loader(split))
    n = ds.n_sets
    pred = np.bincount(out["set_index"], out["prediction"], n) / np.maximum(
        np.bincount(out["set_index"], minlength=n), 1
    )
    _, tscaler = load_scalers(folder / "scalers.json")
    return {
        "prediction": tscaler.to_physical(pred),
        "target": tscaler.to_physical(ds.y.astype(np.float64)),
        "cluster_id": np.asarray(ds.sets["cluster_id"], np.int64),
        "n_members": np.asarray(ds.sets["n_members"], np.int64),
    }


# ------------------------------------------------------------------------------- baselines
def summary_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-set summary statistics of the member features, and the model-space target.

    Returns
    -------
    x : numpy.ndarray, shape (n_sets, 7 F + 1)
        Per feature: mean, median, std, 25 % and 75 % quantiles, min, max; then log(1 + n).
    y : numpy.ndarray, shape (n_sets,)
    """
    with open_shard(folder / f"{split}.h5") as r:
        ptr, feats, y = r.ptr("stars"), r.read("stars/features"), r.read("target")
    rows = []
    for a, b in pairwise(ptr):
        v = feats[a:b].astype(np.float64)
        q = np.percentile(v, [0, 25, 50, 75, 100], axis=0)
        rows.append(np.concatenate([v.mean(0), q[2], v.std(0), q[1], q[3], q[0], q[4],
                                    [np.log1p(b - a)]]))  # fmt: skip
    width = 7 * feats.shape[1] + 1
    return np.asarray(rows, np.float64).reshape(len(rows), width), np.asarray(y, np.float64)


def baselines(folder: Path, split: str, seed: int) -> dict[str, np.ndarray]:
    """Physical predictions of the train median and of gradient boosting on summaries.

    Both are fitted on the ``train`` split of ``folder`` in model space (scikit-learn
    ``HistGradientBoostingRegressor``, 200 iterations, learning rate 0.05, on
    :func:`summary_features`) and mapped back with the folder's target scaler.

    Parameters
    ----------
    folder : pathlib.Path
        A prepared ``members_<target>/`` folder.
    split : str
        The split to predict (``test``, ``real``, ...).
    seed : int
        Seed of the gradient boosting.

    Returns
    -------
    dict of numpy.ndarray, shape (n_sets,), float64
        ``train_median`` and ``gradient_boosting``, in physical units (redshift, or λ).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    x_tr, y_tr = summary_features(folder, "train")
    x, _ = summary_features(folder, split)
    gb = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed)
    gb.fit(x_tr, y_tr)
    _, tscaler = load_scalers(folder / "scalers.json")
    return {
        "train_median": tscaler.to_physical(np.full(len(x), np.median(y_tr))),
        "gradient_boosting": tscaler.to_physical(gb.predict(x)) if len(x) else np.zeros(0),
    }
