"""Tests of masked-reconstruction pretraining: masks, loss, optimiser, a fast fit."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.tasks.masked import (
    MaskedReconstructionTask,
    column_indices,
    fill_masked,
    hidden_indicators,
    make_pretrain_mask,
    masked_reconstruction_loss,
    perturb_by_errors,
    reconstruction_error,
    reconstruction_terms,
    seeded_generator,
)
from astrobatch.tasks.optim import decay_param_groups
from tests.helpers import Rows

F, R = 12, 10
XP = list(range(2, 8))
FORCE = [9]


def synthetic(n: int, seed: int = 0, missing: float = 0.1) -> dict[str, torch.Tensor]:
    """Rows driven by 2 latent factors; ``missing`` of values NaN."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 2, generator=g)
    w = torch.randn(2, F, generator=g)
    x = t @ w + 0.05 * torch.randn(n, F, generator=g)
    x[torch.rand(n, F, generator=g) < missing] = float("nan")
    return {"x": x.float(), "x_err": torch.full((n, F), 0.05)}


def tiny_task(**kw) -> MaskedReconstructionTask:
    torch.manual_seed(0)
    ae = MaskedAutoencoder(
        F, R, embedding_dim=4, n_frequencies=4, widths=(32,), latent_dim=8, dropout=0.0,
        mask_indicators=kw.pop("mask_indicators", False),
    )  # fmt: skip
    args = {"xp_idx": XP, "force_mask_idx": FORCE, "lr": 3e-3, "max_epochs": 2}
    args.update(kw)
    return MaskedReconstructionTask(ae, **args)


# --------------------------------------------------------------------------- masks
def _within_binomial(k: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize(("xp_ratio", "m_ratio"), [(0.9, 0.6), (0.3, 0.1)])
def test_mask_ratios(xp_ratio, m_ratio):
    B = 20000
    present = torch.ones(B, F, dtype=torch.bool)
    g = seeded_generator(1, "train", 0, 0)
    mask = make_pretrain_mask(present, XP, xp_ratio, m_ratio, FORCE, g)
    xp_block = mask[:, XP]
    # the XP block is masked as a whole
    assert torch.equal(xp_block.all(1), xp_block.any(1))
    assert _within_binomial(int(xp_block.all(1).sum()), B, xp_ratio)
    assert mask[:, FORCE].all()
    others = [c for c in range(F) if c not in XP + FORCE]
    for c in others:
        assert _within_binomial(int(mask[:, c].sum()), B, m_ratio), c


def test_mask_only_on_present_values():
    B = 5000
    g = torch.Generator().manual_seed(3)
    present = torch.rand(B, F, generator=g) > 0.3
    mask = make_pretrain_mask(present, XP, 0.9, 0.6, FORCE, seeded_generator(0, 1))
    assert not (mask & ~present).any()
    # among present values, the ratio is still m_ratio
    c = 0
    k, n = int(mask[:, c][present[:, c]].sum()), int(present[:, c].sum())
    assert _within_binomial(k, n, 0.6)
    assert torch.equal(mask[:, FORCE], present[:, FORCE])


def test_mask_generator_is_reproducible():
    present = torch.ones(64, F, dtype=torch.bool)
    a = make_pretrain_mask(present, XP, 0.5, 0.5, (), seeded_generator(7, "val", 3))
    b = make_pretrain_mask(present, XP, 0.5, 0.5, (), seeded_generator(7, "val", 3))
    c = make_pretrain_mask(present, XP, 0.5, 0.5, (), seeded_generator(7, "val", 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_bad_arguments():
    present = torch.ones(2, F, dtype=torch.bool)
    with pytest.raises(ValueError, match="xp_ratio"):
        make_pretrain_mask(present, XP, 1.5, 0.5)
    with pytest.raises(ValueError, match="xp_idx"):
        make_pretrain_mask(present, [F], 0.5, 0.5)
    with pytest.raises(ValueError, match="bool"):
        make_pretrain_mask(present.float(), XP, 0.5, 0.5)


def test_fill_and_indicators():
    x = torch.tensor([[1.0, float("nan"), 3.0, 4.0]])
    mask = torch.tensor([[False, False, True, False]])
    assert fill_masked(x, mask, -1.0).tolist() == [[1.0, -1.0, -1.0, 4.0]]
    assert hidden_indicators(x, mask).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_perturb_by_errors():
    n = 20000
    x = torch.zeros(n, 3)
    x[0, 2] = float("nan")
    err = torch.tensor([0.5, float("nan"), 2.0]).expand(n, 3)
    out = perturb_by_errors(x, err, seeded_generator(0, 0))
    assert torch.equal(out[:, 1], x[:, 1]), "no error: unchanged"
    assert math.isnan(out[0, 2])
    assert abs(out[:, 0].std().item() - 0.5) < 0.02
    assert abs(out[1:, 2].std().item() - 2.0) < 0.08
    assert perturb_by_errors(x, None) is x


# --------------------------------------------------------------------------- loss
def test_loss_counts_only_masked_present_positions():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, R, generator=g)
    target[0, 0] = float("nan")
    mask = torch.rand(6, R, generator=g) > 0.5
    mask[0, 0] = True  # masked but missing
    present = torch.isfinite(target)
    scored = mask & present
    pred = torch.randn(6, R, generator=g, requires_grad=True)
    for kind in ("mae", "mse"):
        loss = masked_reconstruction_loss(pred, target, mask, present, kind=kind)
        expect = (pred - target)[scored].abs()
        expect = (expect if kind == "mae" else expect.square()).mean()
        torch.testing.assert_close(loss, expect)
        # changing predictions where not scored does not change the loss
        other = pred.detach().clone()
        other[~scored] = 1e6
        assert masked_reconstruction_loss(other, target, mask, present, kind=kind) == loss
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(grad).all()
        assert (grad[~scored] == 0).all() and (grad[scored] != 0).all()


def test_loss_error_weighting_and_empty():
    pred = torch.tensor([[1.0, 2.0]])
    target = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    err = torch.tensor([[0.0, float("nan")]])  # both weighted as err = 0
    loss = masked_reconstruction_loss(pred, target, mask, err=err, err_floor=0.1)
    assert loss.item() == pytest.approx(1.5)
    err = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([1 / (1 + 0.01), 1 / 0.01])
    loss = masked_reconstruction_loss(pred, target, mask, err=err, kind="mse", err_floor=0.1)
    assert loss.item() == pytest.approx(float((w * torch.tensor([1.0, 4.0])).sum() / w.sum()))
    p = torch.ones(1, 2, requires_grad=True)
    empty = masked_reconstruction_loss(p, target, torch.zeros(1, 2, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(p.grad, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="kind"):
        masked_reconstruction_loss(pred, target, mask, kind="huber")


# --------------------------------------------------------------------------- optimisation
def test_no_weight_decay_on_biases_and_norms():
    task = tiny_task(weight_decay=0.1)
    opt = task.configure_optimizers()["optimizer"]
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(task.model.named_parameters())
    assert set(wd) == {id(p) for p in names.values()}, "every parameter exactly once"
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    for name, p in names.items():
        norm_or_bias = name.endswith("bias") or ".norm" in name
        assert (wd[id(p)] == 0.0) == norm_or_bias, name
    assert decay_param_groups(task.model, 0.1, name="x")[1]["name"] == "x_no_decay"


def _val_loss(task, data) -> float:
    task.eval()
    with torch.no_grad():
        out = task.masked_forward(data, seeded_generator(0, "val", 0))
        loss = masked_reconstruction_loss(out["recon"], out["target"], out["mask"])
    task.train()
    return loss.item()


@pytest.mark.parametrize("indicators", [False, True])
def test_a_few_steps_reduce_the_loss(indicators):
    task = tiny_task(mask_indicators=indicators)
    data = synthetic(256)
    before = _val_loss(task, data)
    opt = task.configure_optimizers()["optimizer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for step in range(60):
            loss = task.training_step(data, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert _val_loss(task, data) < 0.7 * before


def test_validation_masks_are_deterministic():
    task = tiny_task()
    data = synthetic(32)
    a = task.masked_forward(data, task.generator("val", 2, torch.device("cpu")))
    b = task.masked_forward(data, task.generator("val", 2, torch.device("cpu")))
    assert torch.equal(a["mask"], b["mask"])


def test_recon_idx_must_be_a_prefix():
    with pytest.raises(ValueError, match="prefix"):
        tiny_task(recon_idx=[1, 2, 3])
    assert tiny_task(recon_idx=list(range(R))).hparams.recon_idx == list(range(R))


def test_fit_logs_and_reconstruction_error(tmp_path):
    # the stellar_xp defaults (masking and pretrain params; built there by build_pretrain_task)
    task = MaskedReconstructionTask(
        tiny_task().model, xp_idx=XP, force_mask_idx=FORCE, xp_masking_ratio=0.9,
        m_masking_ratio=0.6, fill_value=0.0, perturb_errors=False, loss="mae",
        error_weighted=False, lr=1e-3, weight_decay=1e-5, max_epochs=15, seed=3,
    )  # fmt: skip
    train = DataLoader(Rows(synthetic(96, seed=1)), batch_size=32)
    val = DataLoader(Rows(synthetic(64, seed=2)), batch_size=32)
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, train, val)
    m = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/recon_mae_xp"):
        assert key in m and torch.isfinite(m[key]), key
    trainer.validate(task, val, verbose=False)
    first = trainer.callback_metrics["val/loss"].item()
    trainer.validate(task, val, verbose=False)
    assert trainer.callback_metrics["val/loss"].item() == first, "fixed validation masks"

    res = reconstruction_error(task, val, seed=0, xp_masking_ratio=1.0)
    assert res == reconstruction_error(task, val, seed=0, xp_masking_ratio=1.0)
    n_present_xp = int(torch.isfinite(synthetic(64, seed=2)["x"][:, XP]).sum())
    assert res["n_positions"] == n_present_xp
    assert 0 < res["mae"] <= res["rmse"]
    assert len(res["mae_per_coefficient"]) == len(XP)


# --------------------------------------------------------------------------- shared helpers
def test_reconstruction_terms_are_the_loss_num_and_den():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, R, generator=g), torch.randn(6, R, generator=g)
    target[0, 0] = float("nan")
    mask = torch.rand(6, R, generator=g) < 0.5
    err = torch.rand(6, R, generator=g)
    for kind in ("mae", "mse"):
        num, den = reconstruction_terms(pred, target, mask, None, kind, err, 0.1)
        loss = masked_reconstruction_loss(pred, target, mask, None, kind, err, 0.1)
        assert torch.equal(num / den, loss)
    _, den = reconstruction_terms(pred, target, mask)
    assert den.item() == int((mask & torch.isfinite(target)).sum())


def test_column_indices():
    assert column_indices((), 4, "force").tolist() == []
    assert column_indices(torch.tensor([3, 0]), 4, "force").tolist() == [3, 0]
    with pytest.raises(ValueError, match=r"force must be column indices in \[0, 4\)"):
        column_indices([4], 4, "force")
    with pytest.raises(ValueError, match="column indices"):
        column_indices([[0]], 4, "force")
