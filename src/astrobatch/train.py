"""Shared training driver: Lightning Trainer, checkpoints, early stopping, DVCLive, resume.

Every study trains through :func:`fit`: best and last checkpoints
(``best.ckpt``, ``last.ckpt``) in the model folder, early stopping on
``val/loss``, curves logged with DVCLive, and automatic resumption. A run is built in
its *resume folder* (:func:`resume_dir`), outside the workspace and keyed by the run's
fingerprint (everything that determines the run: params, prepared data), and swapped
into the model folder only when it has finished: a failed or interrupted run never
removes the previous model, and the next call with the same fingerprint continues from
the interrupted run's ``last.ckpt``, under ``dvc repro`` and ``dvc exp run`` (workspace,
``--temp`` or ``--queue``) alike. Model folders are therefore ordinary cached DVC outputs
(no ``persist``), so DVC's run cache restores an earlier params set without training.
The resume folder is removed when its run has finished.

Data draws depend only on (seed, epoch, index) (:mod:`astrobatch.data.sets`), so a resumed
run ends with the same weights as an uninterrupted one. Under SLURM, SIGUSR1 makes Lightning
save ``hpc_ckpt_<n>.ckpt`` in the resume folder and requeue the job; the requeued run
resumes from whichever of it and ``last.ckpt`` is newer (see :mod:`astrobatch.slurm`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from astrobatch.io.atomic import atomic_path, write_json
from astrobatch.params import TrainingParams
from astrobatch.progress import interactive

log = logging.getLogger(__name__)
STATE_FILE = "train_state.json"
HPC_GLOB = "hpc_ckpt_*.ckpt"
#: Environment variable naming the root of the resume folders (see :func:`resume_root`).
RESUME_ENV = "ASTROBATCH_RESUME_DIR"
#: Training params that do not change a run's result, left out of its fingerprint: the
#: resume mode itself and the number of loader processes (draws depend only on (seed,
#: epoch, index), never on the worker that makes them). Everything else — batch size,
#: learning rate, epochs, precision, devices, strategy — is part of the run.
RUN_INVARIANT: frozenset[str] = frozenset({"resume", "num_workers"})


def fingerprint(*parts: Any) -> str:
    """SHA-256 of a JSON rendering of ``parts`` (dicts, lists, strings, numbers).

    Examples
    --------
    >>> fingerprint({"a": 1}) == fingerprint({"a": 1}) != fingerprint({"a": 2})
    True
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(*paths: str | Path) -> str:
    """SHA-256 over the bytes of small files (manifests, scalers)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


class EpochLog(Callback):
    """Plain log line per epoch (used when there is no terminal for a progress bar)."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        log.info(
            "epoch %d/%d %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())),
        )


def partial_dir(path: str | Path) -> Path:
    """Where a finished run is staged before it is swapped in: ``<parent>/.<name>.partial``.

    Same file system as ``path``, so that the swap (:func:`astrobatch.io.atomic.swap_in`)
    is a rename.

    Examples
    --------
    >>> partial_dir("models/star_sets").as_posix()
    'models/.star_sets.partial'
    """
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def resume_root() -> Path:
    """The folder that holds the resume folders of unfinished runs.

    ``$ASTROBATCH_RESUME_DIR`` when set, else ``$XDG_CACHE_HOME/astrobatch/resume``
    (``~/.cache/astrobatch/resume``). Outside every workspace, so that DVC never checks
    outputs out over it and ``dvc exp run --temp`` finds it; on a cluster it should be on a
    file system that every node sees (the home directory usually is).
    """
    env = os.environ.get(RESUME_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "astrobatch" / "resume"


def _slug(model_dir: str | Path) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", Path(model_dir).as_posix()).strip("_")[-80:]


def resume_dir(model_dir: str | Path, fp: str) -> Path:
    """The resume folder of the run ``fp`` of ``model_dir``: ``model/`` and ``live/`` inside.

    Examples
    --------
    >>> resume_dir("models/star_sets", "0123456789abcdef" * 4).name
    'models_star_sets-0123456789abcdef'
    """
    return resume_root() / f"{_slug(model_dir)}-{fp[:16]}"


def pending_runs(model_dir: str | Path) -> list[Path]:
    """The resume folders of unfinished runs of ``model_dir`` (any fingerprint)."""
    root = resume_root()
    return sorted(root.glob(f"{_slug(model_dir)}-" + "[0-9a-f]" * 16)) if root.is_dir() else []


def _resume_path(model_dir: Path, fp: str, mode: str) -> Path | None:
    state_path = model_dir / STATE_FILE
    if mode == "auto" and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        if state.get("fingerprint") == fp and not state.get("complete", False):
            # last.ckpt (every epoch) or, when newer, the hpc_ckpt_<n>.ckpt that Lightning saves
            # on SLURM's requeue signal (SLURMEnvironment below)
            ckpts = [p for p in (model_dir / "last.ckpt", *model_dir.glob(HPC_GLOB)) if p.is_file()]
            return max(ckpts, key=lambda p: p.stat().st_mtime, default=None)
    return None


def _repair_live(live: Path) -> None:
    """Make a killed run's DVCLive folder resumable: what a SIGKILL cut short is dropped.

    ``metrics.json`` that is not a JSON object (killed while DVCLive rewrote it) is removed
    (DVCLive then takes its step from the logger); a TSV's last line without its newline,
    or with another number of fields than its header, is cut off.
    """
    metrics = live / "metrics.json"
    if metrics.is_file():
        try:
            ok = isinstance(json.loads(metrics.read_text(encoding="utf-8")), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            log.warning("%s was cut short by the interruption; removed", metrics)
            metrics.unlink()
    for tsv in live.glob("plots/metrics/**/*.tsv"):
        header, *rows = tsv.read_bytes().split(b"\n")
        if not header:
            continue
        # a complete file ends with a newline: its last piece is empty
        body = [r for r in rows[:-1] if r.count(b"\t") == header.count(b"\t")]
        if rows and (rows[-1] or len(body) != len(rows) - 1):
            log.warning("%s: dropped a line cut short by the interruption", tsv)
            with atomic_path(tsv) as tmp:  # a second kill here leaves the file as it was
                tmp.write_bytes(b"\n".join([header, *body]) + b"\n")


def _readable_checkpoint(path: Path) -> bool:
    """Whether a resume checkpoint loads with a weights-only load (never a full unpickle)."""
    from astrobatch.errors import InputError
    from astrobatch.tasks.checkpoints import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except InputError as err:
        log.warning("cannot resume from %s (%s); starting afresh", path, err)
        return False
    if "state_dict" not in ckpt or "loops" not in ckpt:
        log.warning("cannot resume from %s (not a full training checkpoint); starting afresh", path)
        return False
    return True


def _check_data(datamodule: L.LightningDataModule) -> None:
    """Build the train and val loaders once, so that missing or bad shards fail first."""
    for name in ("train_dataloader", "val_dataloader"):
        loader = getattr(datamodule, name, None)
        if callable(loader):
            loader()


def _trainer(training: TrainingParams, root: Path, **kwargs: Any) -> L.Trainer:
    """The Lightning Trainer of ``training``; its own checks become a ParamsError."""
    from astrobatch.errors import ParamsError

    try:
        return L.Trainer(
            max_epochs=training.max_epochs,
            accelerator=training.accelerator,
            devices=training.devices,
            num_nodes=training.num_nodes,
            strategy=training.strategy,
            default_root_dir=root,
            precision=training.precision,
            gradient_clip_val=training.gradient_clip_val,
            deterministic="warn",
            enable_progress_bar=interactive(),
            enable_model_summary=interactive(),
            use_distributed_sampler=False,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            **kwargs,
        )
    except Exception as err:  # Lightning checks settings with many exception types
        raise ParamsError(
            "training: the Lightning Trainer refuses accelerator="
            f"{training.accelerator!r}, devices={training.devices!r}, "
            f"strategy={training.strategy!r}, precision={training.precision!r}: "
            f"{str(err).splitlines()[0][:300]}"
        ) from None


def fit(
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    training: TrainingParams,
    model_dir: str | Path,
    live_dir: str | Path,
    fp: str,
    seed: int,
    callbacks: list[Callback] | None = None,
) -> dict:
    """Train ``task`` with early stopping, checkpoints, DVCLive curves and auto-resume.

    Nothing of a previous model is removed before the new one is complete: the run is built
    in its :func:`resume_dir` and swapped into ``model_dir`` and ``live_dir`` on success. Before
    anything is cleared, the train and val loaders are built (missing or bad shards raise
    first) and so is the Trainer (bad Lightning settings raise ParamsError).

    Parameters
    ----------
    task : lightning.LightningModule
        Logs ``val/loss``.
    datamodule : lightning.LightningDataModule
    training : TrainingParams
        Epochs, patience, clipping, devices, strategy, precision, resume mode.
    model_dir : str or pathlib.Path
        Receives ``best.ckpt``, ``last.ckpt``, ``train_state.json``.
    live_dir : str or pathlib.Path
        DVCLive folder (``plots/metrics/*.tsv``).
    fp : str
        Fingerprint of the run (see :func:`fingerprint`); decides resumption.
    seed : int
        Global seed (``lightning.seed_everything``).
    callbacks : list of Callback, optional
        Extra callbacks (tests use one to simulate an interruption).

    Returns
    -------
    dict
        The final ``train_state.json`` content: best val loss, epochs, paths.

    Raises
    ------
    astrobatch.errors.InputError
        Missing or invalid prepared data (from the datamodule).
    astrobatch.errors.ParamsError
        Trainer settings that Lightning refuses.
    """
    from dvclive.lightning import DVCLiveLogger

    from astrobatch.io.atomic import swap_in
    from astrobatch.progress import quiet_libraries

    quiet_libraries()  # again: importing Lightning resets its loggers to INFO
    model_dir, live_dir = Path(model_dir), Path(live_dir)
    run_dir = resume_dir(model_dir, fp)
    work, work_live = run_dir / "model", run_dir / "live"
    ckpt = _resume_path(work, fp, training.resume)
    if ckpt is not None and not _readable_checkpoint(ckpt):
        ckpt = None
    _check_data(datamodule)
    # Under srun / DDP every rank runs this function: only rank 0 clears and marks the folders.
    first = all(os.environ.get(v, "0") == "0" for v in ("SLURM_PROCID", "RANK", "LOCAL_RANK"))
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint = ModelCheckpoint(
        dirpath=work, filename="best", monitor="val/loss", mode="min",
        save_top_k=1, enable_version_counter=False,
    )  # fmt: skip
    # `save_last=True` refreshes last.ckpt only when a new best is saved; resuming needs the
    # state of every epoch, so a second, unmonitored checkpoint overwrites last.ckpt each epoch.
    last = ModelCheckpoint(
        dirpath=work, filename="last", monitor=None, save_top_k=1,
        enable_version_counter=False,
    )  # fmt: skip
    cbs: list[Callback] = [
        checkpoint,
        last,
        EarlyStopping(monitor="val/loss", mode="min", patience=training.patience),
        *(callbacks or []),
    ]
    if not interactive():
        cbs.append(EpochLog())
    # Under SLURM: on SIGUSR1 (`sbatch --signal=B:USR1@120`, forwarded by `astrobatch slurm
    # run-task`) Lightning saves hpc_ckpt_<n>.ckpt in default_root_dir and requeues the job.
    plugins = []
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
        log.info(
            "SLURM auto-requeueing enabled: on SIGUSR1 a checkpoint is saved and the job requeued"
        )
    _trainer(training, work, callbacks=[], logger=False)  # settings checked, nothing written
    if ckpt is None and first:
        if run_dir.exists():  # only our own resume folder: the previous model stays
            shutil.rmtree(run_dir)
    elif ckpt is not None:
        log.info("resuming interrupted run from %s", ckpt)
        if first:
            _repair_live(work_live)
    work.mkdir(parents=True, exist_ok=True)
    if first:
        write_json(work / STATE_FILE, {"fingerprint": fp, "complete": False})
    logger = DVCLiveLogger(
        dir=str(work_live), resume=ckpt is not None, save_dvc_exp=False, dvcyaml=False,
        report=None,
    )  # fmt: skip
    trainer = _trainer(training, work, plugins=plugins or None, callbacks=cbs, logger=logger)
    try:
        trainer.fit(
            task, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True
        )
    except SystemExit:
        # Lightning answers Ctrl-C with sys.exit(1) and leaves SIGINT ignored: give the
        # interruption back (the CLI exits 130) and Ctrl-C its default meaning
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if trainer.interrupted:
        raise KeyboardInterrupt(
            f"training interrupted; run again to resume from {work / 'last.ckpt'}"
        )
    state = {
        "fingerprint": fp,
        "complete": True,
        "best_val_loss": float(checkpoint.best_model_score)
        if checkpoint.best_model_score is not None
        else None,
        "epochs_trained": trainer.current_epoch,
        "global_step": trainer.global_step,
        "stopped_early": trainer.current_epoch < training.max_epochs,
        "resumed": ckpt is not None,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
    }
    if trainer.is_global_zero:
        for p in work.glob(HPC_GLOB):  # superseded by best.ckpt/last.ckpt
            p.unlink()
        write_json(work / STATE_FILE, state)
        for src, dst in ((work_live, live_dir), (work, model_dir)):
            staged = partial_dir(dst)  # beside dst: the swap is a rename
            if staged.exists():
                shutil.rmtree(staged)
            shutil.move(src, staged)  # a rename, or a copy across file systems
            swap_in(staged, dst)
        shutil.rmtree(run_dir, ignore_errors=True)
    return state


def run_fingerprint(
    config: Any, training: TrainingParams, seed: int, inputs: Iterable[str | Path] = ()
) -> str:
    """The fingerprint of a training run: what decides whether ``last.ckpt`` may be resumed.

    Parameters
    ----------
    config : dict or list
        The params that shape the model and its data (model, sampling, mask, ...), as
        plain values (``model_dump()``).
    training : TrainingParams
        Its fields, except :data:`RUN_INVARIANT`, are part of the run.
    seed : int
    inputs : iterable of path
        Small files whose bytes identify the prepared data or a parent model (manifests,
        scalers, a pretrained checkpoint).

    Returns
    -------
    str
        Hex SHA-256.
    """
    files = [Path(p) for p in inputs]
    return fingerprint(
        config, training.model_dump(exclude=set(RUN_INVARIANT)), seed,
        file_digest(*files) if files else None,
    )  # fmt: skip


def train_model(
    build_task: Callable[[], L.LightningModule],
    datamodule: L.LightningDataModule,
    training: TrainingParams,
    model_dir: str | Path,
    live_dir: str | Path,
    *,
    seed: int,
    config: Any,
    inputs: Iterable[str | Path] = (),
    callbacks: list[Callback] | None = None,
    bundle: Iterable[str | Path] = (),
) -> dict:
    """The one train driver of every study: seed, build, fingerprint, :func:`fit`.

    Parameters
    ----------
    build_task : callable
        Returns the LightningModule; called right after ``lightning.seed_everything(seed)``
        so that the initial weights depend on the seed only.
    datamodule : lightning.LightningDataModule
    training : TrainingParams
    model_dir, live_dir : str or pathlib.Path
        Checkpoints and DVCLive curves (see :func:`fit`).
    seed : int
        The run's seed (weights, draws).
    config : dict or list
        Params that define the run besides ``training`` and ``seed`` (see
        :func:`run_fingerprint`).
    inputs : iterable of path
        Files that identify the run's inputs (see :func:`run_fingerprint`).
    callbacks : list of Callback, optional
    bundle : iterable of path
        Files the model cannot be applied without (the training scalers), copied into
        ``model_dir`` under their own names once training has finished, atomically, so
        that the model folder alone is enough for ``astrobatch <study> predict``.

    Returns
    -------
    dict
        The final training state (see :func:`fit`).
    """
    L.seed_everything(seed, workers=True, verbose=False)  # seeds the initial weights
    task = build_task()
    fp = run_fingerprint(config, training, seed, inputs)
    state = fit(task, datamodule, training, model_dir, live_dir, fp, seed, callbacks)
    bundle_files(bundle, model_dir)
    return state


def bundle_files(files: Iterable[str | Path], model_dir: str | Path) -> None:
    """Copy ``files`` into ``model_dir`` under their own names (each write atomic).

    Parameters
    ----------
    files : iterable of path
        Existing files (the training scalers of a model).
    model_dir : str or pathlib.Path

    Raises
    ------
    astrobatch.errors.InputError
        A file is missing.
    """
    import shutil

    from astrobatch.errors import InputError
    from astrobatch.io.atomic import atomic_path

    for f in map(Path, files):
        if not f.is_file():
            raise InputError("missing file to keep with the model", f)
        with atomic_path(Path(model_dir) / f.name) as tmp:
            shutil.copyfile(f, tmp)


def load_model_weights(
    model: torch.nn.Module, ckpt_path: str | Path, prefix: str = "model."
) -> torch.nn.Module:
    """Load the ``<prefix>*`` weights of a Lightning checkpoint into a module.

    Parameters
    ----------
    model : torch.nn.Module
        A pure module (``prefix="model."``, the task's wrapped model) or a
        whole LightningModule (``prefix=""``).
    ckpt_path : str or pathlib.Path
        Checkpoint written by :func:`fit` (``best.ckpt``, ``last.ckpt``).
    prefix : str
        Keys of the checkpoint's ``state_dict`` to load, the prefix stripped.

    Returns
    -------
    torch.nn.Module
        ``model`` in eval mode.

    Raises
    ------
    astrobatch.errors.InputError
        Missing or incompatible checkpoint.
    """
    from astrobatch.errors import InputError
    from astrobatch.tasks.checkpoints import load_checkpoint

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise InputError("checkpoint not found (run train first)", ckpt_path)
    sd = load_checkpoint(ckpt_path).get("state_dict")
    if not isinstance(sd, dict):
        raise InputError("not a Lightning checkpoint (no state_dict)", ckpt_path, "state_dict")
    n = len(prefix)
    weights = {k[n:]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
    if not weights:
        raise InputError(f"no {prefix}* weights in the checkpoint", ckpt_path, "state_dict")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            f"checkpoint does not match the model in params ({' '.join(str(err).split())[:300]})",
            ckpt_path, "state_dict",
        ) from None  # fmt: skip
    return model.eval()
