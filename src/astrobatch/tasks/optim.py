"""Optimiser and learning-rate schedule helpers shared by the tasks.

- :func:`decay_param_groups`: AdamW parameter groups without weight decay on
  biases and normalisation parameters, each group optionally with its own
  learning rate and a name (per-group learning rates: an encoder and a head).
- :func:`cosine_warm_restarts`: cosine annealing with warm restarts fitted to
  the run's length (Loshchilov & Hutter 2017, arXiv:1608.03983).
- :func:`cosine_annealing`: plain cosine annealing over the epochs.
- :func:`estimated_steps`: the optimiser steps of a run, once a Trainer knows them.
- :func:`group_lrs`: the current learning rate of every named group (for logging).

Used by :mod:`astrobatch.tasks.regression`, :mod:`astrobatch.tasks.masked` and
:mod:`astrobatch.tasks.finetune`. The scheduler helpers return Lightning's
``lr_scheduler`` config dicts (``{"scheduler": ..., "interval": ...}``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

__all__ = [
    "NORM_LAYERS",
    "cosine_annealing",
    "cosine_warm_restarts",
    "decay_param_groups",
    "estimated_steps",
    "group_lrs",
]

#: Normalisation layers, whose parameters get no weight decay in :func:`decay_param_groups`.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def decay_param_groups(
    modules: nn.Module | Iterable[nn.Module],
    weight_decay: float,
    lr: float | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on weights, none on biases and norm parameters.

    A parameter gets no weight decay if its name ends in ``bias`` or it belongs
    to a normalisation layer (:data:`NORM_LAYERS`: LayerNorm, BatchNorm,
    GroupNorm, InstanceNorm). Frozen parameters (``requires_grad=False``) are
    left out; a parameter shared by several modules is listed once. Within a
    group, parameters keep the order of ``module.modules()``.

    Parameters
    ----------
    modules : torch.nn.Module or iterable of them
    weight_decay : float
        Decoupled weight decay of the decayed group.
    lr : float, optional
        Learning rate of both groups (default: the optimiser's).
    name : str, optional
        Adds ``"name": name`` to the decayed group and ``name + "_no_decay"`` to
        the other (optimisers keep extra keys; handy for logging).

    Returns
    -------
    list of dict
        ``[{"params": decayed, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}]``
        (plus ``"lr"``, ``"name"`` if given); empty groups are dropped.

    Examples
    --------
    >>> groups = decay_param_groups(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)), 0.1)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(1, 0.1), (3, 0.0)]
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            for pname, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                skip = pname.endswith("bias") or isinstance(sub, NORM_LAYERS)
                (no_decay if skip else decay).append(p)
    groups = []
    for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
        if params:
            g: dict[str, Any] = {"params": params, "weight_decay": wd}
            if lr is not None:
                g["lr"] = lr
            if name is not None:
                g["name"] = name + suffix
            groups.append(g)
    return groups


def cosine_warm_restarts(
    optimizer: torch.optim.Optimizer,
    total_steps: float | None,
    max_epochs: int,
    cycles: int = 3,
    t_mult: int = 2,
    eta_min_ratio: float = 0.01,
) -> dict[str, Any]:
    """Lightning scheduler config for cosine annealing with warm restarts.

    ``cycles`` cycles of lengths ``T0, T0 t_mult, T0 t_mult^2, ...`` cover the
    run: ``T0 = ceil(total / sum_k t_mult^k)``, so the last cycle ends at (or
    just after) the last step and no restart happens in the final steps. Each
    cycle decays every group's lr from its base value to ``eta_min_ratio``
    times the smallest base lr (Loshchilov & Hutter 2017, arXiv:1608.03983).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    total_steps : float or None
        Optimiser steps of the run (``trainer.estimated_stepping_batches``,
        see :func:`estimated_steps`); None or inf: schedule per epoch over
        ``max_epochs`` instead.
    max_epochs : int
    cycles : int
        Number of cosine cycles (1 = plain cosine annealing).
    t_mult : int
        Growth factor of the cycle length.
    eta_min_ratio : float
        Final lr of each cycle as a fraction of the smallest base lr.

    Returns
    -------
    dict
        ``{"scheduler": CosineAnnealingWarmRestarts, "interval": "step" | "epoch"}``.

    Examples
    --------
    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> cfg = cosine_warm_restarts(opt, total_steps=70, max_epochs=5)
    >>> cfg["interval"], cfg["scheduler"].T_0
    ('step', 10)
    """
    if total_steps is not None and math.isfinite(total_steps) and total_steps >= 1:
        total, interval = int(total_steps), "step"
    else:
        total, interval = int(max_epochs), "epoch"
    span = sum(t_mult**k for k in range(max(1, cycles)))
    t0 = max(1, math.ceil(total / span))
    eta_min = eta_min_ratio * min(g["lr"] for g in optimizer.param_groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=t0, T_mult=t_mult, eta_min=eta_min
    )
    return {"scheduler": sched, "interval": interval}


def cosine_annealing(optimizer: torch.optim.Optimizer, max_epochs: int) -> dict[str, Any]:
    """Lightning scheduler config: cosine annealing to 0 over ``max_epochs``, stepped per epoch.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    max_epochs : int
        ``T_max`` of ``torch.optim.lr_scheduler.CosineAnnealingLR``, epochs.

    Returns
    -------
    dict
        ``{"scheduler": CosineAnnealingLR, "interval": "epoch"}``.

    Examples
    --------
    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> cfg = cosine_annealing(opt, max_epochs=4)
    >>> cfg["interval"], cfg["scheduler"].T_max
    ('epoch', 4)
    """
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    return {"scheduler": sched, "interval": "epoch"}


def estimated_steps(module: L.LightningModule) -> float | None:
    """Optimiser steps of the run of ``module``'s Trainer, or None if not known (yet).

    Parameters
    ----------
    module : lightning.LightningModule

    Returns
    -------
    float or None
        ``trainer.estimated_stepping_batches`` (may be inf); None without a
        Trainer or before the training data's length is known.
    """
    trainer = module._trainer
    if trainer is None:
        return None
    try:
        return float(trainer.estimated_stepping_batches)
    except Exception:  # no dataloader length known yet
        return None


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of every named group, no-decay twins left out.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Groups named as by :func:`decay_param_groups` (``"encoder"``,
        ``"encoder_no_decay"``, ...); unnamed groups are skipped.

    Returns
    -------
    dict of str to float
        ``{name: lr}`` in group order.

    Examples
    --------
    >>> p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.AdamW(
    ...     [{"params": [p], "lr": 0.1, "name": "encoder"},
    ...      {"params": [q], "lr": 0.2, "name": "encoder_no_decay"}]
    ... )
    >>> group_lrs(opt)
    {'encoder': 0.1}
    """
    return {
        g["name"]: g["lr"]
        for g in optimizer.param_groups
        if "name" in g and not g["name"].endswith("_no_decay")
    }
