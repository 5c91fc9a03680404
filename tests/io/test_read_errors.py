"""The named read defects of the "Reliability" issue: each ends in InputError naming the file."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.atomic import read_manifest
from astrobatch.io.cutouts import open_cutouts, write_cutouts
from astrobatch.io.errors import check_finite, reading
from astrobatch.io.fits_tables import read_fits_table, write_fits_table
from astrobatch.io.sets import (
    CSRSets,
    read_csr_h5,
    read_upstream_npz,
    write_csr_h5,
    write_upstream_npz,
)
from astrobatch.io.shards import Column, ShardWriter, open_shard, shard_info


def _sets() -> CSRSets:
    rng = np.random.default_rng(0)
    ptr = np.array([0, 3, 5, 9], dtype=np.int64)
    return CSRSets(
        ptr=ptr,
        elements={k: rng.normal(size=9).astype(np.float32) for k in ("x", "mass")},
        sets={"time": np.arange(3.0), "run_id": np.array(["a", "a", "b"])},
    )


@pytest.fixture
def sets_h5(tmp_path):
    path = tmp_path / "raw.h5"
    write_csr_h5(path, _sets())
    return path


def _replace(path, key, **kwargs):
    with h5py.File(path, "a") as f:
        del f[key]
        if kwargs:
            f.create_dataset(key, **kwargs)
        else:
            f.create_group(key)


def _corrupt_chunk(path, key, chunk=0):
    with h5py.File(path, "r") as f:
        info = f[key].id.get_chunk_info(chunk)
    buf = bytearray(path.read_bytes())
    buf[info.byte_offset + 2 : info.byte_offset + 10] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(buf))


def test_sets_empty_ptr(sets_h5):
    _replace(sets_h5, "ptr", data=np.zeros(0, dtype=np.int64))
    with pytest.raises(InputError, match=r"key ptr: expected a 1-D array of length") as e:
        read_csr_h5(sets_h5)
    assert str(sets_h5) in str(e.value)


def test_sets_string_element_column(sets_h5):
    _replace(sets_h5, "stars/x", data=np.array(["a"] * 9, dtype=object),
             dtype=h5py.string_dtype())  # fmt: skip
    with pytest.raises(InputError, match=r"raw.h5: key stars/x: expected dtype kind"):
        read_csr_h5(sets_h5)


def test_sets_group_in_place_of_dataset(sets_h5):
    _replace(sets_h5, "snapshots/time")
    with pytest.raises(InputError, match=r"key snapshots/time: expected a dataset, found a Group"):
        read_csr_h5(sets_h5)
    _replace(sets_h5, "ptr")
    with pytest.raises(InputError, match=r"key ptr: expected a dataset"):
        read_csr_h5(sets_h5)


def test_sets_corrupt_gzip_chunk(sets_h5):
    _corrupt_chunk(sets_h5, "stars/mass")
    with pytest.raises(InputError, match=r"key stars/mass: cannot read") as e:
        read_csr_h5(sets_h5)
    assert str(sets_h5) in str(e.value)


def test_sets_nan_features_count_and_first_index(sets_h5):
    with h5py.File(sets_h5, "a") as f:
        f["stars/x"][4] = np.nan
        f["stars/x"][7] = np.inf
    with pytest.raises(InputError, match=r"key stars/x: .*got 2 NaN/inf \(first at index 4\)"):
        read_csr_h5(sets_h5)


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "run.npz"
    write_upstream_npz(path, _sets(), ["x", "mass"], ["time"])
    return path


def test_npz_bad_zip(npz):
    npz.write_bytes(npz.read_bytes()[:40])
    with pytest.raises(InputError, match=r"run.npz: not a readable .npz file"):
        read_upstream_npz(npz)


def test_npz_object_array(npz):
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["feature"] = arrays["feature"].astype(object)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match=r"run.npz: key feature: cannot read"):
        read_upstream_npz(npz)


def test_npz_nan_target(npz):
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["target"][1, 0] = np.nan
    np.savez_compressed(npz, **arrays)
    with pytest.raises(InputError, match=r"key target: expected finite targets, got 1 NaN/inf"):
        read_upstream_npz(npz)


@pytest.fixture
def cutouts(tmp_path):
    path = tmp_path / "raw_cutouts.h5"
    rng = np.random.default_rng(0)
    write_cutouts(path, [1, 2, 3, 4], ["G"] * 4, rng.normal(size=(4, 5, 6, 6)),
                  [7.0, 8.0, 7.5, 9.0], chunk_images=2, compression="gzip")  # fmt: skip
    return path


def test_cutouts_corrupt_chunk(cutouts):
    _corrupt_chunk(cutouts, "image_cutouts", chunk=1)
    with open_cutouts(cutouts) as f:
        f.read_images(0, 2)  # the intact chunk still reads
        with pytest.raises(InputError, match=r"raw_cutouts.h5: key image_cutouts: cannot read"):
            list(f.iter_blocks(2))


def test_cutouts_string_log_ages_and_group(cutouts):
    _replace(cutouts, "cluster_ids", data=np.array(["1"] * 4, dtype=object),
             dtype=h5py.string_dtype())  # fmt: skip
    with pytest.raises(InputError, match=r"key cluster_ids: expected integers"):
        open_cutouts(cutouts)
    _replace(cutouts, "galaxy_ids")
    with pytest.raises(InputError, match=r"key galaxy_ids: expected a dataset"):
        open_cutouts(cutouts)


def test_cutouts_null_dataspace(cutouts):
    _replace(cutouts, "cluster_log_ages", data=h5py.Empty("f4"))
    with pytest.raises(InputError, match=r"raw_cutouts.h5: key cluster_log_ages"):
        open_cutouts(cutouts)


def test_cutouts_nan_pixels(cutouts):
    with h5py.File(cutouts, "a") as f:
        f["image_cutouts"][2, 1, 3, 3] = np.nan
    with open_cutouts(cutouts) as f:
        with pytest.raises(InputError, match=r"got 1 NaN/inf .*first in row 2"):
            f.read_images()
        with pytest.raises(InputError, match=r"first in row 2"):
            f.read_images(np.array([3, 2]))


def test_truncated_fits(tmp_path):
    path = tmp_path / "labels.fits"
    write_fits_table(path, {"source_id": np.arange(200), "teff": np.linspace(4e3, 6e3, 200)})
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(InputError, match=r"labels.fits"):
        read_fits_table(path)


def test_manifest_missing_key_and_not_a_dict(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"n_train": 3}))
    m = read_manifest(tmp_path)
    assert m["n_train"] == 3 and m.get("bands") is None and isinstance(m, dict)
    with pytest.raises(InputError, match=r"manifest.json: key bands: missing manifest key"):
        m["bands"]
    with pytest.raises(InputError, match=r"key bands"):
        read_manifest(tmp_path, require=("bands",))
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"manifest.json: expected a JSON object"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match=r"manifest.json: not valid JSON"):
        read_manifest(tmp_path)


def test_shard_group_where_dataset_belongs_and_bad_ptr(tmp_path):
    path = tmp_path / "s.h5"
    cols = {"y": Column(np.float32)}
    groups = {"stars": {"x": Column(np.float32)}}
    with ShardWriter(path, cols, groups, chunk_rows=2) as w:
        w.append({"y": [1.0, 2.0]}, {"stars": ([0, 1, 3], {"x": np.ones(3)})})
    with h5py.File(path, "a") as f:
        del f["stars/x"]
        f.create_group("stars/x")
    with pytest.raises(InputError, match=r"s.h5: key stars/x: expected a dataset"):
        shard_info(path)
    with h5py.File(path, "a") as f:
        del f["stars/x"]
        del f["stars/ptr"]
        f.create_dataset("stars/ptr", data=np.zeros(0, dtype=np.int64))
    with pytest.raises(InputError, match=r"key stars/ptr"):
        open_shard(path)


def test_reading_maps_foreign_errors_and_check_finite():
    with pytest.raises(InputError, match=r"f.h5: key k: cannot read the thing .*KeyError"):
        with reading("f.h5", "thing", "k"):
            raise KeyError("x")
    with pytest.raises(InputError, match=r"already"):
        with reading("f.h5", "thing"):
            raise InputError("already", "f.h5")
    with pytest.raises(InputError, match=r"ZeroDivisionError"):
        with reading("f.h5"):
            _ = 1 / 0
    assert check_finite(np.array([[1, 2]]), "f", "k").shape == (1, 2)
    with pytest.raises(InputError, match=r"got 2 NaN/inf \(first at index 1\)"):
        check_finite(np.array([[1.0, 2.0], [np.nan, np.inf]]), "f", "k")
