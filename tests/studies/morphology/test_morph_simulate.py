"""The morphology simulator: file layout, vote trees, visibility, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from astrobatch.errors import InputError
from astrobatch.studies.morphology import simulate as sim
from astrobatch.studies.morphology.catalogues import read_catalogue
from astrobatch.studies.morphology.params import MorphologySimulate, SurveySpec
from astrobatch.studies.morphology.schema import DECALS, GZ2

N_GAL, SIZE = 12, 32


def _surveys(n: int = N_GAL) -> list[SurveySpec]:
    common = dict(n_galaxies=n, image_size=SIZE, band_bulge_weight=[0.8, 1.0, 1.3])
    return [
        SurveySpec(name="sdss", layout="gz2", catalogue_format="fits", image_format="jpeg",
                   bands=["g", "r", "i"], pixel_scale_arcsec=0.396, psf_fwhm_arcsec=1.4,
                   sky_sigma=0.05, volunteers_first_question=44.0, **common),
        SurveySpec(name="decals", layout="gz_decals", image_format="png", bands=["g", "r", "z"],
                   pixel_scale_arcsec=0.262, psf_fwhm_arcsec=1.2, sky_sigma=0.02, **common),
        SurveySpec(name="ukidss", layout="gz_decals", catalogue_format="fits",
                   image_format="fits", bands=["Y", "J", "K"], pixel_scale_arcsec=0.4,
                   psf_fwhm_arcsec=0.9, sky_sigma=0.08, **common),
    ]  # fmt: skip


def _params(**kw) -> MorphologySimulate:
    base = dict(seed=5, surveys=_surveys(), half_light_arcsec=(1.0, 3.0), merger_fraction=0.3,
                artifact_fraction=0.2)  # fmt: skip
    return MorphologySimulate(**{**base, **kw})


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("morph") / "raw"
    calls = []
    summary = sim.simulate_to_folder(_params(), out, progress=lambda d, t: calls.append((d, t)))
    return out, summary, calls


def _read(path) -> pd.DataFrame:
    if path.suffix == ".fits":
        return Table.read(path, hdu=1).to_pandas()
    return pd.read_csv(path)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_layout_images_and_catalogues_read_back(simulated):
    out, summary, calls = simulated
    assert sorted(p.name for p in out.iterdir()) == ["decals", "sdss", "truth.parquet", "ukidss"]
    assert calls[-1] == (3 * N_GAL, 3 * N_GAL)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    names = {"sdss": "gz2_catalogue.fits", "decals": "gz_decals_catalogue.csv",
             "ukidss": "gz_decals_catalogue.fits"}  # fmt: skip
    for survey in _surveys():
        folder = out / survey.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(["images", names[survey.name]])
        df = _read(folder / names[survey.name])
        assert len(df) == N_GAL
        id_col = "dr7objid" if survey.layout == "gz2" else "iauname"
        assert df[id_col].is_unique
        assert set(df["survey"].astype(str).str.strip()) == {survey.name}
        assert df["ra"].between(0, 360).all() and df["dec"].between(-90, 90).all()
        files = df["file_loc"].astype(str).str.strip()
        assert len(list((folder / "images").iterdir())) == N_GAL
        for rel in files:
            path = folder / rel
            assert path.is_file()
            if survey.image_format == "fits":
                with fits.open(path) as hdul:
                    data, h = hdul[0].data, hdul[0].header
                    assert data.shape == (3, SIZE, SIZE) and data.dtype.kind == "f"
                    assert data.dtype.itemsize == 4 and h["BITPIX"] == -32
                    assert h["BANDS"] == "K,J,Y" and h["SURVEY"] == "ukidss"
                    assert h["PIXSCALE"] == pytest.approx(0.4) and "BUNIT" in h
                    assert np.isfinite(data).all()
            else:
                with Image.open(path) as img:
                    assert img.format == ("JPEG" if survey.image_format == "jpeg" else "PNG")
                    assert img.mode == "RGB" and img.size == (SIZE, SIZE)
                    arr = np.asarray(img)
                assert arr.max() > arr.min()  # not blank
        assert summary["surveys"][survey.name]["n_galaxies"] == N_GAL
    assert summary["n_galaxies"] == 3 * N_GAL and summary["seconds"] > 0


def test_catalogues_read_through_the_project_reader(simulated):
    out, _, _ = simulated
    cat = read_catalogue(out / "sdss" / "gz2_catalogue.fits", "sdss")
    assert cat.layout == "gz2" and cat.n == N_GAL and cat.has_counts
    assert all(p.is_file() for p in cat.images)
    cat = read_catalogue(out / "decals" / "gz_decals_catalogue.csv", "decals")
    assert cat.layout == "gz_decals" and set(cat.counts) == set(DECALS.answer_names)
    assert all(p.is_file() for p in cat.images)


@pytest.mark.parametrize("name", ["sdss", "decals", "ukidss"])
def test_counts_follow_the_tree(simulated, name):
    out, _, _ = simulated
    path = next(p for p in (out / name).iterdir() if p.name.endswith(("csv", "fits")))
    df = _read(path)
    gz2 = name == "sdss"
    schema = GZ2 if gz2 else DECALS
    count_cols = [f"{a}_count" if gz2 else a for a in schema.answer_names]
    counts = df[count_cols].to_numpy()
    assert np.issubdtype(counts.dtype, np.integer) and (counts >= 0).all()
    totals = schema.total_votes(counts)
    for k, q in enumerate(schema.questions):
        parent = schema.parent_answer[k]
        if parent >= 0:
            np.testing.assert_array_equal(totals[:, k], counts[:, parent])
        if not gz2:
            np.testing.assert_array_equal(df[f"{q.name}_total-votes"].to_numpy(), totals[:, k])
    frac = df[[f"{a}_fraction" for a in schema.answer_names]].to_numpy()
    np.testing.assert_allclose(frac, schema.fractions(counts), atol=1e-12)
    if gz2:
        np.testing.assert_array_equal(df["total_classifications"], totals[:, 0])
        np.testing.assert_array_equal(df["total_votes"], counts.sum(axis=1))
        for a in schema.answer_names:
            np.testing.assert_allclose(df[f"{a}_debiased"], df[f"{a}_fraction"])
    assert (totals[:, 0] > 0).all()
    assert (totals == 0).any()  # some questions nobody reached


def test_truth_table(simulated):
    out, _, _ = simulated
    truth = pd.read_parquet(out / "truth.parquet")
    assert len(truth) == 3 * N_GAL and truth["id"].is_unique
    for col in ("bulge_to_total", "sersic_n", "half_light_arcsec", "axis_ratio",
                "inclination_deg", "bar_strength", "arm_strength", "n_arms", "pitch_angle_deg",
                "clump_fraction", "merger", "artifact"):  # fmt: skip
        assert col in truth.columns
    p = truth[[f"p_{a}" for a in DECALS.answer_names]].to_numpy()
    sums = np.zeros((len(p), len(DECALS.questions)))
    np.add.at(sums.T, DECALS.question_index, p.T)
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)
    df = pd.read_csv(out / "decals" / "gz_decals_catalogue.csv")
    dec = truth[truth["survey"] == "decals"]
    assert list(dec["id"]) == list(df["iauname"])
    np.testing.assert_array_equal(dec["n_volunteers"], df["smooth-or-featured_total-votes"])
    assert truth["sersic_n"].between(1.5, 4.0).all()


# ----------------------------------------------------------------------------------------------
# Votes
# ----------------------------------------------------------------------------------------------


def _random_probabilities(schema, n, rng) -> np.ndarray:
    p = np.zeros((n, len(schema.answer_names)))
    for k in range(len(schema.questions)):
        cols = np.flatnonzero(schema.question_index == k)
        p[:, cols] = rng.dirichlet(np.ones(len(cols)), n)
    return p


@pytest.mark.parametrize("schema", [DECALS, GZ2], ids=["decals", "gz2"])
def test_simulate_votes_tree_and_mean(schema):
    rng = np.random.default_rng(0)
    n = rng.poisson(40.0, 300)
    counts = sim.simulate_votes(_random_probabilities(schema, 300, rng), n, schema, rng)
    assert counts.dtype == np.int64 and (counts >= 0).all()
    totals = schema.total_votes(counts)
    np.testing.assert_array_equal(totals[:, 0], n)
    for k, parent in enumerate(schema.parent_answer):
        if parent >= 0:
            np.testing.assert_array_equal(totals[:, k], counts[:, parent])
    assert abs(totals[:, 0].mean() - 40.0) < 1.5  # sd of the mean ~0.37
    assert (totals[:, 1:].mean(axis=0) < totals[:, 0].mean()).any()


def test_simulate_votes_expected_counts_match_a_volunteer_walk():
    """E[count] = volunteers x P(reaching the question) x P(answer): the per-volunteer walk."""
    rng = np.random.default_rng(1)
    p = _random_probabilities(DECALS, 1, rng)[0]
    n_gal, n_vol = 3000, 40
    counts = sim.simulate_votes(np.tile(p, (n_gal, 1)), np.full(n_gal, n_vol), DECALS, rng)
    reach = np.ones(len(DECALS.questions))
    for k, parent in enumerate(DECALS.parent_answer):
        if parent >= 0:
            reach[k] = reach[DECALS.question_index[parent]] * p[parent]
    expected = n_vol * reach[DECALS.question_index] * p
    se = np.sqrt(expected * (1 - expected / n_vol) / n_gal) + 1e-9
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 5 * se + 1e-3)


def test_simulate_votes_rejects_bad_shapes():
    with pytest.raises(ValueError):
        sim.simulate_votes(np.ones((3, 5)), 10, DECALS, np.random.default_rng(0))


def test_mean_first_question_votes_follow_the_param():
    rng = np.random.default_rng(2)
    n = rng.poisson(25.0, 400)
    counts = sim.simulate_votes(_random_probabilities(DECALS, 400, rng), n, DECALS, rng)
    assert abs(DECALS.total_votes(counts)[:, 0].mean() - 25.0) < 1.2


# ----------------------------------------------------------------------------------------------
# Probabilities and visibility
# ----------------------------------------------------------------------------------------------


def _structures(n: int, seed: int = 3) -> list[sim.GalaxyStructure]:
    p = _params()
    return [sim.draw_structure(p, np.random.default_rng((seed, 0, i))) for i in range(n)]


def test_worse_images_get_fewer_featured_votes():
    structs = _structures(200)
    p_true = np.stack([sim.true_probabilities(s) for s in structs])
    r = np.array([s.half_light_arcsec for s in structs])
    sb = np.array([s.surface_brightness for s in structs])
    good, bad = (
        _surveys()[1],
        _surveys()[0].model_copy(update={"psf_fwhm_arcsec": 2.5, "sky_sigma": 0.2}),
    )
    j = DECALS.answer_names.index("smooth-or-featured_featured-or-disk")
    seen = {}
    for name, survey in (("good", good), ("bad", bad)):
        v_f, v_d = sim.visibility(r, sb, survey)
        assert ((v_f > 0) & (v_f <= 1) & (v_d <= v_f)).all()
        seen[name] = sim.apply_visibility(p_true, v_f, v_d)
        sums = np.zeros((len(structs), len(DECALS.questions)))
        np.add.at(sums.T, DECALS.question_index, seen[name].T)
        np.testing.assert_allclose(sums, 1.0, atol=1e-9)
    assert (seen["bad"][:, j] <= seen["good"][:, j] + 1e-12).all()
    assert seen["bad"][:, j].mean() < seen["good"][:, j].mean() - 0.05
    # and through the volunteers: the same galaxies, votes of a bad vs a good survey
    rng = np.random.default_rng(4)
    frac = {
        k: DECALS.fractions(sim.simulate_votes(v, 40, DECALS, rng))[:, j].mean()
        for k, v in seen.items()
    }
    assert frac["bad"] < frac["good"]


def test_edge_on_discs_get_more_edge_on_votes():
    structs = [s for s in _structures(80) if s.bulge_to_total < 0.8]
    j = DECALS.answer_names.index("disk-edge-on_yes")
    edge = [sim.true_probabilities(dataclasses.replace(s, inclination_deg=86.0))[j]
            for s in structs]  # fmt: skip
    face = [sim.true_probabilities(dataclasses.replace(s, inclination_deg=15.0))[j]
            for s in structs]  # fmt: skip
    assert np.all(np.array(edge) > np.array(face))
    assert np.mean(edge) > 0.7 and np.mean(face) < 0.1


def test_structure_sets_the_answers():
    structs = _structures(300)
    p = np.stack([sim.true_probabilities(s) for s in structs])
    col = DECALS.answer_names.index
    kind = np.array([s.kind for s in structs])
    smooth = p[:, col("smooth-or-featured_smooth")]
    assert smooth[kind == "elliptical"].mean() > smooth[kind == "spiral"].mean() + 0.3
    arms = p[:, col("has-spiral-arms_yes")]
    assert arms[kind == "spiral"].mean() > arms[kind == "elliptical"].mean() + 0.3
    bar = np.array([s.bar_strength for s in structs])
    strong = p[:, col("bar_strong")]
    assert strong[bar > 0.6].mean() > strong[bar == 0].mean() + 0.3
    art = np.array([s.artifact_kind == "star" for s in structs])
    if art.any():
        assert p[art, col("smooth-or-featured_artifact")].min() > 0.5


def test_gz2_probabilities_are_distributions_and_share_answers():
    structs = _structures(50)
    dec = np.stack([sim.true_probabilities(s) for s in structs])
    g = sim.gz2_probabilities(dec, [s.clump_fraction for s in structs])
    assert g.shape == (50, len(GZ2.answer_names)) and (g >= 0).all()
    sums = np.zeros((50, len(GZ2.questions)))
    np.add.at(sums.T, GZ2.question_index, g.T)
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)
    spiral = g[:, GZ2.answer_names.index("t04_spiral_a08_spiral")]
    np.testing.assert_allclose(spiral, dec[:, DECALS.answer_names.index("has-spiral-arms_yes")])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def test_rendered_flux_matches_the_surface_brightness_unit():
    """Sum of a band with weight 1 x pixel area = the galaxy's flux (noise averages out)."""
    survey = _surveys()[1].model_copy(update={"image_size": 96, "band_bulge_weight": [1, 1, 1]})
    for s in _structures(6, seed=8):
        s = dataclasses.replace(s, merger=False, artifact=False, artifact_kind="none")
        planes = sim.render_galaxy(s, survey, np.random.default_rng(0))
        assert planes.shape == (3, 96, 96) and planes.dtype == np.float32
        total = planes.astype(np.float64).sum(axis=(1, 2)) * survey.pixel_scale_arcsec**2
        np.testing.assert_allclose(total, s.flux, rtol=0.08)


def test_bulges_are_red_and_planes_are_reddest_first():
    survey = _surveys()[2]
    s = next(x for x in _structures(40, seed=9) if x.kind == "elliptical")
    s = dataclasses.replace(s, merger=False, artifact=False, artifact_kind="none")
    planes = sim.render_galaxy(s, survey, np.random.default_rng(0)).astype(np.float64)
    cube, names = sim.rgb_planes(planes, survey.bands)
    assert names == ["K", "J", "Y"]
    ratio = cube[0].sum() / cube[2].sum()  # K / Y
    w = survey.band_bulge_weight
    assert ratio == pytest.approx(
        (s.bulge_to_total * w[2] + 1 - s.bulge_to_total)
        / (s.bulge_to_total * w[0] + 1 - s.bulge_to_total),
        rel=0.1,
    )


# ----------------------------------------------------------------------------------------------
# Determinism and atomicity
# ----------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_for_any_n_workers(tmp_path, monkeypatch):
    p = _params(surveys=_surveys(4)[:2])
    sim.simulate_to_folder(p, tmp_path / "a")
    sim.simulate_to_folder(p, tmp_path / "b")
    monkeypatch.setattr(sim, "CHUNK", 3)  # other blocks, two processes
    sim.simulate_to_folder(p.model_copy(update={"n_workers": 2}), tmp_path / "c")
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert len(a) == 2 * 4 + 2 + 1
    assert a == b == c
    sim.simulate_to_folder(p.model_copy(update={"seed": 6}), tmp_path / "d")
    d = _files(tmp_path / "d")
    assert d.keys() == a.keys() and d["truth.parquet"] != a["truth.parquet"]


def test_failed_run_leaves_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    calls = {"n": 0}
    real = sim.encode_image

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(sim, "encode_image", failing)
    with pytest.raises(RuntimeError):
        sim.simulate_to_folder(_params(surveys=_surveys(4)[:1]), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_bad_params_are_refused(tmp_path):
    bad = _surveys(2)[1].model_copy(update={"band_bulge_weight": [1.0, 1.0]})
    with pytest.raises(InputError, match="band_bulge_weight"):
        sim.simulate_to_folder(_params(surveys=[bad]), tmp_path / "x")
    twice = _surveys(2)[1]
    with pytest.raises(InputError, match="unique"):
        sim.simulate_to_folder(_params(surveys=[twice, twice]), tmp_path / "x")
    assert not (tmp_path / "x").exists()
