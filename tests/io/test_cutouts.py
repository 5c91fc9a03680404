"""Tests of the raw cutout HDF5 format (astrobatch.io.cutouts)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.cutouts import (
    REQUIRED_KEYS,
    CutoutWriter,
    open_cutouts,
    write_cutouts,
)
from astrobatch.studies.cluster_age.params import CLUSTER_AGE_BANDS


def _data(n=7, c=5, s=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "cluster_ids": np.arange(10, 10 + n),
        "galaxy_ids": [f"NGC_628{'CE'[i % 2]}" for i in range(n)],
        "image_cutouts": rng.normal(size=(n, c, s, s)).astype(np.float32),
        "cluster_log_ages": rng.uniform(6, 10, n),
    }


def _raw(path, **override):
    """A file in the real layout written with plain h5py (no attributes), with overrides."""
    d = _data()
    d.update(override)
    with h5py.File(path, "w") as f:
        for k, v in d.items():
            if v is None:
                continue
            if k == "galaxy_ids":
                f.create_dataset(k, data=np.asarray(v, dtype=object), dtype=h5py.string_dtype())
            else:
                f[k] = v
    return path


def test_round_trip_and_lazy_reads(tmp_path):
    d = _data()
    mags = np.full((7, 5), 22.0, np.float32)
    mags[0, 0] = np.nan
    path = write_cutouts(
        tmp_path / "raw.h5", **d, extra={"catalogue_magnitudes": mags,
                                         "cluster_ebv": np.linspace(0, 0.6, 7)},
        attrs={"study": "cluster_age", "galaxies": {"a": 1}}, chunk_images=3,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.h5"]  # no temporary left
    with open_cutouts(path) as f:
        assert f.n == len(f) == 7 and f.image_shape == (5, 12, 12) and f.shape == (7, 5, 12, 12)
        assert f.n_channels == 5 and f.image_size == 12
        assert f.band_names == f.bands == CLUSTER_AGE_BANDS
        assert f.cluster_ids.dtype == np.int32 and f.cluster_ids.tolist() == list(range(10, 17))
        assert f.galaxy_ids.tolist() == d["galaxy_ids"]
        assert f.log_ages.dtype == np.float32
        np.testing.assert_allclose(f.log_ages, d["cluster_log_ages"], rtol=1e-6)
        np.testing.assert_array_equal(f.read_images(), d["image_cutouts"])
        np.testing.assert_array_equal(f.read_images(2, 5), d["image_cutouts"][2:5])
        idx = np.array([6, 0, 4, 4, 3])  # any order, repeats
        np.testing.assert_array_equal(f.read_images(idx), d["image_cutouts"][idx])
        assert f.read_images(np.array([], dtype=int)).shape == (0, 5, 12, 12)
        blocks = list(f.iter_blocks(3))
        assert [(a, b) for a, b, _ in blocks] == [(0, 3), (3, 6), (6, 7)]
        np.testing.assert_array_equal(f.catalogue_magnitudes, mags)
        assert f.cluster_ebv.shape == (7,) and f.cluster_log_masses is None
        assert f.extra("nothing") is None and f.catalogue_source_ids is None
        assert f.attrs["study"] == "cluster_age" and f.attrs["galaxies"] == {"a": 1}
        assert "electron" in f.image_units
        with pytest.raises(InputError, match="outside"):
            f.read_images(np.array([7]))
    with pytest.raises(InputError, match="closed"):
        f.read_images(0, 1)


def test_streaming_writer_blocks_in_any_order(tmp_path):
    d = _data(n=10, c=1, s=8)
    with CutoutWriter(
        tmp_path / "w.h5", d["cluster_ids"], d["galaxy_ids"], d["cluster_log_ages"], (1, 8, 8)
    ) as w:
        w.write(6, d["image_cutouts"][6:])
        w.write(0, d["image_cutouts"][:6])
    with open_cutouts(tmp_path / "w.h5") as f:
        assert f.band_names == ("white",)
        np.testing.assert_array_equal(f.read_images(), d["image_cutouts"])


def test_writer_leaves_nothing_on_failure(tmp_path):
    d = _data(n=4, s=8)
    with pytest.raises(InputError, match="never written"):
        with CutoutWriter(tmp_path / "a.h5", d["cluster_ids"], d["galaxy_ids"],
                          d["cluster_log_ages"], (5, 8, 8)) as w:  # fmt: skip
            w.write(0, d["image_cutouts"][:2])
    with pytest.raises(RuntimeError):
        with CutoutWriter(tmp_path / "b.h5", d["cluster_ids"], d["galaxy_ids"],
                          d["cluster_log_ages"], (5, 8, 8)) as w:  # fmt: skip
            raise RuntimeError("boom")
    with pytest.raises(InputError, match="image_cutouts"):
        with CutoutWriter(tmp_path / "c.h5", d["cluster_ids"], d["galaxy_ids"],
                          d["cluster_log_ages"], (5, 8, 8)) as w:  # fmt: skip
            w.write(0, np.zeros((4, 5, 9, 9), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_writer_validation(tmp_path):
    d = _data(n=3, s=8)
    with pytest.raises(InputError, match=r"cluster_log_ages.*finite"):
        write_cutouts(tmp_path / "x.h5", d["cluster_ids"], d["galaxy_ids"], d["image_cutouts"],
                      [7.0, np.nan, 8.0])  # fmt: skip
    with pytest.raises(InputError, match="image_cutouts"):
        write_cutouts(tmp_path / "x.h5", d["cluster_ids"], d["galaxy_ids"],
                      np.zeros((3, 3, 8, 8), np.float32), d["cluster_log_ages"])  # fmt: skip
    with pytest.raises(InputError, match="catalogue_magnitudes"):
        write_cutouts(tmp_path / "x.h5", **d, extra={"catalogue_magnitudes": np.zeros((3, 4))})
    with pytest.raises(InputError, match="galaxy_ids"):
        write_cutouts(tmp_path / "x.h5", d["cluster_ids"], ["a"], d["image_cutouts"],
                      d["cluster_log_ages"])  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_reads_a_plain_real_layout_file_of_any_n(tmp_path):
    for n in (1, 5, 33):
        path = _raw(tmp_path / f"r{n}.h5", **{k: v for k, v in _data(n=n).items()})
        with open_cutouts(path) as f:
            assert f.n == n and f.band_names == CLUSTER_AGE_BANDS
            assert f.image_units.startswith("unknown")
            assert f.read_images(np.arange(n)[::-1]).shape == (n, 5, 12, 12)
            assert f.extra_keys == ()


def test_fixed_length_byte_galaxy_ids(tmp_path):
    path = _raw(tmp_path / "raw.h5", galaxy_ids=None)
    with h5py.File(path, "a") as f:
        f["galaxy_ids"] = np.array([b"NGC_628C"] * 7, dtype="S8")
    with open_cutouts(path) as f:
        assert f.galaxy_ids.tolist() == ["NGC_628C"] * 7


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_is_named(tmp_path, key):
    path = _raw(tmp_path / "raw.h5", **{key: None})
    with pytest.raises(InputError, match=f"key {key}: missing dataset") as e:
        open_cutouts(path)
    assert e.value.key == key and e.value.path == str(path)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("image_cutouts", np.zeros((7, 12, 12), np.float32), r"expected shape \(N, C, H, W\)"),
        ("image_cutouts", np.zeros((7, 3, 12, 12), np.float32), r"C in \(1, 5\)"),
        ("image_cutouts", np.zeros((7, 5, 12, 10), np.float32), "square"),
        ("image_cutouts", np.zeros((7, 5, 12, 12), np.int16), "floating"),
        ("cluster_ids", np.zeros((7, 2), np.int32), r"expected shape \(N,\)"),
        ("cluster_ids", np.zeros(7, np.float32), "integers"),
        ("cluster_log_ages", np.zeros(6), "N = 7"),
        ("cluster_ids", np.arange(8), "N = 7"),
        ("galaxy_ids", ["a"] * 9, "N = 7"),
        ("galaxy_ids", np.zeros(7), "strings"),
        ("cluster_log_ages", np.array([7.0, np.nan, 8, 8, 8, 8, 8]), "finite"),
        ("catalogue_magnitudes", np.zeros((7, 4), np.float32), r"expected shape \(7, 5\)"),
        ("cluster_log_masses", np.zeros(6, np.float32), r"expected shape \(7,\)"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, key, value, match):
    if key == "galaxy_ids" and np.asarray(value).dtype.kind == "f":
        path = _raw(tmp_path / "raw.h5", galaxy_ids=None)
        with h5py.File(path, "a") as f:
            f["galaxy_ids"] = value
    else:
        path = _raw(tmp_path / "raw.h5", **{key: value})
    with pytest.raises(InputError, match=match) as e:
        open_cutouts(path)
    assert e.value.key == key and str(path) in str(e.value)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        open_cutouts(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot open as HDF5"):
        open_cutouts(tmp_path / "text.h5")
