"""Variable-size sets in CSR layout, and their HDF5 / upstream-npz file formats.

A collection of sets (star clusters made of stars, galaxy clusters made of
member galaxies, ...) is stored as flat per-element columns plus a pointer
array ``ptr`` of length ``n_sets + 1``: set ``i`` is elements
``ptr[i]:ptr[i + 1]`` (compressed sparse rows).

HDF5 layout (``format = "astrobatch.csr_sets"``, ``version = 1``)::

    /ptr                     int64   (n_sets + 1,)   ptr[0] = 0, non-decreasing
    /<element_group>/<col>   float32 (n_elements,)   one dataset per element column
    /<set_group>/<col>       (n_sets,)               per-set columns: numbers or UTF-8 strings

For star_sets the groups are ``stars`` and ``snapshots``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import check_finite, h5_dataset, h5_read, open_h5, reading

FORMAT_NAME = "astrobatch.csr_sets"
FORMAT_VERSION = 1
CSR_WHAT = "star-set HDF5 file (astrobatch.csr_sets)"
NPZ_WHAT = "upstream star_sets .npz shard"


@dataclass
class CSRSets:
    """Variable-size sets in CSR layout (in memory).

    Parameters
    ----------
    ptr : numpy.ndarray, shape (n_sets + 1,), int64
        Set ``i`` is rows ``ptr[i]:ptr[i + 1]`` of every element column.
    elements : dict of str to numpy.ndarray, each shape (n_elements,)
        Per-element columns (float32 on disk).
    sets : dict of str to numpy.ndarray, each shape (n_sets,)
        Per-set columns: targets, ids, initial conditions.

    Raises
    ------
    InputError
        From :meth:`validate`, if the shapes are inconsistent.
    """

    ptr: np.ndarray
    elements: dict[str, np.ndarray] = field(default_factory=dict)
    sets: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_sets(self) -> int:
        """Number of sets."""
        return len(self.ptr) - 1

    @property
    def n_elements(self) -> int:
        """Total number of elements over all sets."""
        return int(self.ptr[-1])

    @property
    def sizes(self) -> np.ndarray:
        """Elements per set, shape (n_sets,), int64."""
        return np.diff(self.ptr)

    def validate(self, source: str | Path = "<memory>") -> CSRSets:
        """Check ``ptr`` and column lengths; return self.

        Raises
        ------
        InputError
            Naming ``source`` and the offending key.
        """
        ptr = np.asarray(self.ptr)
        if ptr.ndim != 1 or len(ptr) < 1:
            raise InputError(
                f"expected a 1-D array of length n_sets+1, got {ptr.shape}", source, "ptr"
            )
        if not np.issubdtype(ptr.dtype, np.integer):
            raise InputError(f"expected integers, got {ptr.dtype}", source, "ptr")
        if ptr[0] != 0 or np.any(np.diff(ptr) < 0):
            raise InputError("expected ptr[0] == 0 and non-decreasing values", source, "ptr")
        for k, v in self.elements.items():
            if v.shape != (self.n_elements,):
                raise InputError(
                    f"expected shape ({self.n_elements},) (= ptr[-1]), got {v.shape}", source, k
                )
        for k, v in self.sets.items():
            if v.shape[:1] != (self.n_sets,):
                raise InputError(
                    f"expected first dimension {self.n_sets} (= len(ptr) - 1), got {v.shape}",
                    source,
                    k,
                )
        return self

    def select(self, indices: Sequence[int] | np.ndarray) -> CSRSets:
        """Return the sets at ``indices`` (in that order) as a new CSRSets."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = self.sizes[idx]
        ptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        rows = (
            np.concatenate([np.arange(self.ptr[i], self.ptr[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return CSRSets(
            ptr=ptr,
            elements={k: v[rows] for k, v in self.elements.items()},
            sets={k: v[idx] for k, v in self.sets.items()},
        )

    @staticmethod
    def concatenate(parts: Iterable[CSRSets]) -> CSRSets:
        """Concatenate collections that share the same columns."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        ptrs, offset = [np.zeros(1, dtype=np.int64)], 0
        for p in parts:
            ptrs.append(p.ptr[1:] + offset)
            offset += p.n_elements
        keys_e, keys_s = list(parts[0].elements), list(parts[0].sets)
        return CSRSets(
            ptr=np.concatenate(ptrs),
            elements={k: np.concatenate([p.elements[k] for p in parts]) for k in keys_e},
            sets={k: np.concatenate([p.sets[k] for p in parts]) for k in keys_s},
        )


def _encode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "US":
        return np.asarray(values, dtype=object).astype(h5py.string_dtype("utf-8"))
    return values


def write_csr_h5(
    path: str | Path,
    data: CSRSets,
    element_group: str = "stars",
    set_group: str = "snapshots",
    attrs: dict | None = None,
) -> None:
    """Write a :class:`CSRSets` to HDF5, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination ``.h5`` file.
    data : CSRSets
        The collection; element columns are stored as float32, gzip-compressed
        and chunked.
    element_group, set_group : str
        Group names (``stars`` / ``snapshots`` for star_sets).
    attrs : dict, optional
        Extra root attributes (e.g. units, provenance).
    """
    data.validate(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["element_group"] = element_group
        f.attrs["set_group"] = set_group
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("ptr", data=np.asarray(data.ptr, dtype=np.int64))
        g = f.create_group(element_group)
        chunk = (min(max(data.n_elements, 1), 262144),)
        for k, v in data.elements.items():
            g.create_dataset(
                k,
                data=np.asarray(v, dtype=np.float32),
                chunks=chunk,
                compression="gzip",
                compression_opts=1,
            )
        s = f.create_group(set_group)
        for k, v in data.sets.items():
            s.create_dataset(k, data=_encode(np.asarray(v)))


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "O" or values.dtype.kind == "S":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        with reading(path, CSR_WHAT):
            return open_h5(path, CSR_WHAT)
    except InputError as err:
        raise InputError(f"not a readable HDF5 file ({err.detail})", path) from None


def read_csr_h5(
    path: str | Path,
    element_keys: Sequence[str] | None = None,
    set_keys: Sequence[str] | None = None,
    required_set_keys: Sequence[str] = (),
) -> CSRSets:
    """Read an HDF5 file written by :func:`write_csr_h5` (all in memory).

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    element_keys : sequence of str, optional
        Element columns to read (all when None). Each must exist.
    set_keys : sequence of str, optional
        Per-set columns to read (all when None). Each must exist.
    required_set_keys : sequence of str
        Per-set columns that must exist (checked even when ``set_keys`` is None).

    Returns
    -------
    CSRSets

    Raises
    ------
    InputError
        Missing file, not HDF5, missing key, wrong shape, or NaN in ``ptr``.
    """
    path = Path(path)
    with _open_h5(path) as f, reading(path, CSR_WHAT) as ctx:
        eg, sg = csr_groups(f, path)
        ctx.key = "ptr"
        ptr = h5_read(f["ptr"], path, "ptr")
        data = CSRSets(ptr=ptr)
        ekeys = list(f[eg].keys()) if element_keys is None else list(element_keys)
        skeys = list(f[sg].keys()) if set_keys is None else list(set_keys)
        for k in ekeys:
            if k not in f[eg]:
                raise InputError(
                    f"missing element column; present: {sorted(f[eg].keys())}", path, f"{eg}/{k}"
                )
            ctx.key = f"{eg}/{k}"
            v = h5_read(f[eg][k], path, ctx.key)
            data.elements[k] = check_finite(v, path, ctx.key, "element values (features)")
        for k in dict.fromkeys([*skeys, *required_set_keys]):
            if k not in f[sg]:
                raise InputError(
                    f"missing per-set column; present: {sorted(f[sg].keys())}", path, f"{sg}/{k}"
                )
            ctx.key = f"{sg}/{k}"
            v = _decode(h5_read(f[sg][k], path, ctx.key))
            data.sets[k] = check_finite(v, path, ctx.key, "per-set values (targets)")
    return data.validate(path)


def csr_groups(f: h5py.File, path: str | Path) -> tuple[str, str]:
    """Check the CSR layout of an open HDF5 file and return its group names.

    Raises
    ------
    InputError
        If ``ptr`` or the element/set groups are missing or malformed.
    """
    with reading(path, CSR_WHAT) as ctx:
        ctx.key = "element_group"
        eg = _group_name(f.attrs.get("element_group", "stars"), path, ctx.key)
        ctx.key = "set_group"
        sg = _group_name(f.attrs.get("set_group", "snapshots"), path, ctx.key)
        ctx.key = "ptr"
        if "ptr" not in f:
            raise InputError("missing CSR pointer array (int64, n_sets+1)", path, "ptr")
        d = h5_dataset(f, "ptr", path)
        if d.ndim != 1:
            raise InputError(f"expected a 1-D array, got shape {d.shape}", path, "ptr")
        ptr = CSRSets(ptr=h5_read(d, path, "ptr")).validate(path).ptr
        n_sets, n_elements = len(ptr) - 1, int(ptr[-1])
        for g in (eg, sg):
            ctx.key = g
            if g not in f or not isinstance(f[g], h5py.Group):
                raise InputError(f"missing group; top-level keys: {sorted(f.keys())}", path, g)
        for k in f[eg]:
            ctx.key = f"{eg}/{k}"
            d = h5_dataset(f[eg], k, path, "fiu", ctx.key)
            if d.shape != (n_elements,):
                raise InputError(
                    f"expected shape ({n_elements},) (= ptr[-1]), got {d.shape}", path, ctx.key
                )
        for k in f[sg]:
            ctx.key = f"{sg}/{k}"
            d = h5_dataset(f[sg], k, path, "fiubT", ctx.key)
            if d.shape[:1] != (n_sets,):
                raise InputError(
                    f"expected first dimension {n_sets} (= len(ptr) - 1), got {d.shape}",
                    path,
                    ctx.key,
                )
    return eg, sg


def _group_name(value, path, key: str) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, str) or not value or "/" in value or value == "ptr":
        raise InputError(f"expected a group name (non-empty string), got {value!r}", path, key)
    return value


# ----------------------------------------------------------------------------------------------
# Upstream shard format (np.savez_compressed)
# ----------------------------------------------------------------------------------------------

UPSTREAM_KEYS = ("feature", "feature_keys", "target", "target_keys", "ptr")


def read_upstream_npz(path: str | Path) -> CSRSets:
    """Read one upstream star_sets shard (``.npz``) into a :class:`CSRSets`.

    The upstream format (``np.savez_compressed``) holds ``feature`` float32
    (n_stars_total, F), ``feature_keys`` (F,), ``target`` float32
    (n_snapshots, T), ``target_keys`` (T,) and ``ptr`` int64
    (n_snapshots + 1,). Optional ``run_id`` (n_snapshots,) strings; without it
    the file stem is the run id of every snapshot (one upstream shard per run).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    CSRSets
        Element columns named by ``feature_keys``; set columns named by
        ``target_keys`` plus ``run_id`` and ``snapshot_id`` (0..n-1 within
        the file).

    Raises
    ------
    InputError
        Missing file or key, mismatched shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        with reading(path, NPZ_WHAT):
            z = np.load(path, allow_pickle=False)
    except InputError as err:
        raise InputError(f"not a readable .npz file ({err.detail})", path) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(
            f"expected an .npz archive of {', '.join(UPSTREAM_KEYS)}, got a single array", path
        )
    with z, reading(path, NPZ_WHAT) as ctx:
        for k in UPSTREAM_KEYS:
            if k not in z.files:
                raise InputError(f"missing key; present: {sorted(z.files)}", path, k)
        arrays = {}
        for k in (*UPSTREAM_KEYS, "run_id"):
            if k in z.files:
                ctx.key = k
                arrays[k] = _npz_array(z, k, path)
        feature, target = arrays["feature"], arrays["target"]
        fkeys = _npz_names(arrays["feature_keys"], path, "feature_keys")
        tkeys = _npz_names(arrays["target_keys"], path, "target_keys")
        ptr = _npz_ptr(arrays["ptr"], path)
        run_id = arrays["run_id"].astype(str) if "run_id" in arrays else None
        if feature.dtype.kind not in "fiu":
            raise InputError(f"expected numbers, got {feature.dtype}", path, "feature")
        if target.dtype.kind not in "fiu":
            raise InputError(f"expected numbers, got {target.dtype}", path, "target")
    if feature.ndim != 2 or feature.shape[1] != len(fkeys):
        raise InputError(
            f"expected shape (n_stars, {len(fkeys)}) matching feature_keys, got {feature.shape}",
            path,
            "feature",
        )
    if target.ndim != 2 or target.shape != (len(ptr) - 1, len(tkeys)):
        raise InputError(
            f"expected shape ({len(ptr) - 1}, {len(tkeys)}) (n_snapshots, target_keys), "
            f"got {target.shape}",
            path,
            "target",
        )
    check_finite(feature, path, "feature", "features")
    check_finite(target, path, "target", "targets")
    n = len(ptr) - 1
    sets = {k: target[:, j].astype(np.float64) for j, k in enumerate(tkeys)}
    sets["run_id"] = run_id if run_id is not None else np.array([path.stem] * n)
    sets["snapshot_id"] = np.arange(n, dtype=np.int64)
    data = CSRSets(
        ptr=ptr,
        elements={k: feature[:, j].astype(np.float32) for j, k in enumerate(fkeys)},
        sets=sets,
    )
    data.validate(path)
    if data.n_elements != feature.shape[0]:
        raise InputError(
            f"ptr[-1] = {data.n_elements} but feature has {feature.shape[0]} rows", path, "ptr"
        )
    return data


def _npz_array(z, key: str, path: Path) -> np.ndarray:
    arr = np.asarray(z[key])
    if arr.dtype.kind == "O" or arr.dtype.names is not None:
        raise InputError(f"expected a plain numeric or string array, got {arr.dtype}", path, key)
    return arr


def _npz_names(arr: np.ndarray, path: Path, key: str) -> list[str]:
    if arr.ndim != 1:
        raise InputError(f"expected a 1-D array of column names, got shape {arr.shape}", path, key)
    names = [str(k) for k in arr]
    if len(set(names)) != len(names):
        raise InputError(f"expected distinct column names, got {names}", path, key)
    return names


def _npz_ptr(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError("expected integer values, got non-integral floats", path, "ptr")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"expected integers, got {arr.dtype}", path, "ptr")
    if arr.ndim != 1 or len(arr) < 1:
        raise InputError(f"expected a 1-D array of length n_sets+1, got {arr.shape}", path, "ptr")
    return arr.astype(np.int64)


def write_upstream_npz(
    path: str | Path, data: CSRSets, feature_keys: Sequence[str], target_keys: Sequence[str]
) -> None:
    """Write a :class:`CSRSets` in the upstream ``.npz`` shard format, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination (``.npz``).
    data : CSRSets
    feature_keys, target_keys : sequence of str
        Element and set columns to store, in this order. ``run_id`` is stored
        too when present.
    """
    arrays = {
        "feature": np.stack([data.elements[k] for k in feature_keys], axis=1).astype(np.float32),
        "feature_keys": np.array(list(feature_keys)),
        "target": np.stack([data.sets[k] for k in target_keys], axis=1).astype(np.float32),
        "target_keys": np.array(list(target_keys)),
        "ptr": np.asarray(data.ptr, dtype=np.int64),
    }
    if "run_id" in data.sets:
        arrays["run_id"] = np.asarray(data.sets["run_id"]).astype(str)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
