"""morphology predict: the CLI on the real GZ DECaLS sample and a catalogue with counts (ECSV
and FITS round trips), bad and too-small inputs, and evaluate's real metrics from a table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy import units as u
from astropy.table import Table
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.data.images import open_shard
from astrobatch.studies.morphology.evaluate import (
    counted,
    predict_set,
    real_from_table,
    set_metrics,
)
from astrobatch.studies.morphology.predict import dirichlet_std, load_model, predict
from astrobatch.studies.morphology.prepare import prepare
from astrobatch.studies.morphology.schema import DECALS
from astrobatch.studies.morphology.train import image_datasets, image_transform, train_head
from astrobatch.study import StudyPaths
from tests.studies.morphology.conftest import data_params
from tests.studies.morphology.test_morph_pipeline import params

ROOT = Path(__file__).resolve().parents[3]
REAL_DIR = ROOT / "data/external/morphology/gz_decals_rings"


@pytest.fixture(scope="module")
def trained(surveys, tmp_path_factory):
    """A tiny head-stage model (backbone + head in best.ckpt) with its schema beside it."""
    tmp = tmp_path_factory.mktemp("predict")
    p = params(data_params(surveys), head={"max_epochs": 1})
    prepare(p.data, tmp / "prep")
    train_head(p, StudyPaths(prepared=tmp / "prep", models=tmp / "model", live=tmp / "live"))
    # train keeps the answer schema with the model: the folder alone predicts
    kept = (tmp / "model" / "manifest.json").read_bytes()
    assert kept == (tmp / "prep" / "manifest.json").read_bytes()
    (tmp / "params.yaml").write_text(yaml.safe_dump({"morphology": p.model_dump(mode="json")}))
    return {"p": p, "model": tmp / "model", "prep": tmp / "prep", "params": tmp / "params.yaml"}


def _cli(trained, tmp_path, monkeypatch, *inputs, out="out.ecsv"):
    monkeypatch.chdir(tmp_path)
    args = ["morphology", "predict", "-p", str(trained["params"]), "--model",
            str(trained["model"]), "--out", out]  # fmt: skip
    for i in inputs:
        args += ["--input", str(i)]
    return CliRunner().invoke(app, args)


def test_cli_round_trip_on_the_real_sample(trained, tmp_path, monkeypatch):
    r = _cli(trained, tmp_path, monkeypatch, REAL_DIR)
    assert r.exit_code == 0, r.output
    t = Table.read(tmp_path / "out.ecsv")
    cat = pd.read_csv(REAL_DIR / "catalog.csv")
    answers = DECALS.restrict(
        [q for q in DECALS.question_names if f"{q}_votes" not in t.colnames]
    ).answer_names
    assert len(t) == len(cat) == 376
    assert t.meta["id_columns"] == ["catalogue", "galaxy_id"] and t.meta["study"] == "morphology"
    assert list(t["galaxy_id"]) == cat["iauname"].tolist()
    assert t["catalogue"][0] == str(REAL_DIR / "catalog.csv")
    manifest = (trained["prep"] / "manifest.json").read_text()
    model_answers = [a for a in answers if f'"{a}"' in manifest]
    for a in model_answers:  # every answer of the model: a fraction in (0, 1), dimensionless
        assert t[a].unit == u.dimensionless_unscaled
        assert np.all(np.isfinite(t[a])) and 0 < t[a].min() and t[a].max() < 1
    # the three fractions of the real catalogue are the references, exactly
    refs = sorted(c for c in t.colnames if c.endswith("_reference"))
    assert refs == sorted(f"{c.removesuffix('_fraction')}_reference" for c in cat.columns
                          if c.endswith("_fraction"))  # fmt: skip
    for c in refs:
        assert t[c].unit == u.dimensionless_unscaled
        np.testing.assert_array_equal(t[c], cat[c.replace("_reference", "_fraction")])
    assert "reference" in t.meta and not [c for c in t.colnames if c.endswith(("_std", "_votes"))]
    # the CLI's table is the Python function's
    direct = predict(trained["p"], trained["model"], [REAL_DIR / "catalog.csv"])
    for a in model_answers:
        np.testing.assert_array_equal(np.asarray(t[a]), np.asarray(direct[a]))


def test_fits_round_trip_with_counts_matches_the_prepared_images(trained, surveys, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    cat_path = surveys["paths"]["b"]  # gz_decals layout with counts; its test rows are prepared
    r = _cli(trained, tmp_path, monkeypatch, cat_path, out="b.fits")
    assert r.exit_code == 0, r.output
    t = Table.read(tmp_path / "b.fits")
    assert len(t) == 60 and t.meta["IDCOLS"] == "catalogue,galaxy_id"
    counts = surveys["counts"]["b"]
    schema = DECALS
    tot = schema.total_votes(counts)
    answers = json.loads((trained["prep"] / "manifest.json").read_text())["answers"]
    for j, a in enumerate(schema.answer_names):
        if a not in answers:
            continue
        q = schema.question_index[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            want = np.where(tot[:, q] > 0, counts[:, j] / tot[:, q], np.nan)
        np.testing.assert_allclose(t[f"{a}_reference"], want, rtol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(t[f"{schema.question_names[q]}_votes"], tot[:, q])
    # the images are decoded and normalised as prepare + evaluate do: same predictions
    task, _ = load_model(trained["p"], trained["model"])
    transform = image_transform(task.model)
    ds = image_datasets(trained["p"], trained["prep"], transform, ["test"])["test"]
    pf, _ = predict_set(task, ds, 64)
    with open_shard(trained["prep"] / "test.h5", require=("galaxy_id",)) as f:
        ids = np.asarray(f.read("galaxy_id")).astype(str)
    row = {g: i for i, g in enumerate(np.asarray(t["galaxy_id"]).astype(str))}
    mine = [i for i, g in enumerate(ids) if g in row]
    assert len(mine) >= 3
    pred = np.stack([np.asarray(t[a]) for a in answers], axis=1)
    np.testing.assert_allclose(pred[[row[ids[i]] for i in mine]], pf[mine], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["no_image_column", "bad_fraction"])
def test_bad_input_exits_2_naming_file_and_key(trained, surveys, tmp_path, monkeypatch, case):
    df = pd.read_csv(surveys["paths"]["b"])
    folder = tmp_path / "in"
    shutil.copytree(surveys["paths"]["b"].parent / "images", folder / "images")
    if case == "no_image_column":
        df = df.drop(columns="file_loc")
        key = "file_loc"
    else:
        key = "disk-edge-on_yes_fraction"
        df.loc[3, key] = 1.5
    df.to_csv(folder / "cat.csv", index=False)
    r = _cli(trained, tmp_path, monkeypatch, folder)
    assert r.exit_code == 2, r.output
    assert str(folder / "cat.csv") in r.output and key in r.output
    assert not (tmp_path / "out.ecsv").exists()


def test_too_small_and_ambiguous_inputs(trained, surveys, tmp_path, monkeypatch):
    df = pd.read_csv(surveys["paths"]["b"])
    (tmp_path / "empty").mkdir()
    df.iloc[:0].to_csv(tmp_path / "empty" / "cat.csv", index=False)
    r = _cli(trained, tmp_path, monkeypatch, tmp_path / "empty")
    assert r.exit_code == 2 and "0 galaxies found, at least 1 needed" in r.output
    assert str(tmp_path / "empty" / "cat.csv") in r.output and not (tmp_path / "out.ecsv").exists()
    df.to_csv(tmp_path / "empty" / "other.csv", index=False)  # two catalogues in one folder
    r = _cli(trained, tmp_path, monkeypatch, tmp_path / "empty")
    assert r.exit_code == 2 and "found 2" in r.output, r.output


def test_evaluate_real_metrics_from_a_table(tmp_path):
    answers = ["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk",
               "smooth-or-featured_artifact", "disk-edge-on_yes", "disk-edge-on_no"]  # fmt: skip
    qindex = np.array([0, 0, 0, 1, 1])
    t = Table()
    t["galaxy_id"] = ["g0", "g1", "g2", "g3"]
    t["smooth-or-featured_featured-or-disk"] = [0.5, 0.6, 0.7, 0.8] * u.one
    t["smooth-or-featured_featured-or-disk_reference"] = [0.4, 0.6, 0.9, np.nan] * u.one
    t["disk-edge-on_no"] = [0.1, 0.2, 0.3, 0.4] * u.one
    t["disk-edge-on_no_reference"] = [0.2, 0.2, 0.2, 0.2] * u.one
    t["disk-edge-on_yes"] = [0.9, 0.8, 0.7, 0.6] * u.one  # no reference: not scored
    t.meta["id_columns"] = ["galaxy_id"]
    t.write(tmp_path / "real.ecsv")
    pred, y, votes, ids, surveys = real_from_table(tmp_path / "real.ecsv", answers, qindex)
    keep = counted(y, 0.5)
    m = set_metrics("real", pred, y, answers, keep)
    # counted pairs: featured 0.1, 0, 0.2 (g3 has no reference); edge-on 0.1, 0, 0.1, 0.2
    assert m["real/mae"] == pytest.approx((0.1 + 0 + 0.2 + 0.1 + 0 + 0.1 + 0.2) / 7)
    assert m["real/disk-edge-on_no/mae"] == pytest.approx(0.1)
    assert "real/disk-edge-on_yes/mae" not in m and list(ids) == ["g0", "g1", "g2", "g3"]
    assert np.isnan(votes).all() and list(surveys) == ["real"] * 4
    # votes per question weigh as in the shards: g1 asked disk-edge-on by 10 of 40 volunteers
    t["smooth-or-featured_votes"] = [40.0, 40.0, 40.0, 40.0] * u.one
    t["disk-edge-on_votes"] = [30.0, 10.0, 30.0, 30.0] * u.one
    t.write(tmp_path / "real.ecsv", overwrite=True)
    pred, y, votes, _, _ = real_from_table(tmp_path / "real.ecsv", answers, qindex)
    m = set_metrics("real", pred, y, answers, counted(y, 0.5))
    assert m["real/disk-edge-on_no/mae"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    assert votes[1, 4] == 10.0
    # no table, an empty path: no real metrics
    assert real_from_table(tmp_path / "missing.ecsv", answers, qindex) is None
    assert real_from_table("", answers, qindex) is None


def test_dirichlet_std_is_the_beta_marginal():
    # Beta(2, 3): var = 2 * 3 / (5**2 * 6) = 0.04; a question of one answer: no spread
    np.testing.assert_allclose(dirichlet_std(np.array([[2.0, 3.0, 5.0]]), [0, 0, 1]),
                               [[0.2, 0.2, 0.0]])  # fmt: skip


def test_a_catalogue_without_votes_is_predicted_without_references(trained, tmp_path):
    cat = pd.read_csv(REAL_DIR / "catalog.csv")
    bare = cat[[c for c in cat.columns if not c.endswith(("_fraction", "_votes"))]].head(5)
    bare = bare.assign(file_loc=[str(REAL_DIR / f) for f in bare["file_loc"]])
    bare.to_csv(tmp_path / "bare.csv", index=False)
    t = predict(trained["p"], trained["model"], [tmp_path / "bare.csv"])
    full = predict(trained["p"], trained["model"], [REAL_DIR / "catalog.csv"])
    assert list(t["galaxy_id"]) == cat["iauname"].head(5).tolist()
    assert not [c for c in t.colnames if c.endswith("_reference")]
    answers = [c for c in full.colnames if c in t.colnames and t[c].dtype.kind == "f"
               and c not in ("ra", "dec")]  # fmt: skip
    assert answers
    for a in answers:  # same images, same predictions
        np.testing.assert_allclose(np.asarray(t[a]), np.asarray(full[a][:5]), rtol=1e-6)
