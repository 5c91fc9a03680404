"""The one prepared-shard format: round trips, schema of empty splits, validation errors."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.shards import (
    LARGE_CACHE,
    SHARD_FORMAT,
    SHARD_VERSION,
    Column,
    ShardWriter,
    open_shard,
    shard_info,
)

COLUMNS = {
    "y": Column(np.float32, units="dex"),
    "x": Column(np.float32, (3,), units="mag", names=("g", "bp", "rp")),
    "id": Column(np.int64),
    "name": Column(str),
}
GROUPS = {"stars": {"pos": Column(np.float64, (2,), units="pc", names=("x", "y")),
                    "mass": Column(np.float32, units="Msun")}}  # fmt: skip


def _data(rng, n):
    sizes = rng.integers(0, 5, n)
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    m = int(ptr[-1])
    rows = {"y": rng.normal(size=n), "x": rng.normal(size=(n, 3)), "id": np.arange(n),
            "name": np.array([f"s{i}" for i in range(n)])}  # fmt: skip
    elems = {"pos": rng.normal(size=(m, 2)), "mass": rng.uniform(size=m)}
    return rows, ptr, elems


def _write(path, blocks, **kw):
    with ShardWriter(path, COLUMNS, GROUPS, chunk_rows=4, element_chunk_rows=8, **kw) as w:
        for rows, ptr, elems in blocks:
            w.append(rows, {"stars": (ptr, elems)})
    return w


@pytest.mark.parametrize("compression", [None, "lzf"])
def test_round_trip_rows_and_ragged_group(tmp_path, compression):
    rng = np.random.default_rng(0)
    blocks = [_data(rng, n) for n in (5, 0, 7, 3)]
    p = tmp_path / "s.h5"
    w = _write(p, blocks, compression=compression, attrs={"split": "train"})
    assert w.n_rows == 15
    with open_shard(p, require=["y", "stars/pos", "stars"], cache=LARGE_CACHE) as r:
        assert r.n_rows == 15 and r.chunk_rows == 4 and r.attrs == {"split": "train"}
        for k in ("y", "x", "id"):
            want = np.concatenate([b[0][k] for b in blocks]).astype(COLUMNS[k].dtype)
            got = r.read(k)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        assert r.read("name").tolist() == [s for b in blocks for s in b[0]["name"]]
        sizes = np.concatenate([np.diff(b[1]) for b in blocks])
        np.testing.assert_array_equal(r.ptr("stars"), np.concatenate([[0], np.cumsum(sizes)]))
        np.testing.assert_array_equal(
            r.read("stars/pos"), np.concatenate([b[2]["pos"] for b in blocks])
        )
        assert r.read("stars/mass").dtype == np.float32
        assert r.units("y") == "dex" and r.units("stars/pos") == "pc" and r.units("id") is None
        assert r.names("x") == ["g", "bp", "rp"] and r.names("stars/pos") == ["x", "y"]
        assert r["x"].chunks == (4, 3) and r["stars/mass"].chunks == (8,)
        assert r["x"].compression == compression
        np.testing.assert_array_equal(r.read("y", 2, 4), r["y"][2:4])
        assert "stars" in r and "stars/mass" in r and "nope" not in r
        with pytest.raises(InputError, match="key nope"):
            r["nope"]
        r.read("y")
        copy = pickle.loads(pickle.dumps(r))  # DataLoader workers: the handle is re-opened
        np.testing.assert_array_equal(copy.read("y"), r.read("y"))
    info = shard_info(p)
    assert info["columns"]["name"]["dtype"] is str and info["groups"]["stars"]["columns"] == [
        "mass", "pos"
    ]  # fmt: skip
    with h5py.File(p) as f:
        assert f.attrs["format"] == SHARD_FORMAT and f.attrs["version"] == SHARD_VERSION
        assert f.attrs["n_rows"] == 15 and f["stars/ptr"].dtype == np.int64


def test_empty_split_keeps_schema(tmp_path):
    p = tmp_path / "empty.h5"
    _write(p, [])
    info = shard_info(p, require=["y", "x", "name", "stars/pos"])
    assert info["n_rows"] == 0 and info["groups"]["stars"]["n_elements"] == 0
    assert info["columns"]["x"]["shape"] == (0, 3) and info["columns"]["x"]["names"] == [
        "g", "bp", "rp"
    ]  # fmt: skip
    assert info["columns"]["stars/pos"]["dtype"] == np.float64
    with open_shard(p) as r:
        assert r.ptr("stars").tolist() == [0] and r.read("name").shape == (0,)


def test_writer_leaves_no_file_on_exception(tmp_path):
    rng = np.random.default_rng(1)
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "s.h5", COLUMNS, GROUPS) as w:
        rows, ptr, elems = _data(rng, 3)
        w.append(rows, {"stars": (ptr, elems)})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with (
        pytest.raises(ValueError, match="expected columns"),
        ShardWriter(tmp_path / "t.h5", COLUMNS, GROUPS) as w,
    ):
        w.append({"y": [1.0]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "key", "needle"),
    [
        (
            lambda f: f.attrs.__setitem__("format", "astrobatch.set_shard"),
            "format",
            "not a prepared shard",
        ),
        (lambda f: f.attrs.__setitem__("version", 2), "version", "expected 1"),
        (lambda f: f.attrs.__delitem__("n_rows"), "n_rows", "missing root attribute"),
        (lambda f: f["stars/ptr"].__setitem__(2, 0), "stars/ptr", "non-decreasing"),
        (lambda f: f["stars"].__delitem__("ptr"), "stars/ptr", "missing CSR pointer"),
        (lambda f: f.__delitem__("y"), "y", "missing key"),
        (lambda f: f.attrs.__setitem__("n_rows", 4), "id", "expected 4 rows"),
    ],
)
def test_bad_files_raise_input_error_naming_file_and_key(tmp_path, edit, key, needle):
    p = tmp_path / "bad.h5"
    rng = np.random.default_rng(2)
    rows, ptr, elems = _data(rng, 5)
    elems = {"pos": np.ones((int(ptr[-1]) + 2, 2)), "mass": np.ones(int(ptr[-1]) + 2)}
    ptr = ptr + np.r_[0, np.full(5, 2)]  # at least 2 elements in row 0: ptr[2] > 0
    with ShardWriter(p, COLUMNS, GROUPS) as w:
        w.append(rows, {"stars": (ptr, elems)})
    with h5py.File(p, "a") as f:
        edit(f)
    with pytest.raises(InputError, match=needle) as err:
        open_shard(p, require=["y"])
    assert err.value.path == str(p) and err.value.key == key


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        shard_info(tmp_path / "none.h5")
    assert err.value.path == str(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(InputError, match=r"junk\.h5: corrupted or unreadable"):
        shard_info(tmp_path / "junk.h5")


def test_column_names_must_match_the_last_axis():
    with pytest.raises(ValueError, match="2 names"):
        Column(np.float32, (3,), names=("a", "b"))
