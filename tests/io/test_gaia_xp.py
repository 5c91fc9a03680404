"""Real Gaia XP files in every layout: flat FITS, archive FITS/ECSV/CSV, missing BP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astrobatch.errors import InputError
from astrobatch.io.gaia_xp import read_gaia_xp, xp_output_columns

ROOT = Path(__file__).resolve().parents[2]
XP = ROOT / "data" / "external" / "stellar_xp"
ARCHIVE = ["XP_CONTINUOUS_RAW.fits", "XP_CONTINUOUS_RAW.ecsv", "XP_CONTINUOUS_RAW.csv"]


def test_flat_chunk_file():
    df = read_gaia_xp(XP / "gaia_dr3_xp_continuous_chunk0.fits")
    assert list(df.columns) == ["source_id", *xp_output_columns()]
    assert len(df) == 2000 and df["source_id"].dtype == np.int64
    assert df["source_id"].is_unique
    assert not df.isna().any().any()
    assert (df["bp_1"] > 0).all() and (df["rp_1"] > 0).all()  # the flux-like coefficient
    assert (df[[f"bpe_{i}" for i in range(1, 56)]] > 0).all().all()
    # 0-based bp_coeff_0 is bp_1
    from astropy.table import Table

    t = Table.read(XP / "gaia_dr3_xp_continuous_chunk0.fits")
    np.testing.assert_array_equal(df["bp_1"], np.asarray(t["bp_coeff_0"], dtype=np.float64))
    np.testing.assert_array_equal(df["rpe_55"], np.asarray(t["e_rp_coeff_54"], dtype=np.float64))


@pytest.mark.parametrize("name", ARCHIVE)
def test_archive_layouts_agree(name):
    ref = read_gaia_xp(XP / "XP_CONTINUOUS_RAW.fits")
    df = read_gaia_xp(XP / name)
    assert list(df.columns) == list(ref.columns)
    np.testing.assert_array_equal(df["source_id"], ref["source_id"])
    cols = xp_output_columns()
    # coefficients are float64 text in every layout; errors are float32 printed as text
    np.testing.assert_allclose(df[cols].to_numpy(), ref[cols].to_numpy(), rtol=1e-6)
    assert not df[cols].isna().any().any()


def test_missing_bp_is_nan_not_error():
    df = read_gaia_xp(XP / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    assert len(df) == 3
    row = df.set_index("source_id").loc[5405570973190252288]
    bp = [f"bp_{i}" for i in range(1, 56)] + [f"bpe_{i}" for i in range(1, 56)]
    rp = [f"rp_{i}" for i in range(1, 56)] + [f"rpe_{i}" for i in range(1, 56)]
    assert row[bp].isna().all() and row[rp].notna().all()
    ref = read_gaia_xp(XP / "XP_CONTINUOUS_RAW.csv").set_index("source_id")
    both = df.set_index("source_id").loc[ref.index]
    np.testing.assert_allclose(both.to_numpy(), ref.to_numpy())


def test_bracketed_csv_and_photometry(tmp_path):
    from astropy.table import Table

    t = Table.read(XP / "XP_CONTINUOUS_RAW.ecsv")
    rows = {
        "source_id": np.asarray(t["source_id"]),
        "phot_g_mean_mag": [15.0, 16.0],
        "phot_g_mean_flux_over_error": [1000.0, 500.0],
    }
    for c in (
        "bp_coefficients",
        "bp_coefficient_errors",
        "rp_coefficients",
        "rp_coefficient_errors",
    ):
        rows[c] = ["[" + ",".join(repr(float(v)) for v in a) + "]" for a in t[c]]
    p = tmp_path / "bracketed.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    df = read_gaia_xp(p)
    ref = read_gaia_xp(XP / "XP_CONTINUOUS_RAW.ecsv")
    np.testing.assert_allclose(df[xp_output_columns()], ref[xp_output_columns()], rtol=1e-6)
    np.testing.assert_allclose(df["G"], [15.0, 16.0])
    np.testing.assert_allclose(df["e_G"], 2.5 / np.log(10) / np.array([1000.0, 500.0]))
    assert "BP" not in df  # only the bands the file has


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_gaia_xp(tmp_path / "nope.fits")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"source_id": [1], "x": [2.0]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"bad\.csv.*expected a Gaia XP table"):
        read_gaia_xp(bad)
    short = tmp_path / "short.csv"
    arr = "(" + ", ".join(["1.0"] * 54) + ")"
    pd.DataFrame(
        {
            "source_id": [1],
            "bp_coefficients": [arr],
            "bp_coefficient_errors": [arr],
            "rp_coefficients": [arr],
            "rp_coefficient_errors": [arr],
        }
    ).to_csv(short, index=False)
    with pytest.raises(InputError, match="key bp_coefficients: row 0: expected 55 coefficients"):
        read_gaia_xp(short)
    other = tmp_path / "x.parquet"
    other.write_bytes(b"")
    with pytest.raises(InputError, match="unknown file type"):
        read_gaia_xp(other)
    nosid = tmp_path / "nosid.csv"
    pd.DataFrame({"bp_coefficients": ["()"]}).to_csv(nosid, index=False)
    with pytest.raises(InputError, match="key source_id"):
        read_gaia_xp(nosid)


@pytest.mark.parametrize("suffix", [".fits", ".ecsv"])
def test_missing_bp_in_array_layouts(tmp_path, suffix):
    """An empty BP array (FITS variable-length column, ECSV list) also reads as NaN."""
    from astropy.table import Table

    t = Table.read(XP / "XP_CONTINUOUS_RAW.fits")
    cols = {"source_id": np.asarray(t["source_id"])}
    for c in (
        "bp_coefficients",
        "bp_coefficient_errors",
        "rp_coefficients",
        "rp_coefficient_errors",
    ):
        v = np.empty(2, dtype=object)
        for i in range(2):
            v[i] = np.asarray(t[c][i], dtype=np.float64)
        if c.startswith("bp"):
            v[1] = np.array([], dtype=np.float64)
        cols[c] = v
    p = tmp_path / f"missing{suffix}"
    Table(cols).write(p)
    df = read_gaia_xp(p)
    assert df.loc[1, [f"bp_{i}" for i in range(1, 56)]].isna().all()
    assert df.loc[1, [f"bpe_{i}" for i in range(1, 56)]].isna().all()
    assert df.loc[1, [f"rp_{i}" for i in range(1, 56)]].notna().all()
    assert df.loc[0, "bp_1"] == pytest.approx(float(t["bp_coefficients"][0][0]))
