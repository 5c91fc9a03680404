"""stellar_xp fine-tuning: two-pass parallax, MLE term, optimiser, fit; the study's builders."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from astrobatch.nn.autoencoder import MaskedAutoencoder
from astrobatch.nn.heads import QuantileHead
from astrobatch.studies.stellar_xp.finetune import StellarXPFinetuneTask, parallax_mle_penalty
from astrobatch.studies.stellar_xp.params import (
    AutoencoderParams,
    FinetuneParams,
    MaskingParams,
    PretrainParams,
    StellarXPParams,
)
from astrobatch.studies.stellar_xp.train import (
    build_finetune_task,
    build_model,
    build_pretrain_task,
)
from astrobatch.tasks.quantile import QuantileFinetuneTask, pinball_loss
from tests.helpers import Rows
from tests.helpers import quiet_trainer as _trainer

F, R, NL = 12, 10, 3
XP = list(range(2, 8))
PLX_FEAT, PLX_LAB = 10, 2
LABELS = ["teff", "logg", "parallax"]


def autoencoder(seed=0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    args = {"embedding_dim": 4, "n_frequencies": 4, "widths": (32,), "latent_dim": 8}
    args.update(kw)
    return MaskedAutoencoder(F, R, dropout=0.0, **args)


def tiny_task(seed=0, ae_kw=None, **kw) -> StellarXPFinetuneTask:
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
    return StellarXPFinetuneTask(ae, head, **args)


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


# --------------------------------------------------------------------------- losses
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
        StellarXPFinetuneTask(autoencoder(), QuantileHead(5, NL))


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


def test_fit_with_multitask_and_mle_logs(tmp_path):
    ae = autoencoder()
    task = StellarXPFinetuneTask.from_params(
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


def test_is_the_generic_quantile_task():
    task = tiny_task()
    assert isinstance(task, QuantileFinetuneTask)
    assert task.loss_fn is pinball_loss and task.hparams.head_only_epochs == 0


# --------------------------------------------------------------------------- the study's builders
MANIFEST = {
    "features": [f"f{i}" for i in range(F - 1)] + ["PARALLAX"],
    "n_recon": R,
    "xp_indices": XP,
    "labels": LABELS,
    "parallax_index": F - 1,
    "parallax_label_index": PLX_LAB,
}


def test_build_model_from_params():
    p = StellarXPParams(
        model=AutoencoderParams(embedding_dim=3, n_frequencies=5, widths=[24, 12], latent_dim=6),
        masking=MaskingParams(mask_indicators=True),
    )
    ae = build_model(p, {"features": [f"f{i}" for i in range(F)], "n_recon": R})
    assert (ae.n_features, ae.n_recon, ae.latent_dim, ae.in_features) == (F, R, 6, 2 * F)
    assert ae.embedding.get_output_shape() == (F, 3)
    assert ae.embedding.periodic.weight.shape == (F, 5)


def test_build_pretrain_task_maps_every_param():
    p = StellarXPParams(
        model=AutoencoderParams(widths=[16], latent_dim=4, embedding_dim=2, n_frequencies=2),
        masking=MaskingParams(
            xp_masking_ratio=0.5, m_masking_ratio=0.25, force_mask_cols=["PARALLAX"],
            fill_value=-1.0, perturb_errors=True,
        ),
        pretrain=PretrainParams(loss="mse", error_weighted=True),
        seed=4,
    )  # fmt: skip
    h = build_pretrain_task(p, MANIFEST).hparams
    assert (h.xp_masking_ratio, h.m_masking_ratio, h.fill_value) == (0.5, 0.25, -1.0)
    assert h.force_mask_idx == [F - 1] and h.xp_idx == XP and h.recon_idx == list(range(R))
    assert (h.perturb_errors, h.loss, h.error_weighted, h.seed) == (True, "mse", True, 4)
    t = p.pretrain.training
    assert (h.lr, h.weight_decay, h.max_epochs) == (t.lr, t.weight_decay, t.max_epochs)


def test_build_finetune_task_maps_every_param(monkeypatch):
    import astrobatch.studies.stellar_xp.train as T

    monkeypatch.setattr(T, "parallax_label_scale", lambda prepared_dir, manifest: (1.5, 0.5))
    p = StellarXPParams(
        model=AutoencoderParams(widths=[16], latent_dim=4, embedding_dim=2, n_frequencies=2),
        finetune=FinetuneParams(
            head_hidden=[8], lr_encoder=1e-4, lr_head=2e-3, head_only_epochs=2, recon_weight=0.2,
            two_pass_parallax=False, parallax_mle_weight=0.3, parallax_floor=0.05,
        ),
    )  # fmt: skip
    task = build_finetune_task(p, MANIFEST, None, build_model(p, MANIFEST))
    h = task.hparams
    assert isinstance(task, StellarXPFinetuneTask)
    assert (h.lr_encoder, h.lr_head, h.head_only_epochs) == (1e-4, 2e-3, 2)
    assert (h.recon_weight, h.two_pass_parallax) == (0.2, False)
    assert (h.parallax_mle_weight, h.parallax_floor, h.parallax_label_scale) == (
        0.3,
        0.05,
        [1.5, 0.5],
    )
    assert h.label_names == LABELS and h.parallax_feature_idx == F - 1
    assert [m.out_features for m in task.head.body if hasattr(m, "out_features")] == [8]
