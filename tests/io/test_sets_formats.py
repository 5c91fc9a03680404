"""Round trips of the raw CSR HDF5 format, the upstream npz format and prepared shards."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from astrobatch.data.layouts import SET_ELEMENTS, SET_FEATURES, set_layout
from astrobatch.errors import InputError
from astrobatch.io.sets import (
    CSRSets,
    read_csr_h5,
    read_upstream_npz,
    write_csr_h5,
    write_upstream_npz,
)
from astrobatch.io.shards import ShardWriter, open_shard


def _random_sets(rng, n_sets=5) -> CSRSets:
    sizes = rng.integers(0, 20, n_sets)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(ptr[-1])
    return CSRSets(
        ptr=ptr,
        elements={k: rng.normal(size=n).astype(np.float32) for k in ("x", "vx", "mass")},
        sets={
            "total_mass_within_2x_r_tidal": rng.uniform(100, 1e4, n_sets),
            "time": rng.uniform(0, 100, n_sets),
            "run_id": np.array([f"Rad05-zmet0002-M1-{i // 2:04d}" for i in range(n_sets)]),
        },
    )


def test_csr_h5_round_trip(tmp_path):
    data = _random_sets(np.random.default_rng(0))
    path = tmp_path / "raw.h5"
    write_csr_h5(path, data)
    back = read_csr_h5(path)
    np.testing.assert_array_equal(back.ptr, data.ptr)
    for k in data.elements:
        np.testing.assert_array_equal(back.elements[k], data.elements[k])
    for k in data.sets:
        np.testing.assert_array_equal(back.sets[k], data.sets[k])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_csr_h5_missing_key_named(tmp_path):
    data = _random_sets(np.random.default_rng(1))
    path = tmp_path / "raw.h5"
    write_csr_h5(path, data)
    with pytest.raises(InputError, match=r"key stars/vy: missing element column"):
        read_csr_h5(path, element_keys=["x", "vy"])
    with h5py.File(path, "a") as f:
        del f["ptr"]
    with pytest.raises(InputError, match="key ptr"):
        read_csr_h5(path)


def test_upstream_npz_round_trip(tmp_path):
    data = _random_sets(np.random.default_rng(2))
    path = tmp_path / "shard_000.npz"
    write_upstream_npz(path, data, ["x", "vx", "mass"], ["total_mass_within_2x_r_tidal", "time"])
    with np.load(path) as z:
        assert set(z.files) >= {"feature", "feature_keys", "target", "target_keys", "ptr"}
        assert z["feature"].dtype == np.float32 and z["ptr"].dtype == np.int64
    back = read_upstream_npz(path)
    np.testing.assert_array_equal(back.ptr, data.ptr)
    np.testing.assert_array_equal(back.elements["vx"], data.elements["vx"])
    np.testing.assert_allclose(
        back.sets["total_mass_within_2x_r_tidal"],
        data.sets["total_mass_within_2x_r_tidal"].astype(np.float32),
    )
    np.testing.assert_array_equal(back.sets["run_id"], data.sets["run_id"])


def test_upstream_npz_without_run_id_uses_file_stem(tmp_path):
    path = tmp_path / "Rad04-zmet0002-M4-0003.npz"
    np.savez_compressed(
        path,
        feature=np.ones((3, 2), np.float32),
        feature_keys=np.array(["x", "y"]),
        target=np.ones((2, 1), np.float32),
        target_keys=np.array(["time"]),
        ptr=np.array([0, 1, 3]),
    )
    assert read_upstream_npz(path).sets["run_id"].tolist() == ["Rad04-zmet0002-M4-0003"] * 2


def test_upstream_npz_bad_shape(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez_compressed(
        path,
        feature=np.ones((3, 3), np.float32),
        feature_keys=np.array(["x", "y"]),
        target=np.ones((2, 1), np.float32),
        target_keys=np.array(["time"]),
        ptr=np.array([0, 1, 3]),
    )
    with pytest.raises(InputError, match=r"bad.npz: key feature: expected shape \(n_stars, 2\)"):
        read_upstream_npz(path)


def _set_writer(path, features, chunk_rows=1024):
    cols, groups = set_layout(features, {"run_id": str})
    return ShardWriter(path, cols, groups, chunk_rows=chunk_rows)


def _set_block(x, ptr, target, run_id):
    return {"target": target, "run_id": run_id}, {SET_ELEMENTS: (ptr, {"features": x})}


def test_shard_round_trip_in_blocks(tmp_path):
    rng = np.random.default_rng(3)
    blocks = []
    with _set_writer(tmp_path / "s.h5", ["a", "b"]) as w:
        for _ in range(3):
            sizes = rng.integers(1, 10, 4)
            ptr = np.concatenate([[0], np.cumsum(sizes)])
            x = rng.normal(size=(ptr[-1], 2)).astype(np.float32)
            y = rng.normal(size=4)
            w.append(*_set_block(x, ptr, y, np.array(["r"] * 4)))
            blocks.append((x, sizes, y))
    with open_shard(tmp_path / "s.h5", require=["target", SET_FEATURES]) as s:
        np.testing.assert_array_equal(s.read(SET_FEATURES), np.concatenate([b[0] for b in blocks]))
        np.testing.assert_array_equal(
            np.diff(s.ptr(SET_ELEMENTS)), np.concatenate([b[1] for b in blocks])
        )
        np.testing.assert_allclose(s.read("target"), np.concatenate([b[2] for b in blocks]))
        assert s.names(SET_FEATURES) == ["a", "b"]
        assert s.read("run_id").tolist() == ["r"] * 12


def test_failed_shard_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), _set_writer(tmp_path / "s.h5", ["a"]) as w:
        w.append(*_set_block(np.ones((2, 1), np.float32), np.array([0, 2]), [1.0], ["r"]))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_corrupted_shard_is_reported(tmp_path):
    with _set_writer(tmp_path / "s.h5", ["a"]) as w:
        w.append(*_set_block(np.ones((2, 1), np.float32), np.array([0, 2]), [1.0], ["r"]))
    raw = (tmp_path / "s.h5").read_bytes()
    (tmp_path / "s.h5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputError, match=r"s\.h5"):
        open_shard(tmp_path / "s.h5")
