"""cluster_finder catalogues: the real DR8 fixtures, both FITS layouts, round trips, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from astrobatch.errors import InputError
from astrobatch.studies.cluster_finder.catalogues import (
    CLUSTER_COLUMNS,
    GALAXY_COLUMNS,
    MAG_COLUMNS,
    MAGERR_COLUMNS,
    MEMBER_COLUMNS,
    check_in_footprint,
    check_members,
    read_clusters,
    read_galaxies,
    read_members,
    write_clusters,
    write_galaxies,
    write_members,
)
from astrobatch.studies.cluster_finder.geometry import footprint_from_positions

ROOT = Path(__file__).resolve().parents[3]
#: The real fixtures, committed (data/external/README.md).
DATA = ROOT / "data" / "external" / "cluster_finder"


def _raw(name: str):
    return fits.getdata(DATA / name, 1)


# ------------------------------------------------------------------------- real fixtures
def test_real_members_redmapper_layout():
    m = read_members(DATA / "redmapper_test_cluster_members.fit")
    raw = _raw("redmapper_test_cluster_members.fit")
    assert m.attrs["layout"] == "redmapper"
    assert list(m.columns) == list(MEMBER_COLUMNS)
    assert len(m) == 513 and m["cluster_id"].unique().tolist() == [17551]
    assert m["cluster_id"].dtype == np.int64 and m["objid"].dtype == np.int64
    for i, (mag, err) in enumerate(zip(MAG_COLUMNS, MAGERR_COLUMNS, strict=True)):
        np.testing.assert_array_equal(m[mag], raw["MAG"][:, i].astype(np.float64))
        np.testing.assert_array_equal(m[err], raw["MAG_ERR"][:, i].astype(np.float64))
    np.testing.assert_array_equal(m["p_free"], raw["PFREE"].astype(np.float64))
    np.testing.assert_array_equal(m["imag"], raw["REFMAG"].astype(np.float64))
    np.testing.assert_array_equal(m["ra"], raw["RA"])
    # the cluster's own redshift (column Z) is never read: it would leak the label
    assert not {"z", "Z", "z_lambda"} & set(m.columns)
    assert m["z_spec"].isna().all() and (m["objid"] == -1).all()


def test_real_zlamcal_spec_z_missing_is_nan():
    c = read_clusters(DATA / "redmapper_test_zlamcal_cat.fit")
    raw = _raw("redmapper_test_zlamcal_cat.fit")
    assert c.attrs["layout"] == "redmapper" and list(c.columns) == list(CLUSTER_COLUMNS)
    assert len(c) == 412
    missing = raw["BCG_SPEC_Z"] < 0
    assert missing.sum() == (raw["BCG_SPEC_Z"] == -1).sum() > 0
    assert c["z_spec"].isna().sum() == missing.sum()
    np.testing.assert_array_equal(c["z_spec"][~missing], raw["BCG_SPEC_Z"][~missing])
    np.testing.assert_array_equal(c["richness_err"], raw["LAMBDA_E"].astype(np.float64))
    np.testing.assert_array_equal(c["z_lambda_err"], raw["Z_LAMBDA_E"].astype(np.float64))


def test_real_lower_case_input_catalogue_and_member_check():
    path = DATA / "redmapper_test_dr8_input_cluster_catalog.fit"
    with pytest.raises(InputError) as e:  # no positions in this file
        read_clusters(path)
    assert "redmapper_test_dr8_input_cluster_catalog.fit" in str(e.value) and "RA" in str(e.value)
    c = read_clusters(path, require=("cluster_id", "z_lambda", "richness"))
    assert len(c) == 16041 and c["ra"].isna().all()
    np.testing.assert_array_equal(c["richness"], _raw(path.name)["lambda"].astype(np.float64))
    members_path = DATA / "redmapper_test_cluster_members.fit"
    m = read_members(members_path)
    check_members(m, c, members_path)  # cluster 17551 is in the input catalogue
    zlamcal = read_clusters(DATA / "redmapper_test_zlamcal_cat.fit")
    with pytest.raises(InputError, match=r"redmapper_test_cluster_members\.fit.*cluster_id.*513"):
        check_members(m, zlamcal, members_path)


def test_real_cluster_list_csv_and_galaxies():
    c = read_clusters(DATA / "redmapper_sdss_dr8_v5.10_clusters.csv.gz")
    assert c.attrs["layout"] == "cluster_list" and len(c) == 26350
    assert c["z_lambda"].between(0.05, 0.6).all() and c["z_spec"].isna().all()
    g = read_galaxies(DATA / "redmapper_test_dr8_gals_with_zred.fit")
    raw = _raw("redmapper_test_dr8_gals_with_zred.fit")
    assert list(g.columns) == list(GALAXY_COLUMNS) and len(g) == 4830
    np.testing.assert_array_equal(g["mag_r"], raw["MODEL_MAG"][:, 2].astype(np.float64))
    np.testing.assert_array_equal(g["magerr_z"], raw["MODEL_MAGERR"][:, 4].astype(np.float64))


@pytest.mark.parametrize("layout", ["dr8", "redmapper"])
def test_real_members_round_trip(tmp_path, layout):
    m = read_members(DATA / "redmapper_test_cluster_members.fit")
    write_members(tmp_path / "m.fits", m, layout=layout)
    back = read_members(tmp_path / "m.fits")
    assert back.attrs["layout"] == layout
    pd.testing.assert_frame_equal(back, m)


# ---------------------------------------------------------------------------- round trips
def _clusters(n=6, seed=0):
    rng = np.random.default_rng(seed)
    z_spec = rng.uniform(0.1, 0.5, n)
    z_spec[::2] = np.nan
    return pd.DataFrame(
        {
            "cluster_id": np.arange(10, 10 + n, dtype=np.int64),
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-10, 60, n),
            "z_lambda": rng.uniform(0.1, 0.5, n),
            "z_lambda_err": rng.uniform(0.001, 0.02, n),
            "z_spec": z_spec,
            "richness": rng.uniform(20, 200, n),
            "richness_err": rng.uniform(1, 5, n),
        }
    )


def _members(clusters, per=4, seed=1):
    rng = np.random.default_rng(seed)
    n = per * len(clusters)
    cols = {
        "cluster_id": np.repeat(clusters["cluster_id"].to_numpy(), per),
        "ra": np.repeat(clusters["ra"].to_numpy(), per) + rng.normal(0, 0.01, n),
        "dec": np.repeat(clusters["dec"].to_numpy(), per) + rng.normal(0, 0.01, n),
        "r": rng.uniform(0, 1, n),
        "p": rng.uniform(0, 1, n),
        "p_free": rng.uniform(0, 1, n),
        "theta_i": rng.uniform(0, 1, n),
        "theta_r": rng.uniform(0, 1, n),
    }
    for c in (*MAG_COLUMNS, "imag"):
        cols[c] = rng.uniform(16, 22, n)
    for c in (*MAGERR_COLUMNS, "imag_err"):
        cols[c] = rng.uniform(0.01, 0.3, n)
    z = rng.uniform(0.1, 0.4, n)
    z[1::3] = np.nan
    cols["z_spec"] = z
    cols["objid"] = rng.integers(1, 2**62, n)
    return pd.DataFrame({c: cols[c] for c in MEMBER_COLUMNS})


@pytest.mark.parametrize("layout", ["dr8", "redmapper"])
def test_writer_reader_round_trip(tmp_path, layout):
    c = _clusters()
    m = _members(c)
    g = m[list(GALAXY_COLUMNS)].reset_index(drop=True)
    write_clusters(tmp_path / "c.fits", c, layout=layout)
    write_members(tmp_path / "m.fits", m, layout=layout)
    write_galaxies(tmp_path / "g.fits", g, layout=layout)
    names = {h.upper() for h in fits.getdata(tmp_path / "m.fits", 1).columns.names}
    if layout == "dr8":
        assert {"ID", "P_FREE", "MODEL_MAG_U", "OBJID", "Z_SPEC"} <= names
        assert "Z_SPEC" in fits.getdata(tmp_path / "c.fits", 1).columns.names
    else:
        assert {"MEM_MATCH_ID", "PFREE", "MAG", "MAG_ERR", "REFMAG"} <= names
        assert fits.getdata(tmp_path / "m.fits", 1)["MAG"].shape == (len(m), 5)
        assert fits.getdata(tmp_path / "g.fits", 1)["MODEL_MAG"].shape == (len(g), 5)
        raw = fits.getdata(tmp_path / "c.fits", 1)["BCG_SPEC_Z"]
        assert (raw[c["z_spec"].isna().to_numpy()] == -1).all()
    for read, path, frame in [
        (read_clusters, "c.fits", c),
        (read_members, "m.fits", m),
        (read_galaxies, "g.fits", g),
    ]:
        back = read(tmp_path / path)
        assert back.attrs["layout"] == layout
        pd.testing.assert_frame_equal(back, frame)
    check_members(m, c, tmp_path / "m.fits")
    assert not list(tmp_path.glob(".*.tmp"))


def test_columns_mapping_and_optional_columns(tmp_path):
    p = tmp_path / "other_release.fits"
    Table(
        {
            "CLUSTER": np.array([1, 2]),
            "RA": [10.0, 11.0],
            "DEC": [1.0, 2.0],
            "ZPHOT": [0.2, 0.3],
            "RICH": [30.0, 40.0],
        }
    ).write(p)
    c = read_clusters(p, columns={"CLUSTER": "cluster_id", "zphot": "z_lambda", "RICH": "richness"})
    assert c["cluster_id"].tolist() == [1, 2] and c["z_lambda"].tolist() == [0.2, 0.3]
    assert c[["z_spec", "richness_err", "z_lambda_err"]].isna().all().all()
    with pytest.raises(InputError, match=r"other_release\.fits.*RICH.*unknown column 'lam'"):
        read_clusters(p, columns={"RICH": "lam"})
    with pytest.raises(InputError, match=r"other_release\.fits.*NOPE"):
        read_clusters(p, columns={"NOPE": "richness", "CLUSTER": "cluster_id", "ZPHOT": "z_lambda"})


# ------------------------------------------------------------------------------ bad input
def _write_table(path, cols):
    Table(cols).write(path, overwrite=True)
    return path


def _dr8_clusters(**changes):
    cols = {
        "ID": np.arange(1, 5),
        "RA": np.array([10.0, 20.0, 30.0, 40.0]),
        "DEC": np.array([0.0, 1.0, 2.0, 3.0]),
        "Z_LAMBDA": np.array([0.1, 0.2, 0.3, 0.4]),
        "Z_LAMBDA_ERR": np.full(4, 0.01),
        "Z_SPEC": np.array([-1.0, 0.21, -1.0, 0.41]),
        "LAMBDA": np.array([25.0, 30.0, 35.0, 40.0]),
        "LAMBDA_ERR": np.full(4, 2.0),
    }
    for k, v in changes.items():
        if v is None:
            del cols[k]
        else:
            cols[k] = v
    return cols


@pytest.mark.parametrize(
    "changes, column, expect",
    [
        ({"LAMBDA": None}, "LAMBDA", "missing required column"),
        ({"RA": np.array([10.0, np.nan, np.inf, 1.0])}, "RA", "2 NaN/inf"),
        ({"DEC": np.array([0.0, 91.0, 2.0, 3.0])}, "DEC", r"\[-90, 90\]"),
        ({"LAMBDA": np.array([25.0, 0.0, -3.0, 40.0])}, "LAMBDA", r"richness > 0, got 2 bad"),
        ({"Z_LAMBDA": np.array([0.1, 2.5, 0.0, 0.4])}, "Z_LAMBDA", r"\(0.0, 2.0\), got 2 bad"),
        ({"Z_SPEC": np.array([-1.0, 3.0, 0.2, 0.3])}, "Z_SPEC", "spectroscopic"),
        ({"ID": np.array([1, 1, 2, 3])}, "ID", "unique cluster ids"),
        ({"ID": np.array([1.0, 2.5, 3.0, 4.0])}, "ID", "integer ids"),
    ],
)
def test_bad_clusters_name_file_and_column(tmp_path, changes, column, expect):
    p = _write_table(tmp_path / "bad_clusters.fits", _dr8_clusters(**changes))
    with pytest.raises(InputError, match=expect) as e:
        read_clusters(p)
    assert str(p) in str(e.value) and f"key {column}" in str(e.value)


@pytest.mark.parametrize("layout", ["dr8", "redmapper"])
def test_bad_member_magnitudes_name_column_and_count(tmp_path, layout):
    m = _members(_clusters(2), per=3)
    p = tmp_path / "members.fits"
    write_members(p, m, layout=layout)
    t = Table.read(p)
    if layout == "dr8":
        t["MODEL_MAG_R"][[1, 4]] = np.nan
        column = "MODEL_MAG_R"
    else:
        t["MAG_ERR"][[0, 2, 5], 2] = np.inf
        column = "MAG_ERR[2]"
    t.write(p, overwrite=True)
    with pytest.raises(InputError) as e:
        read_members(p)
    msg = str(e.value)
    assert str(p) in msg and f"key {column}" in msg
    assert ("2 NaN/inf" if layout == "dr8" else "3 NaN/inf") in msg


def test_missing_member_column_and_unknown_layout(tmp_path):
    m = _members(_clusters(2), per=2)
    p = tmp_path / "members.fits"
    write_members(p, m)
    t = Table.read(p)
    del t["THETA_R"]
    t.write(p, overwrite=True)
    with pytest.raises(InputError, match=r"members.fits: key THETA_R: missing required"):
        read_members(p)
    no_id = _write_table(tmp_path / "noid.fits", {"RA": [1.0], "DEC": [2.0]})
    with pytest.raises(InputError, match=r"noid\.fits.*layout"):
        read_members(no_id)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"SIMPLE  = not really a FITS file" * 10)
    with pytest.raises(InputError, match=r"junk\.fits"):
        read_clusters(junk)
    with pytest.raises(InputError, match=r"nowhere\.fits.*not found"):
        read_members(tmp_path / "nowhere.fits")


def test_writers_refuse_bad_frames(tmp_path):
    c = _clusters()
    c.loc[2, "richness"] = -1.0
    with pytest.raises(InputError, match=r"c\.fits: key richness"):
        write_clusters(tmp_path / "c.fits", c)
    with pytest.raises(InputError, match="key mag_u"):
        write_galaxies(tmp_path / "g.fits", pd.DataFrame({"ra": [1.0], "dec": [1.0]}))
    with pytest.raises(InputError, match="layout"):
        write_clusters(tmp_path / "c.fits", _clusters(), layout="v5")
    assert not list(tmp_path.iterdir())


def test_clusters_in_footprint(tmp_path):
    c = _clusters()
    fp = footprint_from_positions(c["ra"].to_numpy()[:-1], c["dec"].to_numpy()[:-1], 32, 2.0)
    check_in_footprint(c.iloc[:-1], fp, "c.fits")
    with pytest.raises(InputError, match=r"c\.fits: key ra, dec: 1 of 6 clusters.*outside"):
        check_in_footprint(c, fp, "c.fits")
