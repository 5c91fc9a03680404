"""Scalar regression of a set, image (or any) model with the Huber or MSE loss.

Loss: Huber (``huber_delta``) or mean squared error on scaled targets; optimiser AdamW
(weight decay on every parameter); cosine annealing of the learning rate over
``max_epochs``, stepped per epoch (:func:`astrobatch.tasks.optim.cosine_annealing`).
Logged: ``train/loss`` (per epoch), ``val/loss``, ``val/mae`` (model space),
``lr``; logged on rank 0 only, reduced across ranks (``sync_dist``), so
metrics mean the same whatever the device count.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from astrobatch.tasks.optim import cosine_annealing


class RegressionTask(L.LightningModule):
    """Regress a scalar target from batches ``{"x", "y"}`` (plus ``"mask"`` for sets).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(x (B, N, F) float32, mask (B, N) bool)`` (set models, batches
        with ``"mask"``) or ``x`` alone (e.g. images (B, C, H, W)) to ``(B, 1)``.
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    huber_delta : float
        Huber loss threshold, in units of the scaled target.
    max_epochs : int
        Length of the cosine schedule, epochs.
    loss : {"huber", "mse"}
        Training loss.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        huber_delta: float = 1.0,
        max_epochs: int = 30,
        loss: str = "huber",
    ):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        if loss not in ("huber", "mse"):
            raise ValueError(f"loss must be huber or mse, got {loss!r}")
        self.loss_fn = nn.HuberLoss(delta=huber_delta) if loss == "huber" else nn.MSELoss()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions, shape (B,), in model (scaled) space."""
        out = self.model(x) if mask is None else self.model(x, mask)
        return out.squeeze(-1)

    def _step(self, batch, stage: str) -> torch.Tensor:
        pred = self(batch["x"], batch.get("mask"))
        y = batch["y"].to(pred.dtype)
        loss = self.loss_fn(pred, y)
        bs = len(y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        if stage != "train":
            mae = (pred - y).abs().mean()
            self.log(f"{stage}/mae", mae, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        """Huber loss of one training batch (logged per epoch as ``train/loss``)."""
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        """Loss and MAE (model space) of one validation batch: ``val/loss``, ``val/mae``."""
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        """Loss and MAE (model space) of one test batch: ``test/loss``, ``test/mae``."""
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate of the epoch (``lr``)."""
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, sync_dist=False)

    def configure_optimizers(self):
        """AdamW with cosine annealing over ``max_epochs``, stepped once per epoch."""
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        return {"optimizer": opt, "lr_scheduler": cosine_annealing(opt, self.hparams.max_epochs)}


@torch.no_grad()
def predict(model: nn.Module, loader, device: str | torch.device = "cpu") -> dict:
    """Run ``model`` over a DataLoader of set or image batches.

    Parameters
    ----------
    model : torch.nn.Module
        Returns (B, 1) or (B,) predictions in model space.
    loader : iterable of dict
        Batches with ``x``, ``y`` and, for sets, ``mask``, ``set_index``,
        ``sample_index``; for images, ``row``.
    device : str or torch.device

    Returns
    -------
    dict of numpy.ndarray
        ``prediction``, ``target`` (model space, float64); for sets
        ``set_index``, ``sample_index`` (int64), ``n_elements`` (real elements
        per sample); for images ``row`` (int64).
    """
    model = model.to(device).eval()
    out: dict[str, list] = {}
    for b in loader:
        if "mask" in b:
            p = model(b["x"].to(device), b["mask"].to(device)).reshape(-1)
            extra = {
                "set_index": b["set_index"],
                "sample_index": b["sample_index"],
                "n_elements": b["mask"].sum(1),
            }
        else:
            p = model(b["x"].to(device)).reshape(-1)
            extra = {"row": b["row"]}
        for k, v in {"prediction": p.double().cpu(), "target": b["y"].double(), **extra}.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
