"""Scalar regression of a set (or any) model with the Huber loss.

Loss: Huber (``huber_delta``) on standardised targets; optimiser AdamW;
cosine annealing of the learning rate over ``max_epochs`` (stepped per epoch).
Logged: ``train/loss`` (per epoch), ``val/loss``, ``val/mae`` (model space),
``lr``; logged on rank 0 only, reduced across ranks (``sync_dist``), so
metrics mean the same whatever the device count.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn


class RegressionTask(L.LightningModule):
    """Regress a scalar target from batches ``{"x", "mask", "y"}``.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(x (B, N, F) float32, mask (B, N) bool)`` to ``(B, 1)``.
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    huber_delta : float
        Huber loss threshold, in units of the scaled target.
    max_epochs : int
        Length of the cosine schedule, epochs.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        huber_delta: float = 1.0,
        max_epochs: int = 30,
    ):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.loss_fn = nn.HuberLoss(delta=huber_delta)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions, shape (B,), in model (scaled) space."""
        return self.model(x, mask).squeeze(-1)

    def _step(self, batch, stage: str) -> torch.Tensor:
        pred = self(batch["x"], batch["mask"])
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
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


@torch.no_grad()
def predict(model: nn.Module, loader, device: str | torch.device = "cpu") -> dict:
    """Run ``model`` over a DataLoader of set batches.

    Parameters
    ----------
    model : torch.nn.Module
        Returns (B, 1) or (B,) predictions in model space.
    loader : iterable of dict
        Batches with ``x``, ``mask``, ``y``, ``set_index``, ``sample_index``.
    device : str or torch.device

    Returns
    -------
    dict of numpy.ndarray
        ``prediction``, ``target`` (model space, float64), ``set_index``,
        ``sample_index`` (int64), ``n_elements`` (real elements per sample).
    """
    model = model.to(device).eval()
    out = {k: [] for k in ("prediction", "target", "set_index", "sample_index", "n_elements")}
    for b in loader:
        p = model(b["x"].to(device), b["mask"].to(device)).reshape(-1)
        out["prediction"].append(p.double().cpu())
        out["target"].append(b["y"].double())
        out["set_index"].append(b["set_index"])
        out["sample_index"].append(b["sample_index"])
        out["n_elements"].append(b["mask"].sum(1))
    return {k: torch.cat(v).numpy() for k, v in out.items()}
