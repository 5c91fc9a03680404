"""cluster_finder simulator: a tiny sky (4 clusters, 2 empty fields, 32 px) end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrobatch.errors import InputError
from astrobatch.studies.cluster_finder.catalogues import (
    read_clusters,
    read_galaxies,
    read_members,
)
from astrobatch.studies.cluster_finder.geometry import (
    in_footprint,
    min_separation_arcmin,
    read_footprint,
    sky_to_pixel,
)
from astrobatch.studies.cluster_finder.simulate import IMAGE_COLUMNS, simulate_sky

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data" / "external" / "cluster_finder"
CLUSTER_LIST = DATA / "redmapper_sdss_dr8_v5.10_clusters.csv.gz"
GALAXIES = DATA / "redmapper_test_dr8_gals_with_zred.fit"
TINY = dict(n_clusters=4, n_empty=2, image_size=32, native_size=64, field_arcmin=8.0, seed=5)
CATALOGUES = ("clusters.fits", "members.fits", "galaxies.fits", "images.csv", "footprint.fits")

DR8_CLUSTERS = ["ID", "RA", "DEC", "Z_LAMBDA", "Z_LAMBDA_ERR", "Z_SPEC", "LAMBDA", "LAMBDA_ERR"]
BANDS = "UGRIZ"
DR8_MEMBERS = ["ID", "RA", "DEC", "R", "P", "P_FREE", "THETA_I", "THETA_R",
               *[f"MODEL_MAG_{b}" for b in BANDS], *[f"MODEL_MAGERR_{b}" for b in BANDS],
               "IMAG", "IMAG_ERR", "Z_SPEC", "OBJID"]  # fmt: skip
DR8_GALAXIES = ["RA", "DEC", *[f"MODEL_MAG_{b}" for b in BANDS],
                *[f"MODEL_MAGERR_{b}" for b in BANDS]]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (CLUSTER_LIST.is_file() and GALAXIES.is_file()),
    reason="real redMaPPer list / DR8 galaxy table not in data/external/cluster_finder",
)


def _run(out: Path, **changes) -> dict:
    kw = {**TINY, **changes}
    return simulate_sky(out, cluster_list=CLUSTER_LIST, galaxy_table=GALAXIES, **kw)


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "sky"
    summary = _run(out)
    return out, summary


def test_every_file_is_written(sky):
    out, summary = sky
    for name in (*CATALOGUES, "truth.parquet", "truth_members.parquet"):
        assert (out / name).is_file(), name
    images = pd.read_csv(out / "images.csv")
    assert list(images.columns) == list(IMAGE_COLUMNS)
    assert (images["kind"] == "cluster").sum() == 4 and (images["kind"] == "empty").sum() == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(f).name for f in images["file"]
    )
    assert summary["n_images"] == 6 and summary["n_clusters"] >= 4
    assert not list(out.parent.glob(".sky.*"))  # the temporary folder was swapped in


def test_images_are_finite_cubes_with_centre_and_wcs(sky):
    out, _ = sky
    images = pd.read_csv(out / "images.csv")
    members = read_members(out / "members.fits")
    for row in images.itertuples():
        with fits.open(out / row.file) as hdul:
            cube, header = hdul[0].data, hdul[0].header
        assert cube.shape == (3, 32, 32) and cube.dtype.newbyteorder("=") == np.float32
        assert np.isfinite(cube).all()
        assert header["BANDS"] == "g,r,i"
        assert header["RA"] == pytest.approx(row.ra) and header["DEC"] == pytest.approx(row.dec)
        assert header["PIXSCALE"] == pytest.approx(row.pixel_scale_arcsec)
        assert header["PIXSCALE"] == pytest.approx(8.0 * 60 / 32)
        assert header["NATPIXSC"] == pytest.approx(0.396127)
        # the WCS places sky positions where geometry.sky_to_pixel does
        ra, dec = members["ra"].to_numpy()[:20], members["dec"].to_numpy()[:20]
        xw, yw = WCS(header, naxis=2).world_to_pixel_values(ra, dec)
        x, y = sky_to_pixel(ra, dec, row.ra, row.dec, row.pixel_scale_arcsec, row.size)
        np.testing.assert_allclose(xw, x, atol=1e-6)
        np.testing.assert_allclose(yw, y, atol=1e-6)


def test_cluster_centres_are_brighter_than_empty_fields(sky):
    out, _ = sky
    images = pd.read_csv(out / "images.csv")
    clusters = read_clusters(out / "clusters.fits").set_index("cluster_id")
    centre, empty = [], []
    for row in images.itertuples():
        cube = fits.getdata(out / row.file).astype(np.float64)
        if row.kind == "cluster":
            c = clusters.loc[row.cluster_id]
            x, y = sky_to_pixel(c.ra, c.dec, row.ra, row.dec, row.pixel_scale_arcsec, row.size)
            ix, iy = int(np.rint(x)), int(np.rint(y))
            centre.append(cube[:, iy - 3 : iy + 4, ix - 3 : ix + 4].sum(axis=0).mean())
        else:
            empty.append(cube[:, 12:19, 12:19].sum(axis=0).mean())
    assert np.mean(centre) > 2 * np.mean(empty)


def test_catalogues_reread_with_dr8_column_names(sky):
    out, _ = sky
    assert Table.read(out / "clusters.fits").colnames == DR8_CLUSTERS
    assert Table.read(out / "members.fits").colnames == DR8_MEMBERS
    assert Table.read(out / "galaxies.fits").colnames == DR8_GALAXIES
    clusters = read_clusters(out / "clusters.fits")
    members = read_members(out / "members.fits")
    galaxies = read_galaxies(out / "galaxies.fits")
    assert clusters.attrs["layout"] == "dr8" and members.attrs["layout"] == "dr8"
    assert len(galaxies) > 0
    assert set(members["cluster_id"]) == set(clusters["cluster_id"])  # secondaries included
    assert members["objid"].is_unique
    assert members["p"].between(0, 1).all() and members["p_free"].between(0, 1).all()
    # the BCG (P = 1) sits at its cluster's position
    real = read_clusters(CLUSTER_LIST).set_index("cluster_id")
    for c in clusters.itertuples():
        bcg = members[(members["cluster_id"] == c.cluster_id) & (members["r"] == 0)]
        assert len(bcg) == 1 and bcg["p"].iloc[0] == 1.0
        assert bcg["ra"].iloc[0] == pytest.approx(c.ra) and c.ra == pytest.approx(
            real.ra[c.cluster_id]
        )
        assert c.richness == pytest.approx(real.richness[c.cluster_id])
        assert c.z_lambda == pytest.approx(real.z_lambda[c.cluster_id])
    truth = pd.read_parquet(out / "truth.parquet")
    assert set(truth["cluster_id"]) == set(clusters["cluster_id"])
    assert truth["primary"].sum() == 4
    primary = truth[truth["primary"]]
    assert primary["z_lambda"].between(*[0.08, 0.35]).all() and (primary["richness"] >= 20).all()
    assert (truth["n_members"] >= 1).all()


def test_every_real_cluster_in_a_cutout_is_populated(sky):
    out, _ = sky
    images = pd.read_csv(out / "images.csv")
    real = read_clusters(CLUSTER_LIST)
    ids = set(read_clusters(out / "clusters.fits")["cluster_id"])
    for row in images[images["kind"] == "cluster"].itertuples():
        x, y = sky_to_pixel(real["ra"], real["dec"], row.ra, row.dec, row.pixel_scale_arcsec, 32)
        inside = (x >= -0.5) & (x <= 31.5) & (y >= -0.5) & (y <= 31.5)
        assert inside.sum() == row.n_clusters >= 1
        assert set(real["cluster_id"][inside]) <= ids


def test_empty_fields_far_from_clusters_inside_the_footprint(sky):
    out, _ = sky
    images = pd.read_csv(out / "images.csv")
    empty = images[images["kind"] == "empty"]
    real = read_clusters(CLUSTER_LIST)
    sep = min_separation_arcmin(empty["ra"], empty["dec"], real["ra"], real["dec"])
    assert (sep >= 20.0).all()
    footprint = read_footprint(out / "footprint.fits")
    assert in_footprint(footprint, images["ra"], images["dec"]).all()
    assert (empty["cluster_id"] == -1).all() and (empty["n_clusters"] == 0).all()


def test_same_seed_same_bytes_other_seed_other_sky(sky, tmp_path):
    out, _ = sky
    again = tmp_path / "again"
    _run(again)
    for name in CATALOGUES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    for f in pd.read_csv(out / "images.csv")["file"]:
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    other = tmp_path / "other"
    _run(other, seed=6)
    assert (other / "members.fits").read_bytes() != (out / "members.fits").read_bytes()


def test_bad_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="native_size"):
        _run(tmp_path / "x", native_size=48)
    with pytest.raises(InputError, match="n_clusters"):
        _run(tmp_path / "x", min_richness=1e6)
    assert not (tmp_path / "x").exists()
