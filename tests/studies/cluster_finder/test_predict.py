"""cluster_finder predict: member-set models applied to real redMaPPer member catalogues."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table
from typer.testing import CliRunner

from astrobatch.cli import app
from astrobatch.errors import InputError
from astrobatch.params import TrainingParams
from astrobatch.studies.cluster_finder.catalogues import catalogue_kind, read_members
from astrobatch.studies.cluster_finder.evaluate import read_real_predictions
from astrobatch.studies.cluster_finder.geometry import mass_proxy
from astrobatch.studies.cluster_finder.members import (
    load_members_model,
    predict_sets,
    train_members,
)
from astrobatch.studies.cluster_finder.params import (
    ClusterFinderParams,
    MembersTarget,
    SamplingParams,
    SetModelParams,
)
from astrobatch.studies.cluster_finder.predict import predict, real_metrics
from astrobatch.studies.cluster_finder.prepare import prepare
from astrobatch.study import StudyPaths
from tests.studies.cluster_finder.test_prepare import (
    REAL_CLUSTERS,
    REAL_MEMBERS,
    data_params,
    simulate_tiny,
)

pytestmark = pytest.mark.skipif(
    not (REAL_MEMBERS.is_file() and REAL_CLUSTERS.is_file()),
    reason="real redMaPPer files not in data/external/cluster_finder",
)
TARGETS = ("redshift", "richness")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine are ~20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_params() -> ClusterFinderParams:
    """Tiny member-set models; the richness one keeps k = 10 (sets smaller than 10 happen)."""

    def spec(k: int, n: int) -> MembersTarget:
        return MembersTarget(
            sampling=SamplingParams(num_star_per_sample=n, num_sample_per_snapshot=2),
            model=SetModelParams(hidden_dim=8, janossy_k=k, n_tuples_train=8, n_tuples_eval=16,
                                 janossy_count_feature=k > 2),
            training=TrainingParams(accelerator="cpu", batch_size=16, max_epochs=1, patience=5),
        )  # fmt: skip

    return ClusterFinderParams(seed=3, redshift=spec(2, 16), richness=spec(10, 32))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root: the tiny sky, data/prepared/cluster_finder, models/cluster_finder/*."""
    root = tmp_path_factory.mktemp("cf_predict")
    sky = simulate_tiny(root / "sky")
    prepared = root / "data" / "prepared" / "cluster_finder"
    prepare(data_params(sky), prepared)
    p = tiny_params()
    for which in TARGETS:
        paths = StudyPaths(prepared=prepared, models=root / "models" / "cluster_finder" / which,
                           live=root / "live" / which)  # fmt: skip
        train_members(p, paths, which)
    (root / "params.yaml").write_text(yaml.safe_dump({"cluster_finder": p.model_dump(mode="json")}))
    return root


def _cli(root: Path, *args) -> object:
    return CliRunner().invoke(
        app, ["cluster-finder", "predict", "-p", str(root / "params.yaml"), *map(str, args)]
    )


def _predict(root: Path, inputs) -> Table:
    return predict(tiny_params(), root / "models" / "cluster_finder", inputs)


# --------------------------------------------------------------------------- round trip
def test_cli_round_trip_ecsv_and_fits(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)  # --model relative to the project
    ref = _predict(project, [REAL_MEMBERS, REAL_CLUSTERS])
    # the values of evaluate's former real/ metrics: the prepared real.h5 set, same draws
    p, prepared = tiny_params(), project / "data" / "prepared" / "cluster_finder"
    old = {}
    for which in TARGETS:
        folder, spec = prepared / f"members_{which}", getattr(p, which)
        model = load_members_model(spec, folder, project / "models" / "cluster_finder" / which)
        old[which] = predict_sets(model, folder, "real", spec.sampling, p.seed)["prediction"][0]
    assert ref["z_lambda"][0] == pytest.approx(old["redshift"], rel=1e-12)
    assert ref["lambda"][0] == pytest.approx(old["richness"], rel=1e-12)

    folder = tmp_path / "real"  # one folder with both tables: told apart by their columns
    folder.mkdir()
    shutil.copy2(REAL_MEMBERS, folder)
    shutil.copy2(REAL_CLUSTERS, folder)
    cases = [("p.ecsv", ["--input", REAL_MEMBERS, "--input", REAL_CLUSTERS]),
             ("p.fits", ["--input", REAL_CLUSTERS, "--input", REAL_MEMBERS]),
             ("folder.ecsv", ["--input", folder])]  # fmt: skip
    for name, inputs in cases:
        out = tmp_path / name
        res = _cli(project, "--model", "models/cluster_finder", *inputs, "--out", out)
        assert res.exit_code == 0, res.output
        t = Table.read(out)
        assert len(t) == 1  # the members of one real cluster
        assert t["mem_match_id"].tolist() == [17551] and t["n_members"].tolist() == [513]
        for c in ("z_lambda", "lambda", "mass", "ra", "dec"):
            assert np.isfinite(t[c]).all()
            np.testing.assert_allclose(t[c], ref[c], rtol=1e-12)
        assert t["ra"].unit == u.deg and t["dec"].unit == u.deg
        assert t["mass"].unit == u.Msun and t["mass_reference"].unit == u.Msun
        # redMaPPer's values of the catalogue; the mass proxy of each richness
        assert t["z_lambda_reference"][0] == pytest.approx(0.2286544, abs=1e-6)
        assert t["lambda_reference"][0] == pytest.approx(24.442682, abs=1e-5)
        np.testing.assert_allclose(t["mass"], mass_proxy(ref["lambda"]), rtol=1e-12)
        assert t["mass_reference"][0] == pytest.approx(float(mass_proxy(24.442682)), rel=1e-6)
        # no position in the catalogue: the central member's (R = 0)
        m = read_members(REAL_MEMBERS)
        c = m.iloc[int(np.argmin(m["r"]))]
        assert (t["ra"][0], t["dec"][0]) == pytest.approx((c["ra"], c["dec"]))
        if name.endswith(".ecsv"):
            for c in ("z_lambda", "z_lambda_reference", "lambda", "n_members"):
                assert t[c].unit == u.dimensionless_unscaled
            assert t.meta["id_columns"] == ["mem_match_id"]
            assert t.meta["study"] == "cluster_finder" and "Z_LAMBDA" in t.meta["reference"]
        else:
            assert t.meta["IDCOLS"] == "mem_match_id"


def test_dr8_layout_many_clusters(project):
    """The simulated sky's dr8 catalogues: one row per cluster, positions from the catalogue."""
    sky = project / "sky"
    t = _predict(project, [sky / "members.fits", sky / "clusters.fits"])
    ids, n = np.unique(read_members(sky / "members.fits")["cluster_id"], return_counts=True)
    assert t["mem_match_id"].tolist() == ids.tolist() and t["n_members"].tolist() == n.tolist()
    cl = Table.read(sky / "clusters.fits")
    cl = cl[np.searchsorted(cl["ID"], ids)]
    np.testing.assert_allclose(t["ra"], cl["RA"])
    np.testing.assert_allclose(t["z_lambda_reference"], cl["Z_LAMBDA"])
    assert np.isfinite(t["z_lambda"]).all() and (t["lambda"] > 0).all()
    m = real_metrics(t)
    assert m["real/n_clusters"] == len(ids) > 1 and "real/redshift/sigma_nmad" in m


# --------------------------------------------------------------------------- bad input
def _edit(src: Path, dst: Path, edit) -> Path:
    t = Table.read(src)
    t = edit(t) or t
    t.write(dst, overwrite=True)
    return dst


def _drop_theta_i(t):
    t.remove_column("THETA_I")


def _nan_magnitude(t):
    t["MAG"][7, 2] = np.nan


BAD_MEMBERS = [(_drop_theta_i, "THETA_I", "missing required column"),
               (_nan_magnitude, "MAG[2]", "NaN")]  # fmt: skip


@pytest.mark.parametrize("edit, key, match", BAD_MEMBERS, ids=["no_theta_i", "nan_mag"])
def test_bad_members_exit_2_nothing_written(project, tmp_path, edit, key, match):
    bad = _edit(REAL_MEMBERS, tmp_path / "members.fit", edit)
    out = tmp_path / "p.ecsv"
    res = _cli(project, "--model", project / "models" / "cluster_finder", "--input", bad,
               "--input", REAL_CLUSTERS, "--out", out)  # fmt: skip
    assert res.exit_code == 2, res.output
    assert str(bad) in res.output and f"key {key}" in res.output and match in res.output
    assert not out.exists()


def test_orphan_members_and_two_cluster_catalogues(project, tmp_path):
    # the cluster catalogue without the members' cluster
    cat = _edit(REAL_CLUSTERS, tmp_path / "clusters.fit",
                lambda t: t[t["mem_match_id"] != 17551])  # fmt: skip
    with pytest.raises(InputError, match=r"513 of 513 member rows.*\[17551\]") as err:
        _predict(project, [REAL_MEMBERS, cat])
    assert err.value.path == str(REAL_MEMBERS) and err.value.key == "cluster_id"
    with pytest.raises(InputError, match="2 cluster catalogues"):
        _predict(project, [REAL_MEMBERS, cat, REAL_CLUSTERS])
    with pytest.raises(InputError, match="no member catalogue"):
        _predict(project, [REAL_CLUSTERS])


def test_too_few_members(project, tmp_path):
    small = _edit(REAL_MEMBERS, tmp_path / "two.fit", lambda t: t[:2])
    out = tmp_path / "p.fits"
    res = _cli(project, "--model", project / "models" / "cluster_finder", "--input", small,
               "--input", REAL_CLUSTERS, "--out", out)  # fmt: skip
    assert res.exit_code == 2 and not out.exists()
    text = " ".join(res.output.split())
    assert str(small) in text and "members found 17551: 2" in text
    assert "needed at least 3 members" in text


def test_catalogue_kind_of_both_layouts(project, tmp_path):
    sky = project / "sky"
    assert catalogue_kind(REAL_MEMBERS) == "members"  # redmapper layout
    assert catalogue_kind(REAL_CLUSTERS) == "clusters"
    assert catalogue_kind(sky / "members.fits") == "members"  # dr8 layout
    assert catalogue_kind(sky / "clusters.fits") == "clusters"
    neither = tmp_path / "ids.fits"
    Table({"MEM_MATCH_ID": [1, 2], "RA": [1.0, 2.0]}).write(neither)
    with pytest.raises(InputError, match="cannot tell a member catalogue") as err:
        catalogue_kind(neither)
    assert err.value.path == str(neither)


# --------------------------------------------------------------------------- evaluate
def _table(z, z_ref, lam, lam_ref, n):
    t = Table({"mem_match_id": np.arange(len(z))})
    for c, v in (("z_lambda", z), ("z_lambda_reference", z_ref), ("lambda", lam),
                 ("lambda_reference", lam_ref), ("n_members", n)):  # fmt: skip
        t[c] = np.asarray(v, float) * u.dimensionless_unscaled
    t.meta["id_columns"] = ["mem_match_id"]
    return t


def test_real_metrics_from_a_predictions_table(tmp_path, caplog):
    path = tmp_path / "real.ecsv"
    _table([0.25], [0.2], [30.0], [24.0], [513]).write(path)
    m = real_metrics(read_real_predictions(str(path)))
    assert m == {"real/n_clusters": 1, "real/redshift_pred": 0.25,
                 "real/redshift_redmapper": 0.2, "real/richness_pred": 30.0,
                 "real/richness_redmapper": 24.0, "real/n_members": 513}  # fmt: skip
    # two clusters: dz/(1+z) of 0.1 and 0.0; richness ratios 10x and 1x
    two = real_metrics(_table([0.32, 0.3], [0.2, 0.3], [100.0, 20.0], [10.0, 20.0], [40, 50]))
    assert two["real/n_clusters"] == 2
    assert two["real/redshift/bias"] == pytest.approx(0.05)
    assert two["real/redshift/outlier_fraction"] == 0.5
    assert two["real/richness/bias_dex"] == pytest.approx(0.5)
    assert two["real/richness/scatter_dex"] == pytest.approx(0.5)
    assert "real/redshift_pred" not in two
    with caplog.at_level(logging.INFO):
        assert read_real_predictions(str(tmp_path / "absent.ecsv")) is None
        assert read_real_predictions(None) is None and read_real_predictions("") is None
    assert "absent.ecsv" in caplog.text
    t = _table([0.25], [0.2], [30.0], [24.0], [513])
    t.remove_column("lambda_reference")
    t.write(tmp_path / "short.ecsv")
    with pytest.raises(InputError, match="missing column lambda_reference") as err:
        real_metrics(read_real_predictions(str(tmp_path / "short.ecsv")))
    assert err.value.path == str(tmp_path / "short.ecsv")


def test_model_folder_alone_predicts(project, tmp_path):
    """The train stages keep manifest and scalers with each model: a copy predicts alike."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(project / "models" / "cluster_finder", moved)
    ref = _predict(project, [REAL_MEMBERS, REAL_CLUSTERS])
    t = predict(tiny_params(), moved, [REAL_MEMBERS, REAL_CLUSTERS])
    assert t["z_lambda"][0] == ref["z_lambda"][0] and t["lambda"][0] == ref["lambda"][0]
    (moved / "richness" / "scalers.json").unlink()
    res = _cli(project, "--model", moved, "--input", REAL_MEMBERS, "--input", REAL_CLUSTERS,
               "--out", tmp_path / "x.ecsv")  # fmt: skip
    assert res.exit_code == 2 and "scalers.json" in res.output
    assert not (tmp_path / "x.ecsv").exists()
