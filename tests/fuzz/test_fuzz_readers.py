"""Fuzzing every reader of user files: a correct result or InputError naming the file.

Each reader starts from a small valid file (written with the package's own
writers), hypothesis draws one mutation (truncate, overwrite bytes, and
format-aware edits: delete / replace by a group / retype / reshape / resize a
dataset, NaN and inf values, corrupt compressed chunks, attribute edits, dropped
or retyped columns), then the reader reads everything. A foreign exception
fails the test (hypothesis prints the reproducing example).

``ASTROBATCH_FUZZ_EXAMPLES`` sets the examples per reader (default small, so the
whole module runs in about a minute on two cores); ``ASTROBATCH_FUZZ_REPORT``
names a JSON file receiving the per-reader counts.

The default run (the test suite, CI) is derandomized: the same examples every time,
so that CI is reproducible. Set ``ASTROBATCH_FUZZ_RANDOM=1`` (or raise the example
count) for fresh random draws. On some byte-corrupted files the HDF5 C library crashes
(segmentation fault) or loops forever while h5py reads attributes; every reader therefore
opens HDF5 files through :func:`astrobatch.io.errors.open_h5`, which walks the metadata in
a child process first (here with a 5 s limit, ``ASTROBATCH_HDF5_PROBE_TIMEOUT``).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrobatch.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
XP_DIR = ROOT / "data" / "external" / "stellar_xp"
os.environ.setdefault("ASTROBATCH_HDF5_PROBE_TIMEOUT", "5")
N_EXAMPLES = int(os.environ.get("ASTROBATCH_FUZZ_EXAMPLES", "30"))
RANDOM = os.environ.get("ASTROBATCH_FUZZ_RANDOM") == "1" or "ASTROBATCH_FUZZ_EXAMPLES" in os.environ
SETTINGS = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not RANDOM,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_BASE = Path(tempfile.mkdtemp(prefix="astrobatch-fuzz-base-"))


# ------------------------------------------------------------------------- valid files
def _sets(n_sets=4, seed=0):
    from astrobatch.io.sets import CSRSets

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_sets)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(ptr[-1])
    return CSRSets(
        ptr=ptr,
        elements={k: rng.normal(size=n).astype(np.float32) for k in ("x", "vx", "mass")},
        sets={
            "time": rng.uniform(0, 100, n_sets),
            "total_mass": rng.uniform(100, 1e4, n_sets),
            "run_id": np.array([f"run-{i // 2}" for i in range(n_sets)]),
        },
    )


def make_sets_h5(path: Path) -> None:
    from astrobatch.io.sets import write_csr_h5

    write_csr_h5(path, _sets())


def make_sets_npz(path: Path) -> None:
    from astrobatch.io.sets import write_upstream_npz

    write_upstream_npz(path, _sets(), ["x", "vx", "mass"], ["time", "total_mass"])


def make_cutouts(path: Path) -> None:
    from astrobatch.io.cutouts import write_cutouts

    rng = np.random.default_rng(1)
    n = 4
    write_cutouts(
        path, np.arange(1, n + 1), ["NGC_628C"] * n, rng.normal(size=(n, 5, 6, 6)),
        rng.uniform(6, 10, n),
        extra={"cluster_log_masses": rng.uniform(3, 5, n),
               "catalogue_magnitudes": rng.uniform(18, 24, (n, 5)),
               "catalogue_source_ids": np.arange(n, dtype=np.int64)},
        chunk_images=2, compression="gzip",
    )  # fmt: skip


def _legus_rows() -> list[list]:
    """Four valid rows of the 35 LEGUS catalogue columns."""
    rows = []
    for i in range(1, 5):
        phot = [22.0, 0.1, 22.1, 0.05, 99.999, 99.999, 22.3, 0.04, 22.4, 0.04]
        sed = [1e7 * i, 2e7, 5e6, 1e4, 2e4, 5e3, 0.1, 0.2, 0.0]
        rest = [0.1] * 5 + [1.2, 0.8, 5, 1 + i % 3, 1.0]
        rows.append([i, 100.0, 200.0, 24.17, 15.78, *phot, 1.5, *sed, *rest])
    return rows


def make_legus(path: Path) -> None:
    from astrobatch.io.legus import COLUMNS

    rows = _legus_rows()
    header = ",".join(f"Column{i + 1}" for i in range(len(COLUMNS) + 1))
    lines = ["\ufeff" + header] + ["," + ",".join(map(str, r)) for r in rows]
    lines.insert(3, "#" + "," * len(COLUMNS))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_legus_tab(path: Path) -> None:
    """The MAST HLSP ``.tab`` layout (35 whitespace-separated columns, no header)."""
    path.write_text("\n".join("  ".join(map(str, r)) for r in _legus_rows()) + "\n")


def make_out3(path: Path) -> None:
    n = 6
    rng = np.random.default_rng(2)
    scalars = np.zeros(20, np.float32)
    scalars[[0, 2, 3, 10, 11]] = [3.5, 2.0, 1000.0, 4.0, 0.5]
    header = np.array([n, 1, 1, 20], "<i4").tobytes()
    reals = rng.random(10 * n).astype("<f4")
    data = (
        scalars.astype("<f4").tobytes()
        + reals.tobytes()
        + np.arange(1, n + 1, dtype="<i4").tobytes()
    )
    out = b""
    for rec in (header, data):
        m = np.array([len(rec)], "<i4").tobytes()
        out += m + rec + m
    path.write_bytes(out)


def make_fits_table(path: Path) -> None:
    from astrobatch.io.fits_tables import write_fits_table

    write_fits_table(
        path,
        {"source_id": np.arange(5), "teff": np.array([5000.0, np.nan, 4000, 4500, 6000]),
         "logg": np.linspace(1, 5, 5)},
        units={"teff": "K"}, meta={"ORIGIN": "fuzz"},
    )  # fmt: skip


def make_compound(path: Path) -> None:
    from astrobatch.io.compound_h5 import CompoundH5Writer

    with CompoundH5Writer(
        path, ["source_id", "G", "bp_1"], rows_per_part=4, compression="gzip"
    ) as w:
        w.append({"source_id": np.arange(7), "G": np.linspace(10, 14, 7), "bp_1": np.ones(7)})


def make_shard(path: Path) -> None:
    from astrobatch.io.shards import Column, ShardWriter

    cols = {"y": Column(np.float32, units="dex"), "id": Column(str)}
    groups = {"stars": {"x": Column(np.float32, (2,), names=("a", "b"))}}
    with ShardWriter(
        path, cols, groups, chunk_rows=2, compression="gzip", attrs={"split": "train"}
    ) as w:
        w.append({"y": [1.0, 2.0, 3.0], "id": ["u", "v", "w"]},
                 {"stars": ([0, 1, 3, 4], {"x": np.ones((4, 2))})})  # fmt: skip


def make_manifest(path: Path) -> None:
    path.write_text(json.dumps({"bands": ["F275W", "F336W"], "n_train": 10, "splits": {"a": 1}}))


def make_checkpoint(path: Path) -> None:
    import torch

    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, path)


# ------------------------------------------------------------------------- full reads
def read_sets_h5(path):
    from astrobatch.io.sets import read_csr_h5

    d = read_csr_h5(path)
    d.validate(path)
    for v in d.elements.values():
        assert v.dtype.kind in "fiu" and np.all(np.isfinite(v))
    return d


def read_sets_npz(path):
    from astrobatch.io.sets import read_upstream_npz

    d = read_upstream_npz(path)
    d.validate(path)
    for v in d.elements.values():
        assert v.dtype == np.float32 and np.all(np.isfinite(v))
    return d


def read_cutouts(path):
    from astrobatch.io.cutouts import open_cutouts

    with open_cutouts(path) as f:
        blocks = [im for _, _, im in f.iter_blocks(3)]
        images = np.concatenate(blocks)
        assert images.shape == f.shape and images.dtype == np.float32
        assert np.all(np.isfinite(images))
        assert f.read_images(np.array([f.n - 1, 0])).shape == (2, *f.image_shape)
        assert f.cluster_ids.shape == f.log_ages.shape == f.galaxy_ids.shape == (f.n,)
        assert np.all(np.isfinite(f.log_ages))
        for k in f.extra_keys:
            assert len(f.extra(k)) == f.n
    return f


def read_legus(path):
    from astrobatch.io.legus import COLUMNS, read_legus_catalogue

    df = read_legus_catalogue(path)
    assert list(df.columns[1:36]) == list(COLUMNS)
    assert df["source_id"].dtype == np.int64
    return df


def read_out3_all(path):
    from astrobatch.io.nbody6 import read_out3

    s = read_out3(path)
    assert s.pos.shape == s.vel.shape == (s.n_stars, 3)
    assert np.all(np.isfinite(s.mass)) and np.all(np.isfinite(s.pos))
    return s


def read_xp(path):
    from astrobatch.io.gaia_xp import read_gaia_xp, xp_output_columns

    df = read_gaia_xp(path)
    assert df["source_id"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in xp_output_columns())
    return df


def read_fits_all(path):
    from astrobatch.io.fits_tables import fits_table_info, iter_fits_blocks, read_fits_table

    n, names = fits_table_info(path)
    t = read_fits_table(path)
    assert all(len(v) == n for v in t.values())
    assert (
        sum(len(b[names[0]]) for b in iter_fits_blocks(path, block_rows=2)) == n if names else True
    )
    return t


def read_compound_all(path):
    from astrobatch.io.compound_h5 import iter_blocks, key_columns, key_rows, list_keys, sample_rows

    keys = list_keys(path)
    for k in keys:
        n = sum(len(b) for b in iter_blocks(path, k, block_rows=3))
        assert n == key_rows(path, k)
        key_columns(path, k)
    sample_rows(path, keys, 5, seed=0, columns=key_columns(path, keys[0]), block_rows=2)
    return keys


def read_shard_all(path):
    from astrobatch.io.shards import open_shard, shard_info

    info = shard_info(path)
    with open_shard(path) as r:
        for k, meta in info["columns"].items():
            assert r.read(k).shape == meta["shape"]
        for g in info["groups"]:
            assert r.ptr(g).shape == (r.n_rows + 1,)
    return info


def read_manifest_all(path):
    from astrobatch.io.atomic import read_manifest

    m = read_manifest(path.parent, path.name)
    for k in ("bands", "n_train", "splits"):
        m[k]
    return m


def read_checkpoint(path):
    from astrobatch.tasks.checkpoints import load_checkpoint

    return load_checkpoint(path)


# ------------------------------------------------------------------------- mutations
def _bytes_mutation(data, raw: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "overwrite", "zero", "append", "empty"]))
    n = len(raw)
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, max(n - 1, 0)))]
    if kind == "empty":
        return b""
    if kind == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=64))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, n - 1))
        if kind == "zero":
            size = len(buf[at : at + data.draw(st.integers(1, 64))])
            buf[at : at + size] = bytes(size)
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            buf[at : at + len(chunk)] = chunk
    return bytes(buf)


H5_OPS = ["delete", "group", "str", "int", "float", "reshape", "longer", "shorter", "empty",
          "nan", "inf", "scalar", "null", "corrupt_chunk", "del_attr", "set_attr", "bool",
          "drop_field"]  # fmt: skip
_ATTR_VALUES = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
    st.just(b"\xff\xfe"), st.just(np.array([1, 2])), st.just("[1, 2"), st.just('["a"]'),
)  # fmt: skip


def _h5_mutation(data, path: Path) -> None:
    corrupt = None
    with h5py.File(path, "a") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n))
        dsets = [n for n in names if isinstance(f[n], h5py.Dataset)]
        op = data.draw(st.sampled_from(H5_OPS))
        if op in ("del_attr", "set_attr"):
            obj = f[data.draw(st.sampled_from(["/", *names]))]
            keys = list(obj.attrs)
            if op == "del_attr" and keys:
                del obj.attrs[data.draw(st.sampled_from(keys))]
            else:
                key = data.draw(st.sampled_from([*keys, "extra"]))
                obj.attrs[key] = data.draw(_ATTR_VALUES)
            return
        name = data.draw(st.sampled_from(dsets))
        d = f[name]
        arr, attrs, chunks = d[()], dict(d.attrs), d.chunks
        if op == "corrupt_chunk":
            if chunks is None or d.id.get_num_chunks() == 0:
                f.create_dataset("_tmp", data=arr, chunks=True, compression="gzip")
                del f[name]
                f.move("_tmp", name)
                d = f[name]
            info = d.id.get_chunk_info(data.draw(st.integers(0, d.id.get_num_chunks() - 1)))
            corrupt = (info.byte_offset, info.size)
        else:
            del f[name]
            try:
                _rewrite(f, name, op, arr, data)
            except (ValueError, TypeError):
                pass  # mutation impossible for this dtype: the dataset stays deleted
            if name in f and isinstance(f[name], h5py.Dataset):
                for k, v in attrs.items():
                    f[name].attrs[k] = v
    if corrupt is not None:
        off, size = corrupt
        buf = bytearray(path.read_bytes())
        at = off + data.draw(st.integers(0, max(size - 1, 0)))
        junk = data.draw(st.binary(min_size=1, max_size=8))
        buf[at : at + len(junk)] = junk
        path.write_bytes(bytes(buf))


def _strings(arr) -> np.ndarray:
    flat = [str(x) for x in np.asarray(arr).ravel()]
    return np.array(flat, dtype=object).reshape(np.shape(arr))


def _rewrite(f: h5py.File, name: str, op: str, arr, data) -> None:
    a = np.asarray(arr)
    if a.dtype.kind == "O":
        a = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel()]).reshape(
            a.shape
        )
    put = functools.partial(f.create_dataset, name)
    if op == "delete":
        return
    if op == "group":
        f.create_group(name)
    elif op == "str":
        put(data=_strings(a), dtype=h5py.string_dtype())
    elif op == "int":
        put(data=a.astype(np.int64) if a.dtype.kind != "U" else np.arange(a.size).reshape(a.shape))
    elif op == "float":
        put(data=a.astype(np.float64) if a.dtype.kind != "U" else np.zeros(a.shape))
    elif op == "bool":
        put(data=np.ones(a.shape, dtype=bool))
    elif op == "reshape":
        put(
            data=_fix(
                a[..., None] if data.draw(st.booleans()) else a.reshape(-1)[: max(a.size - 1, 0)]
            )
        )
    elif op in ("longer", "shorter", "empty"):
        b = a.reshape(-1, *a.shape[1:]) if a.ndim else a.reshape(1)
        b = {
            "longer": np.concatenate([b, b[:1]]) if len(b) else b,
            "shorter": b[:-1],
            "empty": b[:0],
        }[op]
        put(data=_fix(b))
    elif op in ("nan", "inf"):
        b = a.astype(np.float64) if a.dtype.kind in "fiub" else np.zeros(a.shape)
        if b.size:
            b.reshape(-1)[data.draw(st.integers(0, b.size - 1))] = (
                np.nan if op == "nan" else -np.inf
            )
        put(data=b)
    elif op == "scalar":
        put(data=_fix(a.reshape(-1)[0] if a.size else np.float64(0)))
    elif op == "null":
        put(data=h5py.Empty("f4"))
    elif op == "drop_field":
        if a.dtype.names and len(a.dtype.names) > 1:
            keep = list(a.dtype.names)[1:]
            put(data=np.array(a[keep].tolist(), dtype=[(k, a.dtype[k]) for k in keep]))
        else:
            put(data=_fix(a))


def _fix(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return (
            _strings(a).astype(h5py.string_dtype())
            if a.ndim
            else np.array(str(a), dtype=h5py.string_dtype())
        )
    return a


def _npz_mutation(data, path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    key = data.draw(st.sampled_from(sorted(arrays)))
    a = arrays[key]
    op = data.draw(st.sampled_from(["delete", "str", "object", "int", "float", "reshape", "shorter",
                                    "longer", "empty", "nan", "inf", "scalar"]))  # fmt: skip
    if op == "delete":
        del arrays[key]
    elif op == "str":
        arrays[key] = a.astype(str)
    elif op == "object":
        arrays[key] = a.astype(object)
    elif op == "int":
        arrays[key] = a.astype(np.int64) if a.dtype.kind != "U" else np.arange(a.size)
    elif op == "float":
        arrays[key] = a.astype(np.float64) if a.dtype.kind != "U" else np.zeros(a.shape)
    elif op == "reshape":
        arrays[key] = a[..., None] if data.draw(st.booleans()) else a.reshape(-1)
    elif op in ("shorter", "longer", "empty"):
        arrays[key] = {"shorter": a[:-1], "longer": np.concatenate([a, a[:1]]), "empty": a[:0]}[op]
    elif op in ("nan", "inf"):
        b = a.astype(np.float64) if a.dtype.kind in "fiu" else np.zeros(a.shape)
        if b.size:
            b.reshape(-1)[data.draw(st.integers(0, b.size - 1))] = np.nan if op == "nan" else np.inf
        arrays[key] = b
    else:
        arrays[key] = a.reshape(-1)[0] if a.size else np.float64(0)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _csv_mutation(data, path: Path) -> None:
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    op = data.draw(st.sampled_from(["drop_column", "text_cell", "empty_cell", "drop_header",
                                    "drop_rows", "extra_column", "nan_cell"]))  # fmt: skip
    if op == "drop_header":
        lines = lines[1:]
    elif op == "drop_rows":
        lines = lines[:1]
    else:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        col = data.draw(st.sampled_from(list(df.columns)))
        row = data.draw(st.integers(0, max(len(df) - 1, 0)))
        if op == "drop_column":
            df = df.drop(columns=[col])
        elif op == "extra_column":
            df["extra"] = "1"
        elif len(df):
            df.loc[row, col] = {"text_cell": "abc", "empty_cell": "", "nan_cell": "nan"}[op]
        lines = df.to_csv(index=False).splitlines()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tab_mutation(data, path: Path) -> None:
    rows = [line.split() for line in path.read_text().splitlines()]
    op = data.draw(st.sampled_from(["drop_cell", "text_cell", "extra_cell", "drop_rows",
                                    "truncate", "nan_cell"]))  # fmt: skip
    i = data.draw(st.integers(0, len(rows) - 1))
    j = data.draw(st.integers(0, len(rows[i]) - 1))
    if op == "drop_cell":
        del rows[i][j]
    elif op == "text_cell":
        rows[i][j] = "abc"
    elif op == "nan_cell":
        rows[i][j] = "nan"
    elif op == "extra_cell":
        rows[i].append("1")
    elif op == "drop_rows":
        rows = []
    else:
        rows[i] = rows[i][: j + 1]
    path.write_text("\n".join(" ".join(r) for r in rows) + ("\n" if rows else ""))


def _fits_mutation(data, path: Path) -> None:
    from astropy.table import Table

    t = Table.read(path)
    col = data.draw(st.sampled_from(t.colnames))
    op = data.draw(st.sampled_from(["drop_column", "str", "nan", "int", "2d", "no_rows"]))
    if op == "drop_column":
        t.remove_column(col)
    elif op == "str":
        t[col] = [str(v) for v in t[col]]
    elif op == "nan" and t[col].dtype.kind == "f":
        t[col][data.draw(st.integers(0, len(t) - 1))] = np.nan
    elif op == "int" and t[col].dtype.kind in "fiu" and t[col].ndim == 1:
        t[col] = np.nan_to_num(np.asarray(t[col], dtype=np.float64)).astype(np.int64)
    elif op == "2d" and t[col].ndim == 1:
        t[col] = np.stack([t[col], t[col]], axis=1)
    elif op == "no_rows":
        t = t[:0]
    raw = path.read_bytes()
    try:
        t.write(path, format="fits", overwrite=True)
    except (KeyError, ValueError, TypeError):  # astropy cannot write this table: truncate
        path.write_bytes(raw[: len(raw) // 2])


def _json_mutation(data, path: Path) -> None:
    obj = json.loads(path.read_text())
    op = data.draw(st.sampled_from(["drop_key", "list", "number", "null", "nested"]))
    if op == "drop_key":
        obj.pop(data.draw(st.sampled_from(sorted(obj))))
    elif op == "nested":
        obj = {"x": obj}
    else:
        obj = {"list": [obj], "number": 3, "null": None}[op]
    path.write_text(json.dumps(obj))


def _out3_mutation(data, path: Path) -> None:
    buf = bytearray(path.read_bytes())
    word = data.draw(st.integers(0, len(buf) // 4 - 1))
    value = data.draw(st.sampled_from([np.float32(np.nan), np.float32(np.inf), np.float32(-1.0),
                                       np.int32(-1), np.int32(2**30), np.int32(0)]))  # fmt: skip
    buf[4 * word : 4 * word + 4] = np.asarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(bytes(buf))


# ------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class Reader:
    name: str
    suffix: str
    make: Callable[[Path], None]
    read: Callable[[Path], object]
    structural: Callable | None


READERS = [
    Reader("sets_h5", ".h5", make_sets_h5, read_sets_h5, _h5_mutation),
    Reader("sets_npz", ".npz", make_sets_npz, read_sets_npz, _npz_mutation),
    Reader("cutouts", ".h5", make_cutouts, read_cutouts, _h5_mutation),
    Reader("legus", ".csv", make_legus, read_legus, _csv_mutation),
    Reader("legus_tab", ".tab", make_legus_tab, read_legus, _tab_mutation),
    Reader("nbody6_out3", "", make_out3, read_out3_all, _out3_mutation),
    Reader("gaia_xp_csv", ".csv", lambda p: shutil.copy(XP_DIR / "XP_CONTINUOUS_RAW.csv", p),
           read_xp, _csv_mutation),
    Reader("gaia_xp_fits", ".fits", lambda p: shutil.copy(XP_DIR / "XP_CONTINUOUS_RAW.fits", p),
           read_xp, _fits_mutation),
    Reader("fits_tables", ".fits", make_fits_table, read_fits_all, _fits_mutation),
    Reader("compound_h5", ".h5", make_compound, read_compound_all, _h5_mutation),
    Reader("shards", ".h5", make_shard, read_shard_all, _h5_mutation),
    Reader("manifest", ".json", make_manifest, read_manifest_all, _json_mutation),
    Reader("checkpoint", ".ckpt", make_checkpoint, read_checkpoint, None),
]  # fmt: skip


@functools.cache
def _base_file(name: str) -> Path:
    r = next(r for r in READERS if r.name == name)
    path = _BASE / f"{r.name}{r.suffix}"
    r.make(path)
    r.read(path)  # the valid file reads correctly
    return path


def check_outcome(reader: Reader, path: Path, counts: dict) -> str:
    """Read ``path``: a correct result, or InputError whose message names the file."""
    c = counts[reader.name]
    c["mutated"] += 1
    try:
        reader.read(path)
    except InputError as err:
        c["input_error"] += 1
        assert str(path) in str(err), f"message does not name the file: {err}"
        return "input_error"
    except BaseException:  # a foreign exception, or a wrong result (AssertionError)
        c["foreign"] += 1
        raise
    c["ok"] += 1
    return "ok"


def _checkpoint_report(counts: dict) -> None:
    """Save the counts every 25 inputs, so that a long run killed midway leaves them."""
    out = os.environ.get("ASTROBATCH_FUZZ_REPORT")
    if out and sum(c["mutated"] for c in counts.values()) % 25 == 0:
        Path(out).write_text(json.dumps(dict(sorted(counts.items())), indent=2))


@pytest.mark.parametrize("reader", READERS, ids=[r.name for r in READERS])
def test_valid_file_reads(reader):
    reader.read(_base_file(reader.name))


@pytest.mark.parametrize("reader", READERS, ids=[r.name for r in READERS])
@SETTINGS
@given(data=st.data())
def test_mutated_file(reader, data, fuzz_counts):
    base = _base_file(reader.name)
    with tempfile.TemporaryDirectory(prefix="astrobatch-fuzz-") as tmp:
        path = Path(tmp) / base.name
        shutil.copy(base, path)
        structural = reader.structural is not None and data.draw(st.booleans())
        if structural:
            reader.structural(data, path)
        else:
            path.write_bytes(_bytes_mutation(data, path.read_bytes()))
        try:
            check_outcome(reader, path, fuzz_counts)
        finally:
            _checkpoint_report(fuzz_counts)
