"""cluster_age predict: the CLI on raw cutout files, bad and too-small inputs, evaluate's
cross-galaxy metrics from a predictions table."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.table import Table
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.errors import InputError
from astrobatch.io.cutouts import write_cutouts
from astrobatch.studies.cluster_age.params import NGC1566_CATALOGUE, ClusterAgeParams
from astrobatch.studies.cluster_age.predict import predict
from astrobatch.studies.cluster_age.prepare import prepare
from astrobatch.study import StudyPaths
from tests.conftest import ROOT
from tests.studies.cluster_age.test_pipeline import CATALOGUE, tiny_params

N_CROSS = 20


def _params_dict(**over) -> dict:
    p = tiny_params(**over).model_dump(mode="json")
    p["simulate"]["catalogue_path"] = str(CATALOGUE)
    p["cross_galaxy"].update(catalogue_path=str(ROOT / NGC1566_CATALOGUE), n_clusters=N_CROSS)
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on NGC 628 cutouts, its params file and prepared folder."""
    from astrobatch.studies.cluster_age.simulate import simulate_to_file
    from astrobatch.studies.cluster_age.train import train

    root = tmp_path_factory.mktemp("ca_predict")
    raw = root / "raw.h5"
    d = _params_dict(data={"raw_path": str(raw)}, mask={"type": "outer", "radius": 10})
    p = ClusterAgeParams.model_validate(d)
    simulate_to_file(p.simulate, raw)
    prepare(p.data, root / "prep")
    paths = StudyPaths(prepared=root / "prep", models=root / "models", live=root / "live")
    train(p, paths)
    # train keeps the training manifest with the model: the folder alone predicts
    assert (root / "models" / "manifest.json").read_bytes() == (
        root / "prep" / "manifest.json").read_bytes()  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump({"cluster_age": d}))
    return {
        "root": root, "params": p, "raw": raw, "prep": root / "prep", "models": root / "models",
        "bundled": root / "models", "yaml": root / "params.yaml",
    }  # fmt: skip


@pytest.fixture(scope="module")
def cross_file(trained):
    """The cross-galaxy sample written by `astrobatch cluster-age simulate-cross`."""
    out = trained["root"] / "cross" / "raw_phangs_dataset.h5"
    r = CliRunner().invoke(app, ["cluster-age", "simulate-cross", "-p", str(trained["yaml"]),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _invoke(trained, *args):
    cmd = ["cluster-age", "predict", "-p", trained["yaml"], "--model", trained["bundled"], *args]
    return CliRunner().invoke(app, [str(a) for a in cmd])


def test_simulate_cross_uses_the_other_catalogue(trained, cross_file):
    with h5py.File(cross_file) as f:
        assert f["image_cutouts"].shape == (N_CROSS, 5, 40, 40)
        sim = json.loads(f.attrs["params"])
    assert sim["catalogue_path"].endswith("ngc1566_multiband_v1_padagb-mwext-avgapcor.tab.gz")
    assert sim["catalogue_distance_modulus"] == 31.28 and sim["seed"] == 1566
    assert sim["image_size"] == 40  # everything else from `simulate`


def test_predict_round_trip_ecsv_and_fits(trained, cross_file, tmp_path):
    out = tmp_path / "pred.ecsv"
    r = _invoke(trained, "--input", cross_file, "--out", out)
    assert r.exit_code == 0, r.output
    t = Table.read(out)
    assert t.meta["id_columns"] == ["file", "galaxy_id", "cluster_id"]
    assert len(t) == N_CROSS and t["cluster_id"].tolist() == list(range(1, N_CROSS + 1))
    assert set(t["file"]) == {"raw_phangs_dataset.h5"}
    assert t["log_age"].unit == u.dimensionless_unscaled and t["age"].unit == u.yr
    assert t["log_age_reference"].unit == u.dimensionless_unscaled
    assert np.all(np.isfinite(t["log_age"])) and t["log_age"].std() > 0
    np.testing.assert_allclose(t["age"], 10 ** np.asarray(t["log_age"]), rtol=1e-12)
    with h5py.File(cross_file) as f:
        np.testing.assert_allclose(t["log_age_reference"], f["cluster_log_ages"][:], rtol=1e-7)
    assert t.meta["study"] == "cluster_age" and "log_age" in t.meta
    # the CLI's table is the Python function's
    ref = predict(trained["params"], trained["models"], [cross_file.parent])
    np.testing.assert_allclose(t["log_age"], ref["log_age"], rtol=1e-12)
    lo, hi = ref.meta["training_log_age_range"]
    assert 7.0 <= lo < hi <= 9.5
    # FITS: the same rows; units in TUNIT (dimensionless: none), provenance in cards
    fits = tmp_path / "pred.fits"
    r = _invoke(trained, "--input", cross_file.parent, "--out", fits)
    assert r.exit_code == 0, r.output
    tf = Table.read(fits)
    assert tf.meta["IDCOLS"] == "file,galaxy_id,cluster_id" and tf["age"].unit == u.yr
    np.testing.assert_allclose(tf["log_age"], t["log_age"], rtol=1e-12)
    assert tf["galaxy_id"].tolist() == t["galaxy_id"].tolist()


def test_predictions_equal_evaluate_on_the_shards(trained):
    """A raw cutout predicted by `predict` gets what evaluate gives its prepared shard."""
    from astrobatch.data.images import CutoutDataModule, open_shard
    from astrobatch.studies.cluster_age.train import (
        base_transform,
        build_model,
        load_norm_stats,
        make_datasets,
        read_manifest,
        unscale_target,
    )
    from astrobatch.tasks.regression import predict as run_model
    from astrobatch.train import load_model_weights

    p, prep, models = trained["params"], trained["prep"], trained["models"]
    ds = make_datasets(p, prep, base_transform(p, load_norm_stats(models)), for_training=False)
    model = load_model_weights(build_model(p, prep), models / "best.ckpt")
    out = run_model(model, CutoutDataModule(ds, p.training.batch_size, p.seed).loader("test"))
    shard = unscale_target(out["prediction"][np.argsort(out["row"])], read_manifest(prep))
    with open_shard(prep / "test.h5") as f:
        ids = f["cluster_id"][:]
    t = predict(p, trained["bundled"], [trained["raw"]])
    by_id = dict(zip(t["cluster_id"].tolist(), np.asarray(t["log_age"]), strict=True))
    np.testing.assert_allclose([by_id[i] for i in ids], shard, rtol=0, atol=1e-5)
    assert len(t) == p.simulate.n_clusters  # every cutout, extremes included


def test_bad_input_exits_2_naming_file_and_key(trained, tmp_path):
    bad = tmp_path / "no_ages.h5"
    with h5py.File(bad, "w") as f:
        f["cluster_ids"] = np.arange(3, dtype=np.int32)
        f["galaxy_ids"] = np.array([b"G"] * 3)
        f["image_cutouts"] = np.zeros((3, 5, 40, 40), np.float32)
    out = tmp_path / "pred.ecsv"
    r = _invoke(trained, "--input", bad, "--out", out)
    assert r.exit_code == 2
    assert "no_ages.h5" in r.output and "cluster_log_ages" in r.output
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _invoke(trained, "--input", empty, "--out", out)
    assert r.exit_code == 2 and "*.h5" in r.output and not out.exists()


def test_too_small_cutouts_name_pixels_found_and_needed(trained, tmp_path):
    small = tmp_path / "small.h5"
    write_cutouts(small, np.arange(4), ["G"] * 4, np.ones((4, 5, 16, 16), np.float32),
                  np.full(4, 8.0))  # fmt: skip
    out = tmp_path / "pred.ecsv"
    r = _invoke(trained, "--input", small, "--out", out)
    assert r.exit_code == 2 and not out.exists()
    msg = " ".join(r.output.split())
    assert "small.h5" in msg and "image_cutouts" in msg
    assert "found 16 x 16 pixels" in msg and "at least 32 x 32" in msg
    white = tmp_path / "white.h5"
    write_cutouts(white, np.arange(4), ["G"] * 4, np.ones((4, 1, 40, 40), np.float32),
                  np.full(4, 8.0))  # fmt: skip
    with pytest.raises(InputError, match=r"expected 5 channels .*got 1"):
        predict(trained["params"], trained["bundled"], [white])


def test_params_must_match_the_trained_input_path(trained, cross_file):
    p = trained["params"]
    other = p.model_copy(update={"mask": p.mask.model_copy(update={"radius": 6.0})})
    with pytest.raises(InputError, match=r"normalisation.json: key mask: .*radius"):
        predict(other, trained["bundled"], [cross_file])


def test_evaluate_cross_galaxy_metrics_from_a_table(tmp_path):
    from astrobatch.studies.cluster_age.evaluate import HEADLINE, cross_galaxy_metrics, real_metrics

    true = np.array([7.2, 8.0, 9.0, 6.5, 9.4])
    pred = true + np.array([0.1, -0.2, 0.3, 2.0, -0.4])  # row 3 is outside 7-9.5
    t = Table({"log_age": pred, "log_age_reference": true})
    t.write(tmp_path / "pred.ecsv")
    p = tiny_params(evaluate={"real_predictions": str(tmp_path / "pred.ecsv")})
    m = real_metrics(p, train_log_age=np.array([8.0, 8.0]))
    assert m["cross_galaxy/n"] == 4 and m["cross_galaxy/n_predicted"] == 5
    # 1.4826 x median of |0.1, -0.2, 0.3, -0.4|
    assert m["cross_galaxy/mdae_log_age"] == pytest.approx(1.4826 * 0.25)
    assert m["cross_galaxy/bias_log_age"] == pytest.approx(-0.05)
    assert m["baseline/mean/cross_galaxy/mdae_log_age"] == pytest.approx(1.4826 * 0.9)
    assert {"cross_galaxy/mdae_log_age", "cross_galaxy/n"} <= set(HEADLINE)
    every = tiny_params(data={"remove_extremes": False},
                        evaluate={"real_predictions": str(tmp_path / "pred.ecsv")})  # fmt: skip
    assert real_metrics(every)["cross_galaxy/n"] == 5
    assert cross_galaxy_metrics(t, (9.6, 10.0)) == {}
    for missing in (None, "", str(tmp_path / "absent.ecsv")):
        assert real_metrics(tiny_params(evaluate={"real_predictions": missing})) == {}
    Table({"log_age": pred}).write(tmp_path / "no_ref.ecsv")
    with pytest.raises(InputError, match=r"no_ref\.ecsv: key log_age_reference"):
        real_metrics(tiny_params(evaluate={"real_predictions": str(tmp_path / "no_ref.ecsv")}))
