"""Shared optimiser helpers: param groups without decay on biases/norms, cosine schedules."""

from __future__ import annotations

import types

import lightning as L
import pytest
import torch
from torch import nn

from astrobatch.tasks.optim import (
    cosine_annealing,
    cosine_warm_restarts,
    decay_param_groups,
    estimated_steps,
    group_lrs,
)


def test_decay_groups_split_biases_and_norms_and_skip_frozen():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.GroupNorm(1, 2))
    net[2].weight.requires_grad_(False)
    groups = decay_param_groups(net, 0.1, lr=0.5, name="enc")
    decay, no_decay = groups
    assert decay["params"] == [net[0].weight]
    assert no_decay["params"] == [net[0].bias, net[1].weight, net[1].bias, net[2].bias,
                                  net[3].weight, net[3].bias]  # fmt: skip
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["lr"] == no_decay["lr"] == 0.5
    assert (decay["name"], no_decay["name"]) == ("enc", "enc_no_decay")
    # shared parameters once; several modules at once; empty groups dropped
    shared = nn.Linear(2, 2, bias=False)
    groups = decay_param_groups([shared, nn.Sequential(shared)], 0.1)
    assert len(groups) == 1 and groups[0]["params"] == [shared.weight]
    assert "lr" not in groups[0] and "name" not in groups[0]


def test_cosine_warm_restarts_cover_the_run():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = cosine_warm_restarts(opt, total_steps=70, max_epochs=5, cycles=3, t_mult=2)
    assert cfg["interval"] == "step"
    lrs = []
    for _ in range(70):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step()
    restarts = [i for i in range(1, 70) if lrs[i] > lrs[i - 1] + 1e-9]
    assert restarts == [10, 30]  # cycles of 10, 20, 40 steps
    assert lrs[0] == 1.0 and lrs[-1] < 0.02
    assert cosine_warm_restarts(opt, None, max_epochs=7)["interval"] == "epoch"


def test_cosine_warm_restarts_per_group_lrs_share_the_floor():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    cfg = cosine_warm_restarts(opt, float("inf"), max_epochs=7, cycles=1)
    sched = cfg["scheduler"]
    assert cfg["interval"] == "epoch" and sched.T_0 == 7
    assert sched.base_lrs == [1e-3, 1e-2] and sched.eta_min == pytest.approx(1e-5)


def test_cosine_annealing_per_epoch():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    cfg = cosine_annealing(opt, max_epochs=4)
    assert cfg["interval"] == "epoch"
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step()
    assert lrs == pytest.approx([2.0, 1.7071068, 1.0, 0.2928932])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_estimated_steps_and_group_lrs():
    module = L.LightningModule()
    assert estimated_steps(module) is None
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=12)
    assert estimated_steps(module) == 12.0
    p = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.AdamW(
        [
            {"params": [p[0]], "lr": 0.1, "name": "encoder"},
            {"params": [p[1]], "lr": 0.1, "name": "encoder_no_decay"},
            {"params": [p[2]], "lr": 0.3},
        ]
    )
    assert group_lrs(opt) == {"encoder": 0.1}
