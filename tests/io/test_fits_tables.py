"""FITS label tables: atomic round trip, block reading, errors."""

from __future__ import annotations

import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.fits_tables import (
    fits_table_info,
    iter_fits_blocks,
    read_fits_table,
    write_fits_table,
)


def test_round_trip(tmp_path):
    p = tmp_path / "labels.fits"
    rng = np.random.default_rng(0)
    cols = {
        "source_id": np.arange(1000, dtype=np.int64) + 7 * 10**18,
        "teff": rng.uniform(3500, 8000, 1000),
        "e_teff": np.full(1000, 50.0),
        "age": np.where(rng.random(1000) < 0.2, np.nan, rng.uniform(1, 13, 1000)),
    }
    write_fits_table(p, cols, units={"teff": "K", "age": "Gyr"}, meta={"SIMSEED": 3})
    n, names = fits_table_info(p)
    assert n == 1000 and names == list(cols)
    back = read_fits_table(p)
    np.testing.assert_array_equal(back["source_id"], cols["source_id"])
    assert back["teff"].dtype == np.float32 and back["teff"].dtype.byteorder in "=|"
    np.testing.assert_array_equal(back["teff"], cols["teff"].astype(np.float32))
    np.testing.assert_array_equal(np.isnan(back["age"]), np.isnan(cols["age"]))
    blocks = list(iter_fits_blocks(p, ["source_id", "age"], block_rows=300))
    assert [len(b["age"]) for b in blocks] == [300, 300, 300, 100]
    np.testing.assert_array_equal(
        np.concatenate([b["source_id"] for b in blocks]), cols["source_id"]
    )
    from astropy.table import Table

    t = Table.read(p)
    assert str(t["teff"].unit) == "K" and t.meta["SIMSEED"] == 3


def test_errors(tmp_path):
    p = tmp_path / "t.fits"
    write_fits_table(p, {"a": np.zeros(3)})
    with pytest.raises(InputError, match=r"key b: missing column\(s\) \['b'\]"):
        next(iter_fits_blocks(p, ["a", "b"]))
    with pytest.raises(InputError, match="not found"):
        fits_table_info(tmp_path / "none.fits")
    with pytest.raises(InputError, match="different lengths"):
        write_fits_table(tmp_path / "u.fits", {"a": np.zeros(3), "b": np.zeros(2)})
    assert not (tmp_path / "u.fits").exists()
    junk = tmp_path / "junk.fits"
    junk.write_text("not a fits file")
    with pytest.raises(InputError, match=r"junk\.fits"):
        fits_table_info(junk)
