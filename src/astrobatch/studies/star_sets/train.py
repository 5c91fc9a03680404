"""star_sets train: build the chosen set model and fit it with the shared driver."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from astrobatch.data.sets import SetDataModule
from astrobatch.errors import InputError
from astrobatch.nn.sets import build_set_model
from astrobatch.studies.star_sets.params import StarSetsParams
from astrobatch.tasks.regression import RegressionTask
from astrobatch.train import train_model


def train(
    params: StarSetsParams,
    prepared_dir: str | Path,
    model_dir: str | Path,
    live_dir: str | Path,
    callbacks: list[Callback] | None = None,
) -> dict:
    """Train a set model on prepared star_sets shards.

    Parameters
    ----------
    params : StarSetsParams
        ``model``, ``sampling``, ``training`` and ``seed`` are used.
    prepared_dir : path
        Output of prepare (``{train,val,test}.h5``, ``scalers.json``, ``manifest.json``).
    model_dir, live_dir : path
        Checkpoints and DVCLive curves.
    callbacks : list of lightning Callback, optional

    Returns
    -------
    dict
        Final training state (see :func:`astrobatch.train.fit`).

    Raises
    ------
    InputError
        Missing or corrupted prepared data.
    """
    prepared_dir = Path(prepared_dir)
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
        model = build_set_model(params.model, in_features=n_features)
        return RegressionTask(model, t.lr, t.weight_decay, t.huber_delta, t.max_epochs)

    return train_model(
        build_task, dm, t, model_dir, live_dir, seed=params.seed,
        config=[params.model.model_dump(), params.sampling.model_dump()],
        inputs=[prepared_dir / "manifest.json", prepared_dir / "scalers.json"],
        callbacks=callbacks,
    )  # fmt: skip
