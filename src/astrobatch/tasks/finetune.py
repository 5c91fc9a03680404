"""Generic fine-tuning of an encoder and a head, and loading a pretrained encoder.

:class:`FinetuneTask` trains ``head(encoder(x))`` with a pluggable loss
(pinball for quantiles, :mod:`astrobatch.tasks.quantile`; a
Dirichlet-multinomial loss on vote counts for morphology; any
``loss(pred, target) -> scalar``) in up to two phases:

1. *head only* (``head_only_epochs`` epochs, 0 = no such phase): the encoder
   is frozen: it runs in eval mode (dropout off, normalisation statistics not
   updated) and its gradients are dropped before every optimiser step, so
   AdamW neither moves nor decays it and keeps no moments for it;
2. *whole model*: encoder and head train together with their own learning
   rates, ``lr_encoder`` (usually smaller: the pretrained features move
   gently) and ``lr_head``.

Freezing drops gradients instead of switching ``requires_grad`` off, so the
set of trainable parameters never changes during a run: distributed data
parallel (DDP), which fixes the parameters it synchronises when it wraps the
model, stays correct, and the encoder's AdamW state starts fresh when the
second phase begins. The price is that the encoder's backward pass still runs
during the first phase.

Optimisation: AdamW, no weight decay on biases and norms, one learning rate
per part, cosine warm restarts over the run (helpers in
:mod:`astrobatch.tasks.optim`). Logged: ``train/loss`` (per epoch),
``val/loss``, ``test/loss``, ``lr/encoder``, ``lr/head``.

:func:`load_pretrained_encoder` loads the ``model.*`` weights of a pretraining
checkpoint into the encoder, weights-only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from astrobatch.errors import InputError
from astrobatch.tasks.checkpoints import load_checkpoint
from astrobatch.tasks.optim import (
    cosine_warm_restarts,
    decay_param_groups,
    estimated_steps,
    group_lrs,
)

__all__ = ["FinetuneTask", "load_pretrained_encoder"]


class FinetuneTask(L.LightningModule):
    """Fine-tune an encoder and a head: optional head-only phase, then both, two learning rates.

    Batches are dicts with ``x`` (the encoder's input) and ``y`` (the loss's
    target). Subclasses change the objective by overriding :meth:`encode`,
    :meth:`forward` or :meth:`compute_losses`.

    Parameters
    ----------
    model : torch.nn.Module
        The encoder, ``x -> features (B, D)``; saved under ``model.*`` in
        checkpoints, the prefix every task uses for its wrapped model, so a
        pretraining checkpoint's weights load into it
        (:func:`load_pretrained_encoder`).
    head : torch.nn.Module
        ``features (B, D) -> predictions``; saved under ``head.*``.
    loss : callable
        ``loss(pred, target) -> torch.Tensor`` of shape (), the training
        objective (e.g. :func:`astrobatch.tasks.quantile.pinball_loss`). An
        ``nn.Module`` loss is registered as a submodule (moves with the task).
    lr_encoder, lr_head : float
        AdamW peak learning rates of the encoder and of the head (> 0).
    weight_decay : float
        Decoupled weight decay (none on biases and norms).
    head_only_epochs : int
        Epochs of the head-only phase (encoder frozen, see the module
        docstring); 0 (default): the whole model trains from the start.
    max_epochs : int
        Fallback length of the schedule when the step count is unknown.
    restart_cycles, restart_mult : int
        Cosine warm-restart cycles and their growth factor
        (:func:`astrobatch.tasks.optim.cosine_warm_restarts`).

    Attributes
    ----------
    train_log_terms : tuple of str
        Terms of :meth:`compute_losses` logged per epoch in training.

    Raises
    ------
    ValueError
        On a negative ``head_only_epochs``, a non-positive learning rate, a
        loss that is not callable, or known widths that differ
        (``model.out_features`` vs ``head.in_features``).

    Examples
    --------
    >>> task = FinetuneTask(nn.Linear(4, 8), nn.Linear(8, 1), nn.functional.mse_loss,
    ...                     head_only_epochs=2)
    >>> task(torch.zeros(3, 4)).shape, task.encoder_frozen
    (torch.Size([3, 1]), True)
    >>> sorted(g["name"] for g in task.configure_optimizers()["optimizer"].param_groups)
    ['encoder', 'encoder_no_decay', 'head', 'head_no_decay']
    """

    train_log_terms: tuple[str, ...] = ("loss",)

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        loss: Callable[[Tensor, Tensor], Tensor],
        *,
        lr_encoder: float = 3e-4,
        lr_head: float = 1e-3,
        weight_decay: float = 1e-5,
        head_only_epochs: int = 0,
        max_epochs: int = 30,
        restart_cycles: int = 3,
        restart_mult: int = 2,
    ):
        super().__init__()
        if int(head_only_epochs) < 0:
            raise ValueError(f"head_only_epochs must be >= 0, got {head_only_epochs}")
        if min(lr_encoder, lr_head) <= 0:
            raise ValueError(f"learning rates must be > 0, got {lr_encoder=}, {lr_head=}")
        if not callable(loss):
            raise ValueError(f"loss must be callable (pred, target) -> Tensor, got {loss!r}")
        d_out = getattr(model, "out_features", None)
        d_in = getattr(head, "in_features", None)
        if isinstance(d_out, int) and isinstance(d_in, int) and d_out != d_in:
            raise ValueError(f"model.out_features ({d_out}) != head.in_features ({d_in})")
        self.model = model
        self.head = head
        self.loss_fn = loss
        self.save_hyperparameters(
            {
                "lr_encoder": float(lr_encoder),
                "lr_head": float(lr_head),
                "weight_decay": float(weight_decay),
                "head_only_epochs": int(head_only_epochs),
                "max_epochs": int(max_epochs),
                "restart_cycles": int(restart_cycles),
                "restart_mult": int(restart_mult),
            }
        )

    # ------------------------------------------------------------------ model
    def encode(self, x: Any) -> Tensor:
        """Features of the inputs: ``model(x)``, shape (B, D)."""
        return self.model(x)

    def forward(self, x: Any) -> Tensor:
        """Predictions ``head(encode(x))``."""
        return self.head(self.encode(x))

    @property
    def encoder_frozen(self) -> bool:
        """Whether the current epoch is in the head-only phase (``epoch < head_only_epochs``)."""
        return self.current_epoch < self.hparams.head_only_epochs

    # ------------------------------------------------------------------ losses
    def compute_losses(self, batch: dict[str, Any], batch_idx: int, stage: str) -> dict[str, Any]:
        """Loss terms of one batch.

        Parameters
        ----------
        batch : dict
            ``x`` (encoder input) and ``y`` (target of ``loss``).
        batch_idx : int
        stage : {"train", "val", "test"}

        Returns
        -------
        dict
            ``loss`` (shape (), the objective) and any further terms; keys
            starting with ``_`` are not logged.
        """
        return {"loss": self.loss_fn(self(batch["x"]), batch["y"])}

    def training_step(self, batch, batch_idx):
        """The objective of one batch; :attr:`train_log_terms` are logged per epoch."""
        out = self.compute_losses(batch, batch_idx, "train")
        bs = len(batch["x"])
        for k in self.train_log_terms:
            self.log(f"train/{k}", out[k], on_step=False, on_epoch=True, batch_size=bs,
                     sync_dist=True)  # fmt: skip
        return out["loss"]

    def _eval_step(self, batch, batch_idx, stage: str) -> Tensor:
        out = self.compute_losses(batch, batch_idx, stage)
        bs = len(batch["x"])
        for k, v in out.items():
            if not k.startswith("_"):
                self.log(f"{stage}/{k}", v, on_step=False, on_epoch=True, batch_size=bs,
                         sync_dist=True)  # fmt: skip
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        """Loss terms of one validation batch (``val/loss``, ...)."""
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        """Loss terms of one test batch (``test/loss``, ...)."""
        return self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx):
        """Predictions of a batch (a dict with ``x``, or ``x`` itself)."""
        return self(batch["x"] if isinstance(batch, dict) else batch)

    # ------------------------------------------------------------------ phases
    def on_train_batch_start(self, batch, batch_idx) -> None:
        """Head-only phase: encoder in eval mode; afterwards back in training mode.

        Set per batch (not per epoch) so that a run resumed in the middle of an
        epoch gets it too. Without a head-only phase the modes are left alone.
        """
        if self.hparams.head_only_epochs > 0:
            self.model.train(not self.encoder_frozen)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Head-only phase: drop the encoder's gradients, so the optimiser skips it.

        Runs after the backward pass (and DDP's gradient synchronisation),
        before gradient clipping, so that clipping sees the head's gradients
        only.
        """
        if self.hparams.head_only_epochs > 0 and self.encoder_frozen:
            for p in self.model.parameters():
                p.grad = None

    # ------------------------------------------------------------------ optimisation
    def on_train_epoch_start(self) -> None:
        """Log the learning rates of the epoch (``lr/encoder``, ``lr/head``)."""
        for name, lr in group_lrs(self.optimizers()).items():
            self.log(f"lr/{name}", lr, on_epoch=True, sync_dist=False)

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: encoder (trainable parameters) at ``lr_encoder``, head at ``lr_head``.

        Each is split into a decayed group and one without weight decay
        (biases, norms); groups carry ``name`` = ``"encoder"`` or ``"head"``
        (the no-decay groups ``"encoder_no_decay"``, ``"head_no_decay"``).
        The encoder's groups are there in the head-only phase too (it simply
        gets no gradient then).
        """
        h = self.hparams
        return decay_param_groups(
            self.model, h.weight_decay, lr=h.lr_encoder, name="encoder"
        ) + decay_param_groups(self.head, h.weight_decay, lr=h.lr_head, name="head")

    def configure_optimizers(self):
        """AdamW (two learning rates, no decay on biases/norms) with cosine warm restarts."""
        h = self.hparams
        opt = torch.optim.AdamW(self.param_groups(), lr=h.lr_head)
        sched = cosine_warm_restarts(
            opt, estimated_steps(self), h.max_epochs, h.restart_cycles, h.restart_mult
        )
        return {"optimizer": opt, "lr_scheduler": sched}


def load_pretrained_encoder(
    task_or_module: L.LightningModule | nn.Module,
    ckpt_path: str | Path,
    prefix: str = "model.",
) -> nn.Module:
    """Load the ``model.*`` weights of a pretraining checkpoint into an encoder, strictly.

    Parameters
    ----------
    task_or_module : lightning.LightningModule or torch.nn.Module
        A task holding the encoder as ``.model`` (a :class:`FinetuneTask`, a
        pretraining task), or the encoder itself.
    ckpt_path : str or pathlib.Path
        A Lightning checkpoint whose ``state_dict`` holds the encoder under
        ``prefix`` (a pretraining task, or a :class:`FinetuneTask`, which stores
        its encoder the same way). Read with ``torch.load(weights_only=True)``
        only: tensors, containers, numbers, strings and paths; a file that
        needs any other pickled object is refused, never unpickled.
    prefix : str
        Keys of the state dict that hold the encoder (stripped before loading).

    Returns
    -------
    torch.nn.Module
        The module that received the weights (modified in place).

    Raises
    ------
    InputError
        If the file is missing, unreadable or not loadable weights-only, holds
        no ``prefix*`` weights, or its weights do not match the architecture
        (missing or unexpected keys, other shapes).
    TypeError
        If ``task_or_module`` is not a module.
    """
    if isinstance(task_or_module, L.LightningModule) and hasattr(task_or_module, "model"):
        module = task_or_module.model
    else:
        module = task_or_module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module or a task with one, got {type(module)}")
    path = Path(ckpt_path)
    if not path.is_file():
        raise InputError("pretraining checkpoint not found (run the pretrain stage)", path=path)
    ckpt = load_checkpoint(path, "pretraining checkpoint")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputError("expected a Lightning checkpoint with a state_dict", path=path)
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise InputError(
            f"no {prefix}* weights (expected a pretraining checkpoint holding the encoder)",
            path=path,
            key="state_dict",
        )
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())
        raise InputError(
            f"weights do not match the encoder (check its params — widths, sizes, features, "
            f"mask indicators — against the pretraining run): {msg}",
            path=path,
            key="state_dict",
        ) from None
    return module
