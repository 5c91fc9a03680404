"""star_sets train: build the chosen set model and fit it with the shared driver."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from astrobatch.data.sets import SetDataModule
from astrobatch.errors import InputError
from astrobatch.nn.sets import build_set_model
from astrobatch.studies.star_sets.params import StarSetsParams
from astrobatch.tasks.regression import RegressionTask
from astrobatch.train import file_digest, fingerprint, fit


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
    train_ds = dm.dataset("train")
    L.seed_everything(params.seed, workers=True, verbose=False)  # seeds the initial weights
    model = build_set_model(params.model, in_features=train_ds.n_features)
    t = params.training
    task = RegressionTask(model, t.lr, t.weight_decay, t.huber_delta, t.max_epochs)
    fp = fingerprint(
        params.model.model_dump(),
        params.sampling.model_dump(),
        t.model_dump(exclude={"resume", "num_workers"}),
        params.seed,
        file_digest(prepared_dir / "manifest.json", prepared_dir / "scalers.json"),
    )
    return fit(task, dm, t, model_dir, live_dir, fp, params.seed, callbacks)
