"""stellar_xp pretrain -> finetune -> evaluate on tiny simulated data, and leakage-free parallax."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.data.tables import TableArrayDataset
from astrobatch.studies.stellar_xp.prepare import normalise_xp
from astrobatch.study import StudyPaths
from tests.studies.stellar_xp.conftest import tiny_xp_params


def _tiny_training(params):
    small = {"batch_size": 128, "max_epochs": 2, "patience": 5}
    return params.model_copy(
        update={
            "model": params.model.model_copy(update={"widths": [64], "latent_dim": 32}),
            "pretrain": params.pretrain.model_copy(
                update={"training": params.pretrain.training.model_copy(update=small)}
            ),
            "finetune": params.finetune.model_copy(
                update={
                    "head_hidden": [32],
                    "training": params.finetune.training.model_copy(update=small),
                }
            ),
        }
    )


def _paths(prepared, d, out=None):
    """Fine-tuning (and, with ``out``, evaluation) paths: pretrained d/pre, fine-tuned d/ft."""
    evaluation = {}
    if out is not None:
        evaluation = {"metrics": out / "m.json", "plots": out / "plots", "reports": out / "rep"}
    return StudyPaths(prepared=prepared, pretrained=d / "pre", models=d / "ft",
                      live=d / "live_ft", **evaluation)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, xp_raw, xp_prepared):
    from astrobatch.studies.stellar_xp.train import finetune, pretrain

    raw, _ = xp_raw
    prepared, _ = xp_prepared
    p = _tiny_training(tiny_xp_params(raw))
    d = tmp_path_factory.mktemp("xp_models")
    s1 = pretrain(p, StudyPaths(prepared=prepared, models=d / "pre", live=d / "live_pre"))
    s2 = finetune(p, _paths(prepared, d))
    return p, prepared, d, s1, s2


def test_flux_normalisation_of_xp_coefficients():
    feats = ["G", *[f"bp_{i}" for i in range(1, 56)], *[f"rp_{i}" for i in range(1, 56)]]
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(3, 111))
    flux = np.array([1.0, 10.0, 1000.0])
    x = shape.copy()
    x[:, 1] = x[:, 56] = 1.0
    x[:, 1:] *= flux[:, None]
    err = np.abs(x) * 0.01
    x0 = x.copy()
    normalise_xp(x, err, feats)
    # shape coefficients no longer depend on the brightness
    np.testing.assert_allclose(x[:, 2:56], shape[:, 2:56] * 1.0 / 1.0, rtol=1e-12)
    np.testing.assert_allclose(x[:, 1], -2.5 * np.log10(flux))
    np.testing.assert_allclose(err[:, 2:56], 0.01 * np.abs(shape[:, 2:56]), rtol=1e-12)
    np.testing.assert_allclose(err[:, 1], 2.5 / np.log(10) * 0.01)
    assert (x[:, 0] == x0[:, 0]).all()  # other columns untouched
    y = x0.copy()
    y[0, 1] = -5.0  # non-positive c_1: the band becomes unusable, not an error
    normalise_xp(y, np.ones_like(y), feats)
    assert np.isnan(y[0, 1:56]).all() and np.isfinite(y[1, 1:56]).all()


def test_pretrain_finetune_evaluate_end_to_end(trained, tmp_path):
    from astrobatch.studies.stellar_xp.evaluate import evaluate, headline_keys

    p, prepared, d, s1, s2 = trained
    assert s1["complete"] and s2["complete"]
    m = evaluate(p, _paths(prepared, d, tmp_path))
    # the DVC metrics file holds the headline metrics; the report every metric (returned)
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert set(on_disk) == set(headline_keys(p.data.labels))
    assert on_disk == pytest.approx({k: m[k] for k in on_disk}, nan_ok=True)
    full = json.loads((tmp_path / "rep/metrics_full.json").read_text())
    assert full == pytest.approx(m, nan_ok=True)
    for lab in p.data.labels:
        for k in ("r2", "rmse", "mae", "bias", "scatter", "coverage_68", "frac_below_q50"):
            assert f"test/{lab}/{k}" in m
        assert 0 <= m[f"test/{lab}/coverage_68"] <= 1
        assert np.isfinite(m[f"baseline/hgb/test/{lab}/rmse"])
        assert np.isfinite(m[f"baseline/median/test/{lab}/rmse"])
    # masked-XP reconstruction on held-out simulated and real sources
    assert m["recon/sim/xp_mae"] > 0 and m["recon/real/xp_mae"] > 0
    assert m["recon/real/n_sources"] > 0
    for name in ("pred_vs_true", "residual_trends", "calibration", "reconstruction_examples"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "residual_bins.csv").is_file()


def test_fine_tuned_parallax_ignores_the_parallax_input(trained):
    from astrobatch.studies.stellar_xp.train import build_finetune_task, build_model, read_manifest

    p, prepared, d, _, _ = trained
    manifest = read_manifest(prepared)
    task = build_finetune_task(p, manifest, prepared, build_model(p, manifest))
    sd = torch.load(d / "ft" / "best.ckpt", map_location="cpu", weights_only=False)
    task.load_state_dict(sd["state_dict"])
    task.eval()
    ds = TableArrayDataset(prepared / "finetune_test.h5")
    batch = ds[list(range(min(64, len(ds))))]
    j_in, j_lab = manifest["parallax_index"], manifest["parallax_label_index"]
    with torch.no_grad():
        q0 = task.predict_quantiles(batch)
        altered = dict(batch)
        altered["x"] = batch["x"].clone()
        altered["x"][:, j_in] = batch["x"][:, j_in] * -3.0 + 5.0
        q1 = task.predict_quantiles(altered)
        altered["x"][:, j_in] = float("nan")
        q2 = task.predict_quantiles(altered)
    torch.testing.assert_close(q0[:, j_lab], q1[:, j_lab], rtol=0, atol=0)
    torch.testing.assert_close(q0[:, j_lab], q2[:, j_lab], rtol=0, atol=0)
    assert not torch.equal(q0, q1)  # the other labels do see the parallax input
    assert (q0[..., 0] <= q0[..., 1]).all() and (q0[..., 1] <= q0[..., 2]).all()


def test_finetune_needs_the_pretrained_checkpoint(xp_raw, xp_prepared, tmp_path):
    raw, _ = xp_raw
    prepared, _ = xp_prepared
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"stellar_xp:\n  data:\n    finetune_path: {raw / 'finetune.fits'}\n")
    r = CliRunner().invoke(app, [
        "stellar-xp", "finetune", "-p", str(params_file), "--prepared", str(prepared),
        "--pretrained", str(tmp_path / "nothing"), "--out", str(tmp_path / "ft"),
        "--live", str(tmp_path / "live"),
    ])  # fmt: skip
    assert r.exit_code == 2 and "best.ckpt" in r.output
