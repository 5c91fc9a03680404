"""``astrobatch stellar-xp predict`` on real Gaia XP files, and evaluate's real/ summary."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.table import Table
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.data.tables import TableArrayDataset
from astrobatch.errors import InputError
from astrobatch.io.gaia_xp import read_gaia_xp
from astrobatch.io.predictions import read_predictions, write_predictions
from astrobatch.studies.stellar_xp.predict import (
    load_finetuned,
    physical_quantiles,
    predict,
    predict_quantiles,
    real_metrics,
)
from astrobatch.study import StudyPaths
from tests.conftest import shared_data_dir
from tests.studies.stellar_xp.conftest import tiny_xp_params

REAL = shared_data_dir() / "stellar_xp" / "gaia_dr3_xp_continuous_chunk0.fits"
LABELS = ["teff", "logg", "fe_h", "alpha", "age", "parallax"]
UNITS = {"teff": u.K, "logg": u.dimensionless_unscaled, "fe_h": u.dimensionless_unscaled,
         "alpha": u.dimensionless_unscaled, "age": u.Gyr, "parallax": u.mas}  # fmt: skip
runner = CliRunner()


def _tiny(params, **updates):
    one = {"batch_size": 256, "max_epochs": 1, "patience": 5}
    return params.model_copy(
        update={
            "model": params.model.model_copy(update={"widths": [32], "latent_dim": 16}),
            "pretrain": params.pretrain.model_copy(
                update={"training": params.pretrain.training.model_copy(update=one)}
            ),
            "finetune": params.finetune.model_copy(
                update={
                    "head_hidden": [16],
                    "training": params.finetune.training.model_copy(update=one),
                }
            ),
            **updates,
        }
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory, xp_raw, xp_prepared):
    """(params, params.yaml, fine-tuned model folder, prepared folder, raw folder)."""
    from astrobatch.studies.stellar_xp.train import finetune, pretrain

    raw, _ = xp_raw
    prepared, _ = xp_prepared
    p0 = tiny_xp_params(raw)
    p = _tiny(p0)
    d = tmp_path_factory.mktemp("xp_predict")
    pretrain(p, StudyPaths(prepared=prepared, models=d / "pre", live=d / "live_pre"))
    finetune(p, StudyPaths(prepared=prepared, pretrained=d / "pre", models=d / "ft",
                           live=d / "live_ft"))  # fmt: skip
    params_file = d / "params.yaml"
    params_file.write_text(yaml.safe_dump({"stellar_xp": p.model_dump(mode="json")}))
    return p, params_file, d / "ft", prepared, raw


def _cli(params_file, model_dir, inputs, out):
    args = ["stellar-xp", "predict", "-p", str(params_file), "--model", str(model_dir),
            "--out", str(out)]  # fmt: skip
    for i in inputs:
        args += ["--input", str(i)]
    return runner.invoke(app, args)


def test_real_xp_round_trip_ecsv_and_fits(model, tmp_path):
    p, params_file, model_dir, _, _ = model
    want = predict(p, model_dir, [REAL])
    src = read_gaia_xp(REAL)
    for out in (tmp_path / "real.ecsv", tmp_path / "real.fits"):
        r = _cli(params_file, model_dir, [REAL], out)
        assert r.exit_code == 0, r.output
        t = Table.read(out)
        assert len(t) == len(src) == 2000
        assert (np.asarray(t["source_id"]) == src["source_id"].to_numpy()).all()
        assert set(np.asarray(t["file"], str)) == {REAL.name}
        ids = t.meta["id_columns"] if out.suffix == ".ecsv" else t.meta["IDCOLS"].split(",")
        assert ids == ["source_id", "file"]
        for lab in LABELS:
            for c in (lab, f"{lab}_p16", f"{lab}_p84"):
                v = np.asarray(t[c], float)
                assert np.isfinite(v).all(), c
                # ECSV writes float64 exactly; FITS too (float64 columns)
                np.testing.assert_array_equal(v, np.asarray(want[c], float))
                if out.suffix == ".ecsv" or UNITS[lab] != u.dimensionless_unscaled:
                    assert t[c].unit == UNITS[lab], (c, t[c].unit)
                else:  # FITS: dimensionless columns carry no TUNIT
                    assert t[c].unit in (None, u.dimensionless_unscaled)
            assert (t[f"{lab}_p16"] <= t[lab]).all() and (t[lab] <= t[f"{lab}_p84"]).all()
            assert f"{lab}_reference" not in t.colnames  # the XP chunk has no labels
        # XP only: 110 coefficients present (or 55 without one band), nothing else
        assert set(np.asarray(t["n_features"])) <= {55, 110} and (t["n_features"] == 110).any()
    groups = want.meta["missing_feature_groups"]
    assert {"wise", "gaia_phot", "2mass", "parallax", "ebv", "pm"} <= set(groups)
    assert "bp_xp" not in groups and "rp_xp" not in groups
    assert "reference" not in want.meta
    assert np.std(np.asarray(want["teff"])) > 0  # one prediction per spectrum, not a constant


def test_finetune_layout_matches_the_prepared_shards_and_keeps_references(model):
    """Reading, normalising and scaling the FITS label table as prepare does: the predictions
    of its test rows equal those from prepare's shards; the labels become references."""
    p, _, model_dir, prepared, raw = model
    table = Table.read(raw / "finetune.fits")
    t = predict(p, model_dir, [raw / "finetune.fits"])
    assert len(t) == len(table)
    np.testing.assert_array_equal(np.asarray(t["teff_reference"]), np.asarray(table["teff"]))
    np.testing.assert_array_equal(np.asarray(t["parallax_reference"]),
                                  np.asarray(table["PARALLAX"]))  # fmt: skip
    assert t["ra"].unit == u.deg and "reference" in t.meta
    assert t.meta["missing_feature_groups"] == []  # every feature column is in the table

    from astrobatch.data.scalers import load_table_scalers

    ds = TableArrayDataset(prepared / "finetune_test.h5")
    _, lscaler = load_table_scalers(prepared / "scalers.json")
    task = load_finetuned(p, model_dir / "best.ckpt", prepared)
    q = physical_quantiles(predict_quantiles(task, ds.arrays["x"]), lscaler)
    row = {int(s): i for i, s in enumerate(np.asarray(t["source_id"]))}
    sel = np.array([row[int(s)] for s in ds.source_id])
    for i, lab in enumerate(LABELS):
        np.testing.assert_allclose(np.asarray(t[lab])[sel], q[:, i, 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(t[f"{lab}_p84"])[sel], q[:, i, 2], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_missing_source_id_exit_2_and_nothing_written(model, tmp_path):
    _, params_file, model_dir, _, _ = model
    t = Table.read(REAL)[:5]
    t.remove_column("source_id")
    bad = tmp_path / "no_ids.fits"
    t.write(bad)
    out = tmp_path / "pred.ecsv"
    r = _cli(params_file, model_dir, [bad], out)
    assert r.exit_code == 2, r.output
    assert "no_ids.fits" in r.output and "key source_id" in r.output
    assert not out.exists()


def test_unknown_layout_names_the_expected_columns(model, tmp_path):
    p, _, model_dir, _, _ = model
    bad = tmp_path / "other.fits"
    Table({"source_id": [1, 2], "flux": [1.0, 2.0]}).write(bad)
    with pytest.raises(InputError, match="bp_coeff_0") as e:
        predict(p, model_dir, [bad])
    assert e.value.path == str(bad)


def test_empty_input_names_rows_found_and_needed(model, tmp_path):
    p, params_file, model_dir, _, _ = model
    empty = tmp_path / "empty.fits"
    Table.read(REAL)[:0].write(empty)
    with pytest.raises(InputError) as e:
        predict(p, model_dir, [empty])
    assert e.value.path == str(empty) and e.value.key == "source_id"
    assert "0 rows found" in str(e.value) and "at least 1" in str(e.value)
    r = _cli(params_file, model_dir, [empty], tmp_path / "o.fits")
    assert r.exit_code == 2 and "0 rows found" in r.output and not (tmp_path / "o.fits").exists()


def test_model_folder_keeps_its_scalers_checked_against_the_checkpoint(model, tmp_path):
    p, _, model_dir, prepared, _ = model
    for f in ("manifest.json", "scalers.json"):  # finetune keeps copies with the model
        assert (model_dir / f).read_bytes() == (prepared / f).read_bytes()
    m = tmp_path / "model"
    shutil.copytree(model_dir, m)
    sample = tmp_path / "five.fits"
    Table.read(REAL)[:5].write(sample)
    t = predict(p, m, [sample])
    assert t.meta["scalers"] == str(m / "scalers.json")
    np.testing.assert_array_equal(np.asarray(t["teff"]),
                                  np.asarray(predict(p, model_dir, [sample])["teff"]))  # fmt: skip
    s = json.loads((m / "scalers.json").read_text())
    s["labels"]["mean"][LABELS.index("parallax")] += 0.5  # scalers of another preparation
    (m / "scalers.json").write_text(json.dumps(s))
    with pytest.raises(InputError, match="parallax label scaler") as e:
        predict(p, m, [sample])
    assert e.value.key == "labels"
    shutil.rmtree(m)
    m.mkdir()
    shutil.copy(model_dir / "best.ckpt", m / "best.ckpt")
    with pytest.raises(InputError, match=r"scalers\.json"):
        predict(p, m, [sample])


def test_real_metrics_from_a_predictions_table(tmp_path):
    t = Table({"source_id": np.arange(4), "teff": [4000.0, 5000.0, 6000.0, 9000.0] * u.K,
               "logg": [4.0, 4.5, 2.0, 1.0] * u.dimensionless_unscaled})  # fmt: skip
    t.meta["id_columns"] = ["source_id"]
    path = write_predictions(t, tmp_path / "real.ecsv", "stellar_xp", "m", ["x.fits"])
    m = real_metrics(read_predictions(path), LABELS)
    assert m == {"real/n_sources": 4, "real/teff/median": 5500.0}
    assert real_metrics(t, ["logg", "teff"]) == {"real/n_sources": 4, "real/logg/median": 3.0}
    with pytest.raises(InputError) as e:
        real_metrics(t, ["fe_h"])
    assert e.value.key == "fe_h"
    assert read_predictions(None) is None and read_predictions(tmp_path / "none.ecsv") is None


def test_evaluate_summarises_the_real_predictions_table(tmp_path):
    from astrobatch.studies.stellar_xp.evaluate import real_summary
    from astrobatch.studies.stellar_xp.params import StellarXPParams

    def params(path):
        return StellarXPParams.model_validate({"evaluate": {"real_predictions": path}})

    t = Table({"source_id": np.arange(3), "teff": [4500.0, 5200.0, 7000.0] * u.K})
    t.meta["id_columns"] = ["source_id"]
    real = write_predictions(t, tmp_path / "real.fits", "stellar_xp", "m", ["x"])
    assert real_summary(params(str(real)), LABELS) == {
        "real/n_sources": 3, "real/teff/median": 5200.0,
    }  # fmt: skip
    assert real_summary(params(None), LABELS) == {}
    assert real_summary(params(str(tmp_path / "absent.ecsv")), LABELS) == {}
    t.remove_column("teff")
    t["logg"] = [4.0, 4.4, 2.0] * u.dimensionless_unscaled
    bad = write_predictions(t, tmp_path / "bad.ecsv", "stellar_xp", "m", ["x"])
    with pytest.raises(InputError) as e:
        real_summary(params(str(bad)), LABELS)
    assert e.value.path == str(bad) and e.value.key == "teff"
