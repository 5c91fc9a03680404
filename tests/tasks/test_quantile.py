"""Tests of quantile regression: the pinball loss and the generic quantile fine-tuning task.

stellar_xp's fine-tuning (two-pass parallax, MLE term) is tested in
tests/studies/stellar_xp/test_xp_finetune.py.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from astrobatch.nn.heads import QuantileHead
from astrobatch.tasks.quantile import QUANTILES, QuantileFinetuneTask, pinball_loss, pinball_terms
from tests.helpers import Rows

F, NL = 6, 3
LABELS = ["teff", "logg", "parallax"]


def synthetic(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Labels are linear in the features plus noise; 10 % of the labels missing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, generator=g)
    y = torch.stack([x[:, 0] + 0.5 * x[:, 3], x[:, 1] - x[:, 4], x[:, 5]], dim=1)
    y = y + 0.1 * torch.randn(n, NL, generator=g)
    y[torch.rand(n, NL, generator=g) < 0.1] = float("nan")
    return {"x": x, "y": y}


def tiny_task(**kw) -> QuantileFinetuneTask:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(F, 16), nn.ELU())
    return QuantileFinetuneTask(encoder, QuantileHead(16, NL, hidden=(16,)), **kw)


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


def test_pinball_terms_are_the_loss_pieces():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, NL, 3, generator=g)
    y = torch.randn(8, NL, generator=g)
    y[:3, 1] = float("nan")
    total, count, present = pinball_terms(q, y)
    assert total.shape == count.shape == (NL,) and present.shape == (8, NL)
    assert count.tolist() == [8.0, 5.0, 8.0]
    torch.testing.assert_close(total.sum() / (3 * count.sum()), pinball_loss(q, y))


# --------------------------------------------------------------------------- generic task
def test_generic_quantile_task_predicts_ordered_quantiles():
    task = tiny_task(label_names=LABELS).eval()
    x = torch.randn(5, F)
    q = task.predict_quantiles({"x": x})
    assert q.shape == (5, NL, 3)
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()
    assert torch.equal(q, task.predict_quantiles(x)) and torch.equal(q, task(x))
    with pytest.raises(ValueError, match="label_names"):
        tiny_task(label_names=["teff"])


def test_generic_quantile_task_loss_is_the_pinball_loss():
    task = tiny_task()
    data = synthetic(32)
    out = task.compute_losses(data, 0, "train")
    assert torch.equal(out["loss"], out["pinball"])
    torch.testing.assert_close(out["loss"], pinball_loss(task(data["x"]), data["y"]))


def test_generic_quantile_task_fits_and_logs(tmp_path):
    task = tiny_task(label_names=LABELS, lr_encoder=3e-3, lr_head=1e-2)
    train = DataLoader(Rows(synthetic(256, 1)), batch_size=32, shuffle=True)
    val = DataLoader(Rows(synthetic(64, 2)), batch_size=32)
    with torch.no_grad():
        before = pinball_loss(task.eval()(synthetic(64, 2)["x"]), synthetic(64, 2)["y"]).item()
    trainer = L.Trainer(
        max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task.train(), train, val)
    m = trainer.callback_metrics
    for key in ["train/loss", "train/pinball", "val/loss", "val/pinball", "val/pinball_teff",
                "lr/encoder", "lr/head"]:  # fmt: skip
        assert key in m and torch.isfinite(m[key]), key
    assert m["val/pinball"] < 0.7 * before
    # the whole-split validation pinball is the mean over present (label, quantile) pairs
    with torch.no_grad():
        q = task.eval()(synthetic(64, 2)["x"])
    exact = pinball_loss(q, synthetic(64, 2)["y"])
    torch.testing.assert_close(m["val/pinball"], exact, rtol=1e-5, atol=1e-6)
    preds = torch.cat(trainer.predict(task, val))
    assert preds.shape == (64, NL, 3)
