"""star_sets predict: the model folder applied to real OUT3 snapshots, and the kit's writer."""

from __future__ import annotations

import shutil

import astropy.units as u
import numpy as np
import pytest
import yaml
from astropy.table import Table
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.io.predictions import check_predictions, write_predictions
from astrobatch.studies.star_sets.predict import predict, real_metrics
from astrobatch.studies.star_sets.train import train
from astrobatch.study import StudyPaths
from tests.conftest import shared_data_dir, tiny_params

REAL = shared_data_dir() / "star_sets"
pytestmark = pytest.mark.skipif(not (REAL / "conf.3_0").is_file(), reason="no OUT3 sample")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_prepared):
    out = tmp_path_factory.mktemp("ss_predict")
    p = tiny_params(training={"max_epochs": 2})
    train(p, StudyPaths(prepared=tiny_prepared, models=out / "m", live=out / "live"))
    return out / "m"


@pytest.fixture()
def params_file(tmp_path):
    """A params file holding tiny_params' star_sets section (the CLI reads one)."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"star_sets": tiny_params().model_dump(mode="json")}))
    return path


def _cli(*args):
    return CliRunner().invoke(app, ["star-sets", "predict", *map(str, args)])


def test_train_keeps_scalers_with_the_model(model_dir, tiny_prepared):
    kept = (model_dir / "scalers.json").read_bytes()
    assert kept == (tiny_prepared / "scalers.json").read_bytes()


def test_cli_round_trip_ecsv_and_fits(tmp_path, model_dir, params_file):
    ref = predict(tiny_params(), model_dir, [REAL])
    for name in ("real.ecsv", "real.fits"):
        out = tmp_path / name
        res = _cli("-p", params_file, "--model", model_dir, "--input", REAL, "--out", out)
        assert res.exit_code == 0, res.output
        t = Table.read(out)
        # the folder's licence file is ignored: one row per OUT3 snapshot
        assert [str(f).rsplit("/", 1)[-1] for f in t["file"]] == ["conf.3_0", "conf.3_20"]
        assert t["mass"].unit == u.Msun and t["time"].unit == u.Myr and t["r_tidal"].unit == u.pc
        np.testing.assert_allclose(t["mass"], ref["mass"], rtol=1e-12)
        np.testing.assert_allclose(t["log_mass"], np.log10(t["mass"]), rtol=1e-12)
        assert np.all(np.isfinite(t["log_mass_std"])) and np.all(t["log_mass_std"] > 0)
        # the reference is the snapshot's own mass within 2 r_t: 7574 Msun at t = 0, less later
        m0, m20 = np.asarray(t["mass_reference"])
        assert 3000 < m0 < 7575 and m20 < m0
    meta = Table.read(tmp_path / "real.ecsv").meta
    assert meta["id_columns"] == ["file", "run_id"] and meta["study"] == "star_sets"
    assert meta["model"] == str(model_dir)


def test_bad_input_exit_2_nothing_written(tmp_path, model_dir, params_file):
    bad = tmp_path / "run1"
    bad.mkdir()
    (bad / "conf.3_0").write_text("not an OUT3 snapshot\n")
    out = tmp_path / "p.ecsv"
    res = _cli("-p", params_file, "--model", model_dir, "--input", bad, "--out", out)
    assert res.exit_code == 2 and "conf.3_0" in res.output and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "LICENSE").write_text("x")
    res = _cli("-p", params_file, "--model", model_dir, "--input", empty, "--out", out)
    assert res.exit_code == 2 and "conf.3_*" in res.output and not out.exists()
    csv = tmp_path / "p.csv"
    res = _cli("-p", params_file, "--model", model_dir, "--input", REAL, "--out", csv)
    assert res.exit_code == 2 and "--out" in res.output


def test_model_folder_without_scalers_is_refused(tmp_path, model_dir, params_file):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "scalers.json").unlink()
    out = tmp_path / "p.ecsv"
    res = _cli("-p", params_file, "--model", bare, "--input", REAL, "--out", out)
    assert res.exit_code == 2 and "scalers.json" in res.output and not out.exists()


def test_real_metrics_from_a_constructed_table():
    t = Table({"file": ["a/conf.3_0", "b/conf.3_5"], "run_id": ["a", "b"],
               "mass": [1000.0, 100.0] * u.Msun, "mass_reference": [100.0, 100.0] * u.Msun,
               "log_mass": [3.0, 2.0], "log_mass_std": [0.1, 0.2],
               "log_mass_reference": [2.0, 2.0]})  # fmt: skip
    m = real_metrics(t, "mass")
    assert m["real/mae_log_mass"] == pytest.approx(0.5)  # errors 1 and 0 dex
    assert m["real/n_snapshots"] == 2
    assert m["real/conf.3_0/error_log_mass"] == pytest.approx(1.0)
    assert m["real/conf.3_5/pred_log_mass_std"] == pytest.approx(0.2)
    assert m["real/conf.3_0/true_mass"] == pytest.approx(100.0)


def test_prediction_contract_is_checked(tmp_path):
    t = Table({"file": ["a"], "mass": [1.0]})
    with pytest.raises(ValueError, match="id_columns"):
        check_predictions(t)
    t.meta["id_columns"] = ["file"]
    with pytest.raises(ValueError, match="without a unit"):
        write_predictions(t, tmp_path / "x.ecsv", "s", "m", [])
    assert not (tmp_path / "x.ecsv").exists()
    t["mass"].unit = u.Msun
    write_predictions(t, tmp_path / "x.fits", "s", "m", ["in1", "in2"])
    back = Table.read(tmp_path / "x.fits")
    assert back["mass"].unit == u.Msun and back.meta["INPUTS"] == "in1,in2"
    assert back.meta["IDCOLS"] == "file"
