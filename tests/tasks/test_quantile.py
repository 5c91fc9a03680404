"""Tests of quantile fine-tuning: pinball loss, two-pass parallax, MLE term, optimiser."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from astrobatch.errors import InputError
from astrobatch.nn.autoencoder import MaskedAutoencoder, QuantileHead
from astrobatch.studies.stellar_xp.params import FinetuneParams, MaskingParams
from astrobatch.tasks.masked import MaskedReconstructionTask
from astrobatch.tasks.quantile import (
    QUANTILES,
    QuantileFinetuneTask,
    load_pretrained_encoder,
    parallax_mle_penalty,
    pinball_loss,
)

F, R, NL = 12, 10, 3
XP = list(range(2, 8))
PLX_FEAT, PLX_LAB = 10, 2
LABELS = ["teff", "logg", "parallax"]


def autoencoder(seed=0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    args = {"embedding_dim": 4, "n_frequencies": 4, "widths": (32,), "latent_dim": 8}
    args.update(kw)
    return MaskedAutoencoder(F, R, dropout=0.0, **args)


def tiny_task(seed=0, ae_kw=None, **kw) -> QuantileFinetuneTask:
    ae = autoencoder(seed, **(ae_kw or {}))
    head = QuantileHead(8, NL, hidden=(16,))
    args = {
        "parallax_feature_idx": PLX_FEAT,
        "parallax_label_idx": PLX_LAB,
        "xp_idx": XP,
        "lr_encoder": 1e-3,
        "lr_head": 3e-3,
        "label_names": LABELS,
    }
    args.update(kw)
    return QuantileFinetuneTask(ae, head, **args)


def synthetic(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Labels are smooth functions of the features; the parallax label is the parallax input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, generator=g)
    y = torch.stack([x[:, 0] + 0.5 * x[:, 3], x[:, 1] - x[:, 4], x[:, PLX_FEAT]], dim=1)
    y = y + 0.05 * torch.randn(n, NL, generator=g)
    y[torch.rand(n, NL, generator=g) < 0.1] = float("nan")
    x[torch.rand(n, F, generator=g) < 0.05] = float("nan")
    return {
        "x": x,
        "x_err": torch.full((n, F), 0.05),
        "y": y,
        "y_err": torch.full((n, NL), 0.05),
    }


class Rows(Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data["x"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


# --------------------------------------------------------------------------- losses
def test_pinball_hand_computed():
    q = torch.tensor(
        [
            [[0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]],
            [[0.0, 0.5, 1.0], [5.0, 6.0, 7.0]],
        ]
    )
    y = torch.tensor([[3.0, -2.0], [0.5, float("nan")]])
    # (row 0, label 0): u = 3, 2, 1 -> 0.16*3 + 0.5*2 + 0.84*1 = 2.32
    # (row 0, label 1): u = -1, -2, -3 -> 0.84*1 + 0.5*2 + 0.16*3 = 2.32
    # (row 1, label 0): u = 0.5, 0, -0.5 -> 0.16*0.5 + 0 + 0.16*0.5 = 0.16
    # (row 1, label 1): missing, ignored
    expect = (2.32 + 2.32 + 0.16) / (3 * 3)
    assert pinball_loss(q, y).item() == pytest.approx(expect, rel=1e-6)
    q2 = q.clone()
    q2[1, 1] = 1e6  # the prediction of a missing label does not matter
    assert pinball_loss(q2, y) == pinball_loss(q, y)
    qq = q.clone().requires_grad_(True)
    pinball_loss(qq, y).backward()
    assert torch.equal(qq.grad[1, 1], torch.zeros(3))


def test_pinball_minimum_is_the_quantile():
    y = torch.arange(1, 101, dtype=torch.float32).unsqueeze(1)  # 1..100
    grid = torch.linspace(0, 101, 1011)
    for k, tau in enumerate(QUANTILES):
        losses = []
        for c in grid:
            q = torch.full((100, 1, 3), 50.0)
            q[..., k] = c
            losses.append(pinball_loss(q, y).item())
        best = grid[int(torch.tensor(losses).argmin())].item()
        assert abs(best - 100 * tau) <= 1.0


def test_pinball_all_missing_and_shapes():
    q = torch.zeros(2, 1, 3, requires_grad=True)
    loss = pinball_loss(q, torch.full((2, 1), float("nan")))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="shape"):
        pinball_loss(torch.zeros(2, 2, 3), torch.zeros(2, 3))


def test_parallax_mle_penalty():
    mu = torch.tensor([1.0, 2.0, 0.0])
    s = torch.tensor([0.3, 0.0, 0.0])
    pi = torch.tensor([1.5, 2.0, float("nan")])
    e = torch.tensor([0.4, 0.1, 0.1])
    expect = (0.25 / (0.16 + 0.09 + 0.01**2) + 0.0) / 2
    assert parallax_mle_penalty(mu, s, pi, e, floor=0.01).item() == pytest.approx(expect)


def test_mle_in_mas_matches_scaled_units_with_scaled_floor():
    mean, std, floor = 1.2, 0.8, 0.05
    task = tiny_task(
        parallax_mle_weight=1.0, parallax_label_scale=(mean, std), parallax_floor=floor
    )
    q = torch.sort(torch.randn(6, NL, 3), dim=-1).values
    batch = {"y": torch.randn(6, NL), "y_err": torch.rand(6, NL) + 0.1}
    got = task._mle(q, batch)
    qs = q[:, PLX_LAB]
    expect = parallax_mle_penalty(
        qs[:, 1], (qs[:, 2] - qs[:, 0]) / 2, batch["y"][:, PLX_LAB], batch["y_err"][:, PLX_LAB],
        floor / std,
    )  # fmt: skip
    torch.testing.assert_close(got, expect)


# --------------------------------------------------------------------------- two passes
def test_parallax_prediction_ignores_the_parallax_input():
    task = tiny_task().eval()
    x = synthetic(16)["x"]
    x[:, PLX_FEAT] = torch.randn(16)
    altered = x.clone()
    altered[:, PLX_FEAT] = torch.randn(16) * 10
    missing = x.clone()
    missing[:, PLX_FEAT] = float("nan")
    with torch.no_grad():
        q, q_alt, q_nan = (task.predict_quantiles({"x": v}) for v in (x, altered, missing))
    assert q.shape == (16, NL, 3)
    assert torch.equal(q[:, PLX_LAB], q_alt[:, PLX_LAB])
    assert torch.equal(q[:, PLX_LAB], q_nan[:, PLX_LAB])
    other = [i for i in range(NL) if i != PLX_LAB]
    assert not torch.allclose(q[:, other], q_alt[:, other]), "other labels see the parallax"
    # no gradient path from the parallax input to the parallax output
    xg = x.clone().requires_grad_(True)
    task.predict_quantiles({"x": xg})[:, PLX_LAB].sum().backward()
    assert torch.equal(xg.grad[:, PLX_FEAT], torch.zeros(16))


def test_single_pass_parallax_sees_the_input():
    task = tiny_task(two_pass_parallax=False).eval()
    assert not task.two_pass
    x = synthetic(16)["x"]
    altered = x.clone()
    altered[:, PLX_FEAT] = 10.0
    with torch.no_grad():
        assert not torch.allclose(task(x)[:, PLX_LAB], task(altered)[:, PLX_LAB])


def test_two_pass_with_indicators():
    task = tiny_task(ae_kw={"mask_indicators": True}).eval()
    x = synthetic(8)["x"]
    altered = x.clone()
    altered[:, PLX_FEAT] = float("nan")
    with torch.no_grad():
        assert torch.equal(task(x)[:, PLX_LAB], task(altered)[:, PLX_LAB])


def test_bad_configuration():
    with pytest.raises(ValueError, match="parallax_feature_idx"):
        tiny_task(parallax_feature_idx=None)
    with pytest.raises(ValueError, match="parallax_label_scale"):
        tiny_task(parallax_mle_weight=1.0)
    with pytest.raises(ValueError, match="latent_dim"):
        QuantileFinetuneTask(autoencoder(), QuantileHead(5, NL))


# --------------------------------------------------------------------------- optimisation
def test_param_groups_lrs_and_weight_decay():
    task = tiny_task(weight_decay=0.05)
    opt = task.configure_optimizers()["optimizer"]
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    head_ids = {id(p) for p in task.head.parameters()}
    for name, p in task.named_parameters():
        if name.startswith("model.decoder"):
            assert not p.requires_grad and id(p) not in by_id, "decoder frozen when unused"
            continue
        g = by_id[id(p)]
        assert g["lr"] == (3e-3 if id(p) in head_ids else 1e-3), name
        no_decay = name.endswith("bias") or ".norm" in name
        assert (g["weight_decay"] == 0.0) == no_decay, name
    assert {g["name"] for g in opt.param_groups} == {
        "encoder",
        "encoder_no_decay",
        "head",
        "head_no_decay",
    }
    multitask = tiny_task(recon_weight=0.5).configure_optimizers()["optimizer"]
    n_train = sum(p.requires_grad for p in tiny_task(recon_weight=0.5).parameters())
    assert sum(len(g["params"]) for g in multitask.param_groups) == n_train


@pytest.mark.parametrize("recon_weight", [0.0, 0.5])
def test_a_few_steps_reduce_the_loss(recon_weight):
    task = tiny_task(recon_weight=recon_weight, perturb_errors=True)
    data = synthetic(256)
    with torch.no_grad():
        before = pinball_loss(task.eval()(data["x"]), data["y"]).item()
    task.train()
    opt = task.configure_optimizers()["optimizer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for step in range(60):
            loss = task.training_step(data, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = pinball_loss(task.eval()(data["x"]), data["y"]).item()
    assert after < 0.7 * before


# --------------------------------------------------------------------------- fit + checkpoints
def _trainer(tmp_path, **kw) -> L.Trainer:
    args = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
    }
    args.update(kw)
    return L.Trainer(**args)


def test_fit_with_multitask_and_mle_logs(tmp_path):
    ae = autoencoder()
    task = QuantileFinetuneTask.from_params(
        ae,
        QuantileHead(8, NL, hidden=(16,)),
        FinetuneParams(recon_weight=0.3, parallax_mle_weight=0.1),
        MaskingParams(),
        xp_idx=XP,
        parallax_feature_idx=PLX_FEAT,
        parallax_label_idx=PLX_LAB,
        parallax_label_scale=(1.0, 0.5),
        label_names=LABELS,
    )
    train = DataLoader(Rows(synthetic(64, 1)), batch_size=32)
    val = DataLoader(Rows(synthetic(64, 2)), batch_size=32)
    trainer = _trainer(tmp_path)
    trainer.fit(task, train, val)
    m = trainer.callback_metrics
    keys = ["train/loss", "val/loss", "val/pinball", "val/recon", "val/parallax_mle"]
    for key in [*keys, "val/pinball_teff", "lr/encoder", "lr/head"]:
        assert key in m and torch.isfinite(m[key]), key
    assert m["val/loss"] > m["val/pinball"]
    preds = torch.cat(trainer.predict(task, val))
    assert preds.shape == (64, NL, 3)


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
