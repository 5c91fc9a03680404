"""star_sets prepare: raw snapshots → split manifest, train-only scalers, chunked shards.

Inputs (``star_sets.data.raw_format``):

- ``hdf5``: the astrobatch raw format (see README, "Raw star-set format"),
  read lazily snapshot by snapshot, so memory is bounded by one block;
- ``upstream_npz``: one or several upstream ``.npz`` shards (a file, a folder
  or a glob), see :func:`astrobatch.io.sets.read_upstream_npz`;
- ``nbody6_out3``: NBODY6++ OUT3 snapshot files (a file, a folder or a glob),
  targets computed with the simulator's definition
  (:func:`astrobatch.studies.star_sets.physics.snapshot_targets`).

A folder keeps only the files named like ``data.raw_pattern`` (default ``**/conf.3_*`` for
OUT3, in the folder and its run sub-folders; ``*.npz`` for the upstream shards), so licences
and notes can sit beside the data and DVC tracks the folder. A glob works from the CLI only
(under DVC the path is a stage dependency). OUT3 run ids are ``data.run_id`` or, by default,
each file's folder name: one NBODY6++ run per folder; splits are by run.

Outputs in ``data/prepared/star_sets/``: ``manifest.json`` (runs per split),
``scalers.json`` and ``{train,val,test}.h5`` shards (:mod:`astrobatch.io.shards`, columns
of :func:`astrobatch.data.layouts.set_layout`).

Angular features (``lon_deg``, ``lat_deg``) are re-centred per snapshot on
their median (longitude differences wrapped into [-180, 180) deg) before
scaling, so a model sees the cluster's shape on the sky, not its position.
"""

from __future__ import annotations

import abc
import glob
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from astrobatch.data.layouts import SET_ELEMENTS, set_layout
from astrobatch.data.scalers import GroupRobustScaler, TargetScaler, save_scalers
from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_dir, write_json
from astrobatch.io.errors import open_h5, reading
from astrobatch.io.sets import CSRSets, csr_groups, read_upstream_npz
from astrobatch.io.shards import ShardWriter
from astrobatch.params import SplitParams
from astrobatch.studies.star_sets.params import StarSetsData

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
ANGULAR = ("lon_deg", "lat_deg")


# ----------------------------------------------------------------------------------------------
# Raw sources: per-snapshot columns in memory, star rows read on demand
# ----------------------------------------------------------------------------------------------


class RawSource(abc.ABC):
    """A raw collection of snapshots whose star rows are read on demand.

    Attributes
    ----------
    path : str
        Where the data came from (for messages).
    ptr : numpy.ndarray, shape (n_snapshots + 1,), int64
    sets : dict of str to numpy.ndarray, each (n_snapshots,)
        Per-snapshot columns (targets, ``run_id``, initial conditions).
    """

    path: str
    ptr: np.ndarray
    sets: dict[str, np.ndarray]

    @property
    def n_sets(self) -> int:
        """Number of snapshots."""
        return len(self.ptr) - 1

    @abc.abstractmethod
    def read_rows(self, start: int, stop: int, keys: Sequence[str]) -> np.ndarray:
        """Star rows ``start:stop`` of columns ``keys``, shape (stop-start, len(keys)), float64."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release file handles."""


class MemorySource(RawSource):
    """A :class:`RawSource` over an in-memory :class:`CSRSets`."""

    def __init__(self, data: CSRSets, path: str):
        self.data, self.path = data, path
        self.ptr, self.sets = data.ptr, data.sets

    def read_rows(self, start, stop, keys):
        missing = [k for k in keys if k not in self.data.elements]
        if missing:
            raise InputError(
                f"missing feature column(s) {missing}; present: {sorted(self.data.elements)}",
                self.path,
                missing[0],
            )
        return np.stack([self.data.elements[k][start:stop] for k in keys], axis=1).astype(
            np.float64
        )


class H5Source(RawSource):
    """A :class:`RawSource` over the astrobatch raw HDF5 format, read lazily."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError("raw file not found (run simulate, or set star_sets.data.raw_path)", p)
        try:
            self.f = open_h5(p, "raw star-set file")
        except OSError as err:
            raise InputError(f"not a readable HDF5 file ({err})", p) from None
        self.eg, sg = csr_groups(self.f, p)
        self._columns: dict[str, h5py.Dataset] = {}
        with reading(p, "raw star-set HDF5", "ptr"):
            self.ptr = self.f["ptr"][()]
        if not np.issubdtype(self.ptr.dtype, np.integer) or self.ptr[0] != 0:
            raise InputError("expected int64 CSR pointer starting at 0", p, "ptr")
        if np.any(np.diff(self.ptr) < 0):
            raise InputError("expected a non-decreasing pointer", p, "ptr")
        self.sets = {}
        for k in self.f[sg]:
            with reading(p, "raw star-set HDF5", f"{sg}/{k}"):
                v = self.f[sg][k][()]
            if v.dtype.kind in "OS":
                v = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in v])
            if v.shape[:1] != (self.n_sets,):
                raise InputError(
                    f"expected {self.n_sets} values (len(ptr) - 1), got shape {v.shape}",
                    p,
                    f"{sg}/{k}",
                )
            self.sets[k] = v

    def _column(self, k: str) -> h5py.Dataset:
        # Dataset handles are opened and checked once: re-opening a column for every
        # snapshot throws away HDF5's chunk cache (each read would decompress a whole chunk).
        if k not in self._columns:
            g = self.f[self.eg]
            if k not in g:
                raise InputError(
                    f"missing star column; present: {sorted(g.keys())}", self.path, f"{self.eg}/{k}"
                )
            d = g[k]
            if d.ndim != 1 or d.shape[0] != self.ptr[-1]:
                raise InputError(
                    f"expected shape ({int(self.ptr[-1])},) (= ptr[-1]), got {d.shape}",
                    self.path,
                    f"{self.eg}/{k}",
                )
            self._columns[k] = d
        return self._columns[k]

    def read_rows(self, start, stop, keys):
        cols = []
        for k in keys:
            d = self._column(k)
            with reading(self.path, "raw star-set HDF5", f"{self.eg}/{k}"):
                cols.append(np.asarray(d[start:stop], dtype=np.float64))
        return np.stack(cols, axis=1)

    def close(self):
        self.f.close()


#: File-name pattern of each format's files inside a raw folder (``data.raw_pattern: null``).
DEFAULT_PATTERNS: dict[str, str] = {"nbody6_out3": "**/conf.3_*", "upstream_npz": "*.npz"}


def expand_inputs(path: str, pattern: str | None = None) -> list[Path]:
    """The input files of a raw path: a file, a folder (+ a name pattern) or a glob.

    Parameters
    ----------
    path : str
        One file, a folder or a glob (``*?[``; from the CLI only: under DVC the path is a
        stage dependency, so give a folder and ``pattern``).
    pattern : str, optional
        :meth:`pathlib.Path.glob` pattern of the files kept in a folder, relative to it
        (``**/`` reaches sub-folders: ``**/conf.3_*`` is every OUT3 snapshot of a folder of
        run folders); default ``*``, every visible file. Ignored for a file or a glob.

    Returns
    -------
    list of pathlib.Path
        Sorted; hidden files and folders left out.

    Raises
    ------
    InputError
        If nothing matches (the message names the folder and the pattern).
    """
    p = Path(path)
    if p.is_dir():
        found = (q for q in p.glob(pattern or "*") if q.is_file())
        files = sorted(q for q in found if not any(s[0] == "." for s in q.relative_to(p).parts))
        if not files:
            what = f"no file named like {pattern!r}" if pattern else "no file"
            raise InputError(f"{what} in the folder", path, key="data.raw_pattern")
        return files
    files = [Path(q) for q in sorted(glob.glob(path))] if any(c in path for c in "*?[") else [p]
    if not files:
        raise InputError("no input files match", path)
    return files


def nbody6_to_sets(
    paths: Sequence[str | Path], r_gc_kpc: float = 8.0, run_id: str | None = None
) -> CSRSets:
    """Convert NBODY6++ OUT3 snapshots to the raw star-set layout.

    Positions and velocities are re-centred on the density centre and the
    centre velocity found by
    :func:`~astrobatch.studies.star_sets.physics.snapshot_targets`, which also
    gives r_t (Jacobi radius on a circular orbit of radius ``r_gc_kpc`` in
    MWPotential2014) and ``total_mass_within_2x_r_tidal`` (Msun).

    Parameters
    ----------
    paths : sequence of path
        OUT3 files (one snapshot each).
    r_gc_kpc : float
        Galactocentric radius of the assumed orbit, kpc.
    run_id : str, optional
        The run every snapshot belongs to; default the name of each file's folder (NBODY6++
        writes a run's snapshots ``conf.3_<time>`` into its run directory, so snapshots of one
        run share a split and runs in sibling folders are told apart).

    Returns
    -------
    CSRSets
        Star columns ``x, y, z`` (pc), ``vx, vy, vz`` (km/s), ``mass`` (Msun);
        per-snapshot targets, ``run_id``, ``snapshot_id`` (position in ``paths``),
        ``source`` (file name) and ``time`` (Myr).

    Raises
    ------
    InputError
        From the OUT3 reader on malformed files.
    """
    from astrobatch.io.nbody6 import read_out3
    from astrobatch.studies.star_sets.physics import snapshot_targets

    parts = []
    for i, p in enumerate(paths):
        snap = read_out3(p)
        t = snapshot_targets(snap.pos, snap.vel, snap.mass, r_gc_kpc=r_gc_kpc)
        pos = snap.pos - np.asarray(t["centre_pos"])
        vel = snap.vel - np.asarray(t["centre_vel"])
        n = len(snap.mass)
        elements = {
            "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
            "vx": vel[:, 0], "vy": vel[:, 1], "vz": vel[:, 2],
            "mass": snap.mass,
        }  # fmt: skip
        sets = {
            "run_id": np.array([run_id if run_id is not None else Path(p).resolve().parent.name]),
            "snapshot_id": np.array([i], dtype=np.int64),
            "source": np.array([Path(p).name]),
            "time": np.array([snap.time_myr]),
        }
        for k in (
            "total_mass_within_2x_r_tidal",
            "n_stars_within_2x_r_tidal",
            "r_half_mass",
            "r_tidal",
        ):
            sets[k] = np.array([float(t[k])])
        parts.append(
            CSRSets(
                ptr=np.array([0, n], dtype=np.int64),
                elements={k: np.asarray(v, dtype=np.float32) for k, v in elements.items()},
                sets=sets,
            )
        )
    return CSRSets.concatenate(parts).validate(str(paths[0]))


def open_raw(
    path: str, raw_format: str, r_gc_kpc: float = 8.0, pattern: str | None = None,
    run_id: str | None = None,
) -> RawSource:  # fmt: skip
    """Open a raw input of any supported format as a :class:`RawSource`.

    Parameters
    ----------
    path : str
        The HDF5 file, or for the other formats a file, a folder or a glob
        (:func:`expand_inputs`).
    raw_format : {"hdf5", "upstream_npz", "nbody6_out3"}
    r_gc_kpc : float
        Galactocentric radius of the OUT3 runs' orbit, kpc.
    pattern : str, optional
        File-name pattern in a folder (default :data:`DEFAULT_PATTERNS` of the format).
    run_id : str, optional
        Run id of OUT3 snapshots (:func:`nbody6_to_sets`).

    Raises
    ------
    InputError
        Missing or malformed file, or a folder without matching files.
    """
    if raw_format == "hdf5":
        return H5Source(path)
    files = expand_inputs(path, pattern or DEFAULT_PATTERNS.get(raw_format))
    if raw_format == "upstream_npz":
        data = CSRSets.concatenate([read_upstream_npz(f) for f in files])
        data.sets["snapshot_id"] = np.arange(data.n_sets, dtype=np.int64)
    elif raw_format == "nbody6_out3":
        data = nbody6_to_sets(files, r_gc_kpc, run_id)
    else:  # validated by params; kept for direct API calls
        raise InputError(f"unknown raw format {raw_format!r}", path)
    return MemorySource(data, path)


# ----------------------------------------------------------------------------------------------
# Split by run
# ----------------------------------------------------------------------------------------------


def _hash01(salt: str, run_id: str) -> float:
    h = hashlib.sha256(f"{salt}:{run_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_runs(
    run_ids: Sequence[str], strata: Sequence[tuple] | None, split: SplitParams
) -> dict[str, list[str]]:
    """Assign whole runs to train/val/test, stratified by initial conditions.

    Runs are sorted by (stratum, hash of ``salt:run_id``); the i-th run gets
    the Weyl-sequence value u_i = frac(u_0 + i φ⁻¹) (a low-discrepancy
    sequence, so every stretch of the sorted list – every stratum – is spread
    evenly over [0, 1)); the runs with the lowest u go to train, then val,
    then test, in the requested proportions (at least one run each for
    non-zero ratios when there are enough runs). The result depends only on
    the run ids, the strata and the salt, never on a training seed: adding a
    model or changing a seed never reshuffles the test set.

    Parameters
    ----------
    run_ids : sequence of str
        Unique run ids.
    strata : sequence of tuple, optional
        Stratum of each run (same order); None = one stratum.
    split : SplitParams
        Ratios and salt.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises
    ------
    InputError
        Fewer runs than non-empty splits requested.

    Examples
    --------
    >>> s = split_runs([f"r{i}" for i in range(10)], None, SplitParams())
    >>> [len(s[k]) for k in ("train", "val", "test")]
    [7, 2, 1]
    """
    run_ids = list(run_ids)
    n = len(run_ids)
    ratios = {"train": split.train, "val": split.val, "test": split.test}
    needed = sum(1 for r in ratios.values() if r > 0)
    if n < needed:
        raise InputError(
            f"{n} run(s) cannot fill {needed} splits; expected at least {needed} distinct run_id "
            "values (splits are by run, never within a run)",
            key="run_id",
        )
    strata = list(strata) if strata is not None else [()] * n
    order = sorted(range(n), key=lambda i: (strata[i], _hash01(split.salt, run_ids[i])))
    u0 = _hash01(split.salt, "__offset__")
    golden = (math.sqrt(5) - 1) / 2
    u = {order[i]: (u0 + i * golden) % 1.0 for i in range(n)}
    n_test = max(1, round(split.test * n)) if split.test > 0 else 0
    n_val = max(1, round(split.val * n)) if split.val > 0 else 0
    n_val = min(n_val, n - n_test - 1)
    by_u = sorted(range(n), key=lambda i: u[i])
    cut1, cut2 = n - n_val - n_test, n - n_test
    out = {
        "train": sorted(run_ids[i] for i in by_u[:cut1]),
        "val": sorted(run_ids[i] for i in by_u[cut1:cut2]),
        "test": sorted(run_ids[i] for i in by_u[cut2:]),
    }
    return out


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------


@dataclass
class _Block:
    features: np.ndarray
    ptr: np.ndarray
    index: np.ndarray


def _centre_angles(x: np.ndarray, features: Sequence[str]) -> np.ndarray:
    if "lon_deg" in features:
        j = list(features).index("lon_deg")
        ref = x[0, j] if len(x) else 0.0
        d = (x[:, j] - ref + 180.0) % 360.0 - 180.0
        x[:, j] = (d - np.median(d) + 180.0) % 360.0 - 180.0
    if "lat_deg" in features:
        j = list(features).index("lat_deg")
        x[:, j] -= np.median(x[:, j])
    return x


def _snapshot_rows(src: RawSource, i: int, features: Sequence[str]) -> np.ndarray:
    a, b = int(src.ptr[i]), int(src.ptr[i + 1])
    if b <= a:
        sid = src.sets.get("snapshot_id", np.arange(src.n_sets))[i]
        raise InputError(
            f"snapshot {sid} (index {i}) has no stars; expected at least 1", src.path, "ptr"
        )
    x = src.read_rows(a, b, features)
    bad = ~np.isfinite(x)
    if bad.any():
        col = features[int(np.argwhere(bad)[0][1])]
        raise InputError(
            f"{int(bad.sum())} non-finite value(s) in snapshot index {i}; expected finite features",
            src.path,
            col,
        )
    return _centre_angles(x, features)


def _blocks(src: RawSource, idx: np.ndarray, features, chunk_rows: int):
    """Yield blocks of whole snapshots totalling about ``chunk_rows`` rows."""
    cur, sizes, members = [], [], []
    rows = 0
    for i in idx:
        x = _snapshot_rows(src, int(i), features)
        cur.append(x)
        sizes.append(len(x))
        members.append(i)
        rows += len(x)
        if rows >= chunk_rows:
            yield _Block(
                np.concatenate(cur), np.concatenate([[0], np.cumsum(sizes)]), np.array(members)
            )
            cur, sizes, members, rows = [], [], [], 0
    if members:
        yield _Block(
            np.concatenate(cur), np.concatenate([[0], np.cumsum(sizes)]), np.array(members)
        )


def _fit_feature_scaler(
    src: RawSource, idx: np.ndarray, features, max_rows: int, salt: str
) -> GroupRobustScaler:
    """Fit on a seeded sample of at most ``max_rows`` training rows (bounded memory)."""
    sizes = np.diff(src.ptr)[idx]
    total = int(sizes.sum())
    rng = np.random.default_rng(int(_hash01(salt, "scaler") * 2**32))
    frac = min(1.0, max_rows / max(total, 1))
    parts = []
    for i in idx:
        x = _snapshot_rows(src, int(i), features)
        if frac < 1.0:
            x = x[rng.random(len(x)) < frac]
        parts.append(x)
    return GroupRobustScaler.fit(np.concatenate(parts), features)


def prepare(
    params: StarSetsData,
    out_dir: str | Path,
    r_gc_kpc: float = 8.0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Split by run, fit scalers on train, write chunked shards (atomically, as one folder).

    Parameters
    ----------
    params : StarSetsData
        Raw path/format, features, target, split, chunking.
    out_dir : str or pathlib.Path
        Output folder; replaced only when everything succeeded.
    r_gc_kpc : float
        Orbit radius for r_t of NBODY6 inputs, kpc.
    progress : callable, optional
        ``progress(done, total)`` over snapshots written.

    Returns
    -------
    dict
        The manifest (also written to ``manifest.json``).

    Raises
    ------
    InputError
        Missing/malformed raw data, NaN features or targets, empty snapshots,
        missing target or run_id, fewer runs than splits.
    """
    src = open_raw(params.raw_path, params.raw_format, r_gc_kpc, params.raw_pattern,
                   params.run_id)  # fmt: skip
    try:
        return _prepare(src, params, Path(out_dir), progress)
    finally:
        src.close()


def _prepare(src: RawSource, params: StarSetsData, out_dir: Path, progress) -> dict:
    for k in ("run_id", params.target):
        if k not in src.sets:
            raise InputError(
                f"missing per-snapshot column; present: {sorted(src.sets)}", src.path, k
            )
    target = np.asarray(src.sets[params.target], dtype=np.float64)
    if not np.all(np.isfinite(target)):
        bad = int(np.argmax(~np.isfinite(target)))
        raise InputError(f"non-finite target at snapshot index {bad}", src.path, params.target)
    if params.log_target and np.any(target <= 0):
        raise InputError("expected targets > 0 for log10 scaling", src.path, params.target)
    run_ids = src.sets["run_id"].astype(str)
    runs = list(dict.fromkeys(run_ids))
    strat_keys = [k for k in params.split.stratify if k in src.sets]
    if len(strat_keys) < len(params.split.stratify):
        log.info(
            "stratify columns %s absent from %s; stratifying on %s",
            sorted(set(params.split.stratify) - set(strat_keys)), src.path, strat_keys,
        )  # fmt: skip
    first = {r: int(np.argmax(run_ids == r)) for r in runs}
    strata = [tuple(src.sets[k][first[r]].item() for k in strat_keys) for r in runs]
    try:
        assignment = split_runs(runs, strata, params.split)
    except InputError as err:
        raise err.in_file(src.path) from None
    split_of = {r: s for s, rs in assignment.items() for r in rs}
    idx = {s: np.flatnonzero([split_of[r] == s for r in run_ids]) for s in SPLITS}

    feature_scaler = _fit_feature_scaler(
        src, idx["train"], params.features, params.scaler_sample_rows, params.split.salt
    )
    target_scaler = TargetScaler.fit(target[idx["train"]], params.log_target)
    set_cols = {
        k: v
        for k, v in src.sets.items()
        if v.ndim == 1 and (v.dtype.kind in "iufb" or k == "run_id")
    }
    manifest = {
        "source": src.path,
        "target": params.target,
        "log_target": params.log_target,
        "features": list(params.features),
        "salt": params.split.salt,
        "ratios": {"train": params.split.train, "val": params.split.val, "test": params.split.test},
        "stratify": strat_keys,
        "runs": assignment,
        "n_snapshots": {s: len(idx[s]) for s in SPLITS},
        "n_stars": {s: int(np.diff(src.ptr)[idx[s]].sum()) for s in SPLITS},
    }
    columns, groups = set_layout(params.features, {k: v.dtype for k, v in set_cols.items()})
    total, done = src.n_sets, 0
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            with ShardWriter(
                tmp / f"{s}.h5", columns, groups, chunk_rows=params.chunk_rows,
                element_chunk_rows=max(1, params.chunk_rows // max(len(params.features), 1)),
                attrs={"split": s, "target_key": params.target},
            ) as w:  # fmt: skip
                for block in _blocks(src, idx[s], params.features, params.chunk_rows):
                    sets = {k: v[block.index] for k, v in set_cols.items()}
                    sets["target"] = target_scaler.to_model_space(target[block.index])
                    features = feature_scaler.transform(block.features)
                    w.append(sets, {SET_ELEMENTS: (block.ptr, {"features": features})})
                    done += len(block.index)
                    if progress:
                        progress(done, total)
        save_scalers(tmp / "scalers.json", feature_scaler, target_scaler)
        write_json(tmp / "manifest.json", manifest)
    return manifest
