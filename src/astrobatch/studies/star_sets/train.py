"""star_sets train: build the chosen set model and fit it with the shared driver."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from torch import nn

from astrobatch.data.sets import SetDataModule
from astrobatch.errors import InputError
from astrobatch.nn.sets import build_set_model
from astrobatch.studies.star_sets.params import SetModelParams, StarSetsParams
from astrobatch.study import StudyPaths
from astrobatch.tasks.regression import RegressionTask
from astrobatch.train import train_model


def build_model(model: SetModelParams, in_features: int) -> nn.Module:
    """The set model of ``star_sets.model`` for elements of ``in_features`` features.

    Parameters
    ----------
    model : SetModelParams
        Which model (``name``) and its sizes, passed to
        :func:`astrobatch.nn.sets.build_set_model` field by field.
    in_features : int
        Features per star (the prepared feature columns).

    Returns
    -------
    torch.nn.Module
        Maps ``(B, N, in_features)`` and a ``(B, N)`` bool mask to ``(B, 1)``.
    """
    return build_set_model(in_features=in_features, **model.model_dump())


def train(
    params: StarSetsParams, paths: StudyPaths, callbacks: list[Callback] | None = None
) -> dict:
    """Train a set model on prepared star_sets shards.

    Parameters
    ----------
    params : StarSetsParams
        ``model`` (which set model and its sizes), ``sampling`` (stars per draw,
        draws per snapshot, random dropping), ``training`` and ``seed``.
    paths : StudyPaths
        Reads ``prepared`` (the folder ``astrobatch star-sets prepare`` wrote:
        ``{train,val,test}.h5``, ``scalers.json``, ``manifest.json``); writes ``models``
        (``best.ckpt`` of the lowest ``val/loss``, ``last.ckpt``, ``train_state.json``, and
        ``scalers.json``, the training scalers, so that the folder alone predicts)
        and ``live`` (DVCLive curves of ``train/loss`` and ``val/loss`` per epoch).
    callbacks : list of lightning Callback, optional
        Extra Lightning callbacks (the tests interrupt a run with one).

    Returns
    -------
    dict
        ``train_state.json`` of the finished run (best val loss, epochs, resumed or not).

    Raises
    ------
    InputError
        ``manifest.json`` or ``scalers.json`` missing, or corrupted shards.
    """
    prepared_dir, model_dir, live_dir = paths.need("prepared", "models", "live")
    for name in ("manifest.json", "scalers.json"):
        if not (prepared_dir / name).is_file():
            raise InputError("missing prepared file (run prepare first)", prepared_dir / name)
    dm = SetDataModule(
        prepared_dir, params.sampling, params.training.batch_size, params.seed,
        params.training.num_workers,
    )  # fmt: skip
    n_features = dm.dataset("train").n_features
    t = params.training

    def build_task() -> RegressionTask:
        model = build_model(params.model, in_features=n_features)
        return RegressionTask(model, t.lr, t.weight_decay, t.huber_delta, t.max_epochs)

    return train_model(
        build_task, dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.model.model_dump(), params.sampling.model_dump()],
        inputs=[prepared_dir / "manifest.json", prepared_dir / "scalers.json"],
        callbacks=callbacks, bundle=[prepared_dir / "scalers.json"],
    )  # fmt: skip
