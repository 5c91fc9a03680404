"""The pretraining compound-HDF5 layout: write, list, stream, sample, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.compound_h5 import (
    CompoundH5Writer,
    as_matrix,
    iter_blocks,
    key_columns,
    key_rows,
    list_keys,
    part_key,
    sample_rows,
)


@pytest.fixture
def h5file(tmp_path):
    p = tmp_path / "pre.h5"
    n = 2350
    with CompoundH5Writer(p, ["source_id", "G", "bp_1"], rows_per_part=200, chunk_rows=64) as w:
        for a in range(0, n, 700):  # blocks that straddle parts
            b = min(a + 700, n)
            g = np.arange(a, b, dtype=float)
            g[::10] = np.nan
            w.append({"source_id": np.arange(a, b) + 10**18, "G": g, "bp_1": 2 * g})
    return p, n


def test_round_trip(h5file):
    p, n = h5file
    keys = list_keys(p)
    assert keys == [part_key(0, k) for k in range(12)]  # part10 sorts after part9
    assert [key_rows(p, k) for k in keys] == [200] * 11 + [150]
    assert key_columns(p, keys[0]) == ["source_id", "G", "bp_1"]
    with h5py.File(p) as f:
        assert f[keys[0]].dtype["source_id"] == np.int64 and f[keys[0]].dtype["G"] == np.float32
    ids, g = [], []
    for k in keys:
        for block in iter_blocks(p, k, ["source_id", "G"], block_rows=64):
            assert len(block) <= 64
            ids.append(block["source_id"])
            g.append(as_matrix(block, ["G", "missing"])[:, 0])
            assert np.isnan(as_matrix(block, ["missing"])).all()
    ids, g = np.concatenate(ids), np.concatenate(g)
    np.testing.assert_array_equal(ids, np.arange(n) + 10**18)
    expected = np.arange(n, dtype=float)
    expected[::10] = np.nan
    np.testing.assert_array_equal(g, expected.astype(np.float32))


def test_sample_rows_seeded(h5file):
    p, _ = h5file
    keys = list_keys(p)[:5]
    a = sample_rows(p, keys, 300, seed=3, columns=["source_id"], block_rows=64)
    b = sample_rows(p, keys, 300, seed=3, columns=["source_id"], block_rows=128)
    c = sample_rows(p, keys, 300, seed=4, columns=["source_id"])
    np.testing.assert_array_equal(a["source_id"], b["source_id"])  # independent of block size
    assert len(a) == 300 and len(np.unique(a["source_id"])) == 300
    assert (a["source_id"] - 10**18 < 1000).all()  # only the chosen keys (first 5 x 200 rows)
    assert not np.array_equal(a["source_id"], c["source_id"])
    everything = sample_rows(p, keys, 10**6, seed=0, columns=["G"])
    assert len(everything) == 1000


def test_errors(h5file, tmp_path):
    p, _ = h5file
    with pytest.raises(InputError, match="not found"):
        list_keys(tmp_path / "none.h5")
    with pytest.raises(InputError, match="key sslset9_part0: missing dataset"):
        key_rows(p, "sslset9_part0")
    with pytest.raises(InputError, match=r"key sslset0_part0: missing column\(s\) \['W1'\]"):
        next(iter_blocks(p, "sslset0_part0", ["G", "W1"]))
    q = tmp_path / "odd.h5"
    with h5py.File(q, "w") as f:
        f["plain"] = np.zeros(3)
        f["sslset0_part0"] = np.zeros(3)
        f.create_dataset("sslset0_part1", data=np.zeros(2, dtype=[("bp", "f4", (55,))]))
    with pytest.raises(InputError, match="1-D compound"):
        key_rows(q, "sslset0_part0")
    with pytest.raises(InputError, match="not scalar numbers"):
        next(iter_blocks(q, "sslset0_part1", ["bp"]))
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match="no dataset named sslset"):
        list_keys(empty)
    with pytest.raises(InputError, match="misses column"):
        with CompoundH5Writer(tmp_path / "w.h5", ["G", "BP"]) as w:
            w.append({"G": np.zeros(2)})
    assert not (tmp_path / "w.h5").exists()  # nothing half-written
