"""The generic fine-tuning task (head-only phase, two learning rates) and encoder loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F_
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from astrobatch.errors import InputError
from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.nn.heads import MLPHead, QuantileHead
from astrobatch.tasks.finetune import FinetuneTask, load_pretrained_encoder
from astrobatch.tasks.masked import MaskedReconstructionTask
from astrobatch.tasks.quantile import pinball_loss
from tests.helpers import Rows
from tests.helpers import quiet_trainer as _trainer

F, R, NL = 12, 10, 3
XP = list(range(2, 8))
LR_ENC, LR_HEAD = 1e-3, 1e-2


# --------------------------------------------------------------------------- head-only phase
def regression_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return {"x": x, "y": (x[:, :1] - 2 * x[:, 1:2]).square()}


def regression_task(head_only_epochs: int) -> FinetuneTask:
    torch.manual_seed(0)
    # BatchNorm (running statistics) and dropout: a frozen encoder must update neither
    encoder = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2))
    return FinetuneTask(
        encoder, MLPHead(8, 1, hidden=(8,)), F_.mse_loss, lr_encoder=LR_ENC, lr_head=LR_HEAD,
        weight_decay=0.01, head_only_epochs=head_only_epochs, max_epochs=4, restart_cycles=1,
    )  # fmt: skip


class StepRecorder(Callback):
    """Per optimiser step: epoch, encoder mode, what moved, learning rates, AdamW state."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        self._enc = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        self._head = [p.detach().clone() for p in pl_module.head.parameters()]
        self._fresh = all(not opt.state.get(p) for p in pl_module.model.parameters())
        self._lrs = {g["name"]: g["lr"] for g in opt.param_groups}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        enc = pl_module.model.state_dict()
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "encoder_training": pl_module.model.training,
                "requires_grad": all(p.requires_grad for p in pl_module.model.parameters()),
                "encoder_moved": [k for k in enc if not torch.equal(enc[k], self._enc[k])],
                # BatchNorm's shift: no weight decay, a gradient far above AdamW's eps
                "encoder_bias_step": (enc["1.bias"] - self._enc["1.bias"]).abs(),
                "head_moved": any(
                    not torch.equal(a, b)
                    for a, b in zip(pl_module.head.parameters(), self._head, strict=True)
                ),
                "adam_state_fresh": self._fresh,
                "lrs": self._lrs,
            }
        )


def _fit_recorded(tmp_path, head_only_epochs: int) -> tuple[FinetuneTask, list[dict]]:
    task = regression_task(head_only_epochs)
    rec = StepRecorder()
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[rec], limit_val_batches=1)
    train = DataLoader(Rows(regression_data(32, 1)), batch_size=16, shuffle=True)
    trainer.fit(task, train, DataLoader(Rows(regression_data(16, 2)), batch_size=16))
    return task, rec.steps


def test_head_only_phase_freezes_the_encoder_then_trains_both(tmp_path):
    _, steps = _fit_recorded(tmp_path, head_only_epochs=2)
    assert len(steps) == 8  # 4 epochs of 2 steps
    frozen = [s for s in steps if s["epoch"] < 2]
    thawed = [s for s in steps if s["epoch"] >= 2]
    for s in frozen:
        assert s["encoder_moved"] == [], "frozen: no weight, no BatchNorm statistic moves"
        assert s["head_moved"] and not s["encoder_training"]
        assert s["adam_state_fresh"], "AdamW keeps no state for the frozen encoder"
        assert s["requires_grad"], "the trainable set never changes (DDP-safe)"
    for s in thawed:
        assert "0.weight" in s["encoder_moved"] and "1.running_mean" in s["encoder_moved"]
        assert s["head_moved"] and s["encoder_training"] and s["requires_grad"]
    # the first step after the phase is AdamW's first step for the encoder: every bias moves
    # by the encoder's learning rate of that step (lr * g / (|g| + eps)), not the head's
    first = thawed[0]
    assert first["adam_state_fresh"]
    lr_enc, lr_head = first["lrs"]["encoder"], first["lrs"]["head"]
    torch.testing.assert_close(
        first["encoder_bias_step"], torch.full((8,), lr_enc), rtol=1e-3, atol=0.0
    )
    assert lr_enc < lr_head
    # both follow the cosine schedule from their own base rates (shared floor)
    eta = 0.01 * LR_ENC
    assert (lr_enc - eta) / (lr_head - eta) == pytest.approx((LR_ENC - eta) / (LR_HEAD - eta))
    assert steps[0]["lrs"] == {
        "encoder": LR_ENC, "encoder_no_decay": LR_ENC, "head": LR_HEAD, "head_no_decay": LR_HEAD,
    }  # fmt: skip


def test_without_head_only_phase_everything_trains_from_the_start(tmp_path):
    _, steps = _fit_recorded(tmp_path, head_only_epochs=0)
    assert all(s["encoder_moved"] and s["head_moved"] and s["encoder_training"] for s in steps)
    assert steps[0]["adam_state_fresh"] and not steps[1]["adam_state_fresh"]
    assert steps[0]["encoder_bias_step"].max().item() == pytest.approx(LR_ENC, rel=1e-3)


def test_head_only_phase_does_not_touch_modes_when_off():
    task = regression_task(0)
    task.model.eval()  # e.g. a deliberately frozen backbone
    task.on_train_batch_start(None, 0)
    assert not task.model.training
    task.on_before_optimizer_step(None)  # no phase: gradients are left alone
    task = regression_task(1)
    task.on_train_batch_start(None, 0)
    assert not task.model.training and task.encoder_frozen


def test_finetune_task_validation_and_generic_loss():
    with pytest.raises(ValueError, match="head_only_epochs"):
        regression_task(-1)
    with pytest.raises(ValueError, match="learning rates"):
        FinetuneTask(nn.Linear(2, 2), nn.Linear(2, 1), F_.mse_loss, lr_encoder=0.0)
    with pytest.raises(ValueError, match="callable"):
        FinetuneTask(nn.Linear(2, 2), nn.Linear(2, 1), "mse")
    enc = nn.Linear(2, 3)
    enc.out_features = 3
    with pytest.raises(ValueError, match="out_features"):
        FinetuneTask(enc, MLPHead(4, 1), F_.mse_loss)
    task = regression_task(0).eval()
    batch = regression_data(8, 0)
    out = task.compute_losses(batch, 0, "val")
    torch.testing.assert_close(out["loss"], F_.mse_loss(task(batch["x"]), batch["y"]))
    # a pluggable loss: pinball on a quantile head
    q_task = FinetuneTask(nn.Linear(4, 8), QuantileHead(8, 1, hidden=()), pinball_loss)
    assert q_task.compute_losses(batch, 0, "val")["loss"].ndim == 0
    assert math.isfinite(q_task.predict_step(batch, 0).sum().item())


# --------------------------------------------------------------------------- loading the encoder
def autoencoder(seed=0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    args = {"embedding_dim": 4, "n_frequencies": 4, "widths": (32,), "latent_dim": 8}
    args.update(kw)
    return MaskedAutoencoder(F, R, dropout=0.0, **args)


def synthetic(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, generator=g)
    return {"x": x, "x_err": torch.full((n, F), 0.05), "y": torch.randn(n, NL, generator=g)}


def tiny_task(seed=0) -> FinetuneTask:
    return FinetuneTask(autoencoder(seed), QuantileHead(8, NL, hidden=(16,)), pinball_loss)


def test_load_pretrained_encoder(tmp_path):
    pre = MaskedReconstructionTask(autoencoder(seed=1), xp_idx=XP)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(pre, DataLoader(Rows(synthetic(32)), batch_size=16))
    ckpt = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(ckpt)

    task = tiny_task(seed=2)
    assert not torch.equal(
        task.model.embedding.periodic.weight, pre.model.embedding.periodic.weight
    )
    assert load_pretrained_encoder(task, ckpt) is task.model
    for (k, a), b in zip(
        pre.model.state_dict().items(), task.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    # the bare autoencoder, from a checkpoint holding pickled objects (a datamodule's Path)
    full = torch.load(ckpt, weights_only=True)
    full["datamodule_hyper_parameters"] = {"path": Path("data/prepared")}
    torch.save(full, tmp_path / "with_path.ckpt")
    ae = autoencoder(seed=3)
    load_pretrained_encoder(ae, tmp_path / "with_path.ckpt")
    assert torch.equal(ae.decoder[-1].weight, pre.model.decoder[-1].weight)


def test_load_pretrained_encoder_errors(tmp_path):
    task = tiny_task()
    with pytest.raises(InputError, match="not found") as err:
        load_pretrained_encoder(task, tmp_path / "nope.ckpt")
    assert "nope.ckpt" in str(err.value)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"head.out.weight": torch.zeros(1)}}, other)
    with pytest.raises(InputError, match=r"no model\.\* weights"):
        load_pretrained_encoder(task, other)
    wrong = tmp_path / "wrong.ckpt"
    big = autoencoder(widths=(64,))
    torch.save({"state_dict": {f"model.{k}": v for k, v in big.state_dict().items()}}, wrong)
    with pytest.raises(InputError, match="do not match") as err:
        load_pretrained_encoder(task, wrong)
    assert "wrong.ckpt" in str(err.value)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_pretrained_encoder(task, garbage)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        load_pretrained_encoder("a path", other)


def _touch(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class Payload:
    """Unpickling this calls ``_touch``: what a full (non weights-only) load would execute."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


def test_a_checkpoint_needing_a_full_unpickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    state = {f"model.{k}": v for k, v in autoencoder().state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"x": Payload(marker)}}, ckpt)
    with pytest.raises(InputError, match="weights-only") as err:
        load_pretrained_encoder(tiny_task(), ckpt)
    assert "evil.ckpt" in str(err.value) and "_touch" in str(err.value)
    assert not marker.exists(), "no code of the file may run"
    # a task built on a pretrained encoder by prefix: a fine-tuning checkpoint loads too
    task = tiny_task(seed=4)
    ft = tmp_path / "finetune.ckpt"
    torch.save({"state_dict": task.state_dict()}, ft)
    other = tiny_task(seed=5)
    load_pretrained_encoder(other, ft)
    for a, b in zip(task.model.parameters(), other.model.parameters(), strict=True):
        assert torch.equal(a, b)
