"""stellar_xp prepare: raw files -> scaled, split, chunked table shards (bounded memory).

Inputs (``stellar_xp.data``)
    - ``pretrain_path``: the pretraining HDF5 file of compound datasets
      ``sslset<N>_part<k>`` (:mod:`astrobatch.io.compound_h5`); ``val_keys``
      (default: the last key) are held out for validation, the others train.
      Read when ``pretrain_sources`` is ``simulated`` or ``mixed``.
    - ``real_xp_paths``: real Gaia DR3 XP files in any layout
      (:func:`astrobatch.io.gaia_xp.read_gaia_xp`); real sources carry only the
      XP coefficients (and G, BP, RP when the file has them), every other
      feature is NaN. A fraction ``real_val_fraction`` of them, chosen by a
      hash of ``source_id``, is held out. Read when ``pretrain_sources`` is
      ``real`` or ``mixed``; each file is read whole (they are small).
    - ``finetune_path``: the FITS label table (:mod:`astrobatch.io.fits_tables`),
      split into train/val/test by a hash of ``source_id`` (``data.split``).

Scaling
    Features: :class:`~astrobatch.data.scalers.RobustScaler` (median / IQR per
    column) fitted on a seeded sample of at most ``scaler_max_rows``
    pretraining-train rows drawn uniformly across ``scaler_keys`` (default all
    train keys) and the real train sources, so a file far larger than memory
    can be scaled; a feature with fewer than :data:`MIN_SCALER_VALUES` finite
    values in that sample (e.g. photometry when pretraining on real XP
    spectra only) is fitted on the fine-tuning train split instead. Feature
    errors are divided by the same IQR. Labels: one
    :class:`~astrobatch.data.scalers.StandardScaler` per label fitted on the
    fine-tuning train split (streamed moments), errors divided by its std.

Splits (deterministic, independent of any training seed)
    u = splitmix64(source_id XOR h(salt)) / 2^64 (Steele, Lea & Flood 2014,
    OOPSLA; h = first 8 bytes of sha256(salt)): fine-tuning rows go to train
    if u < train, val if u < train + val, else test; real sources are held
    out when u (salt + ":real") < ``real_val_fraction``.

Outputs (one atomic folder: nothing is half-written)
    ``pretrain_train.h5``, ``pretrain_val.h5``, ``pretrain_val_real.h5``,
    ``finetune_{train,val,test}.h5`` (:mod:`astrobatch.io.shards`, columns of
    :func:`astrobatch.data.layouts.table_layout`),
    ``scalers.json`` and ``manifest.json``. Every input is read and every shard
    written in blocks of ``chunk_rows`` rows, so peak memory depends on
    ``chunk_rows`` and ``scaler_max_rows``, not on the size of the inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from astrobatch.data.layouts import table_layout
from astrobatch.data.scalers import RobustScaler, StandardScaler, save_table_scalers
from astrobatch.errors import InputError
from astrobatch.io import compound_h5 as ch5
from astrobatch.io.atomic import atomic_dir, write_json
from astrobatch.io.fits_tables import fits_table_info, iter_fits_blocks
from astrobatch.io.gaia_xp import read_gaia_xp
from astrobatch.io.shards import ShardWriter
from astrobatch.params import SplitParams
from astrobatch.studies.stellar_xp.columns import (
    ALL_LABELS,
    LABEL_UNITS,
    SOURCE_ID,
    error_columns,
    feature_names,
    label_error_column,
    label_index,
    label_source_column,
    parallax_index,
    recon_cols,
    xp_indices,
)
from astrobatch.studies.stellar_xp.params import StellarXPParams

log = logging.getLogger(__name__)
FINETUNE_SPLITS = ("train", "val", "test")
#: Fewer finite values than this in the pretraining sample: fit the feature on fine-tuning rows.
MIN_SCALER_VALUES = 20
MANIFEST_FORMAT = "astrobatch.stellar_xp_prepared"


# ----------------------------------------------------------------------------------------------
# hashing and splits
# ----------------------------------------------------------------------------------------------


def hash_unit(ids: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id, deterministic in (id, salt) (splitmix64).

    Parameters
    ----------
    ids : numpy.ndarray, shape (n,), int64
    salt : str

    Returns
    -------
    numpy.ndarray, shape (n,), float64

    Examples
    --------
    >>> u = hash_unit(np.arange(100000), "a")
    >>> bool(abs(u.mean() - 0.5) < 0.01), bool((hash_unit(np.arange(3), "a") == u[:3]).all())
    (True, True)
    """
    s = np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big"))
    z = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64) ^ s
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def assign_splits(ids: np.ndarray, split: SplitParams) -> np.ndarray:
    """Split index per id: 0 train, 1 val, 2 test (by :func:`hash_unit` with ``split.salt``).

    Examples
    --------
    >>> s = assign_splits(np.arange(20000), SplitParams(train=0.7, val=0.15, test=0.15))
    >>> [round(float(np.mean(s == k)), 2) for k in range(3)]
    [0.7, 0.15, 0.15]
    """
    u = hash_unit(ids, split.salt)
    return np.where(u < split.train, 0, np.where(u < split.train + split.val, 1, 2)).astype(np.int8)


def real_holdout(ids: np.ndarray, fraction: float, salt: str) -> np.ndarray:
    """True for real sources held out of pretraining (validation), by hashed id."""
    return hash_unit(ids, f"{salt}:real") < fraction


# ----------------------------------------------------------------------------------------------
# readers of each input as blocks of (ids, x, x_err)
# ----------------------------------------------------------------------------------------------


def _matrix_cols(features: Sequence[str]) -> tuple[list[str], list[tuple[int, str]]]:
    errs = error_columns(features)
    return list(features), [(j, e) for j, e in enumerate(errs) if e is not None]


def normalise_xp(x: np.ndarray, err: np.ndarray, features: Sequence[str]) -> None:
    """Flux-normalise the XP coefficients of (x, x_err) in place.

    XP coefficients scale with the source's flux and span orders of magnitude
    across a magnitude-limited sample, which no per-column scaler tames. As in
    Zhang, Green & Rix (2023, MNRAS 524, 1855; arXiv:2303.17012), who divide XP
    spectra by the G-band flux, the shape is separated from the brightness:
    for each of BP and RP, ``c_1 -> -2.5 log10(c_1)`` (a pseudo-magnitude, NaN
    when c_1 <= 0) and ``c_i -> c_i / c_1`` for i >= 2; errors propagate as
    ``e_1 -> 1.0857 e_1 / c_1`` and ``e_i -> e_i / |c_1|`` (covariances ignored).

    Parameters
    ----------
    x, err : numpy.ndarray, shape (n, F), float64
        Features and their errors in the order of ``features``.
    features : sequence of str
        Column names (``bp_1..bp_55``, ``rp_1..rp_55`` among them).
    """
    col = {c: j for j, c in enumerate(features)}
    for band in ("bp", "rp"):
        j1 = col.get(f"{band}_1")
        if j1 is None:
            continue
        c1 = x[:, j1].copy()
        good = c1 > 0
        inv = np.where(good, 1.0 / np.where(good, c1, 1.0), np.nan)
        rest = [col[f"{band}_{i}"] for i in range(2, 56) if f"{band}_{i}" in col]
        x[:, rest] *= inv[:, None]
        err[:, rest] *= np.abs(inv)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            x[:, j1] = np.where(good, -2.5 * np.log10(np.where(good, c1, 1.0)), np.nan)
        err[:, j1] = 2.5 / np.log(10) * err[:, j1] * inv


def _xe_from_block(
    block, features, err_pairs, xp_normalisation: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """(x, x_err) float64 matrices from a structured block or a dict of columns."""
    n = len(block[SOURCE_ID]) if SOURCE_ID in _names(block) else len(block[features[0]])
    x = np.full((n, len(features)), np.nan)
    names = _names(block)
    for j, c in enumerate(features):
        if c in names:
            x[:, j] = block[c]
    err = np.full((n, len(features)), np.nan)
    for j, e in err_pairs:
        if e in names:
            err[:, j] = block[e]
    if xp_normalisation == "flux":
        normalise_xp(x, err, features)
    return x, err


def _names(block) -> set[str]:
    return set(block.dtype.names) if isinstance(block, np.ndarray) else set(block)


def _check_finite_or_nan(x: np.ndarray, cols: Sequence[str], path, key: str | None, what: str):
    if np.isinf(x).any():
        i, j = np.argwhere(np.isinf(x))[0]
        raise InputError(
            f"infinite {what} at row {int(i)} (of a block); expected finite numbers or NaN",
            path,
            f"{key + '/' if key else ''}{cols[j]}",
        )


class _Simulated:
    """The pretraining HDF5 file: key lists and checked block readers."""

    def __init__(
        self,
        path: str,
        val_keys: Sequence[str],
        scaler_keys: Sequence[str],
        features,
        xp_norm: str = "none",
    ):
        self.xp_norm = xp_norm
        self.path = path
        self.keys = ch5.list_keys(path)
        self.val_keys = list(val_keys) or [self.keys[-1]]
        for k in self.val_keys:
            if k not in self.keys:
                raise InputError(f"val_keys entry not in the file; keys are {self.keys}", path, k)
        self.train_keys = [k for k in self.keys if k not in self.val_keys]
        if not self.train_keys:
            raise InputError(
                f"every dataset is held out for validation ({self.val_keys}); expected at least "
                "one training key",
                path,
            )
        self.scaler_keys = list(scaler_keys) or list(self.train_keys)
        for k in self.scaler_keys:
            if k not in self.train_keys:
                raise InputError(
                    f"scaler_keys must be training keys {self.train_keys} (no leakage from "
                    "validation)",
                    path,
                    k,
                )
        self.features, self.err_pairs = _matrix_cols(features)
        self.columns = [SOURCE_ID, *self.features, *[e for _, e in self.err_pairs]]
        self.rows = {}
        for k in self.keys:
            names = ch5.key_columns(path, k)
            missing = [c for c in self.columns if c not in names and c != SOURCE_ID]
            if missing:
                raise InputError(
                    f"missing column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
                    f"expected every feature and error column ({len(self.columns) - 1})",
                    path,
                    k,
                )
            self.rows[k] = ch5.key_rows(path, k)
        self.has_ids = all(SOURCE_ID in ch5.key_columns(path, k) for k in self.keys)

    def n_rows(self, keys: Sequence[str]) -> int:
        return int(sum(self.rows[k] for k in keys))

    def blocks(self, keys: Sequence[str], chunk_rows: int) -> Iterator[tuple]:
        offset = {k: int(sum(self.rows[q] for q in self.keys[: self.keys.index(k)])) for k in keys}
        cols = self.columns if self.has_ids else self.columns[1:]
        for k in keys:
            start = 0
            for block in ch5.iter_blocks(self.path, k, cols, chunk_rows):
                x, err = _xe_from_block(block, self.features, self.err_pairs, self.xp_norm)
                _check_finite_or_nan(x, self.features, self.path, k, "feature")
                n = len(x)
                if self.has_ids:
                    ids = np.asarray(block[SOURCE_ID], dtype=np.int64)
                else:  # no ids: the global row number
                    ids = offset[k] + start + np.arange(n, dtype=np.int64)
                start += n
                yield ids, x, err

    def sample(self, n: int, seed: int, chunk_rows: int) -> np.ndarray:
        if n <= 0:
            return np.empty((0, len(self.features)), np.float32)
        rows = ch5.sample_rows(self.path, self.scaler_keys, n, seed, self.features, chunk_rows)
        x = ch5.as_matrix(rows, self.features, dtype=np.float32)  # 4 bytes per value
        _check_finite_or_nan(x, self.features, self.path, None, "feature")
        if self.xp_norm == "flux":  # the same representation as the shards
            x64 = x.astype(np.float64)
            normalise_xp(x64, np.zeros_like(x64), self.features)
            x = x64.astype(np.float32)
        return x


class _Real:
    """Real Gaia XP sources: feature matrices (XP and G/BP/RP only) and their hold-out."""

    def __init__(
        self, paths: Sequence[str], features, fraction: float, salt: str, xp_norm: str = "none"
    ):
        self.xp_norm = xp_norm
        if not paths:
            raise InputError("pretrain_sources uses real stars but real_xp_paths is empty",
                             key="stellar_xp.data.real_xp_paths")  # fmt: skip
        self.features, self.err_pairs = _matrix_cols(features)
        ids, xs, es, per_file = [], [], [], {}
        for p in paths:
            df = read_gaia_xp(p)
            cols = {c: df[c].to_numpy() for c in df.columns}
            x, err = _xe_from_block(cols, self.features, self.err_pairs, self.xp_norm)
            _check_finite_or_nan(x, self.features, p, None, "XP value")
            ids.append(df[SOURCE_ID].to_numpy(np.int64))
            xs.append(x)
            es.append(err)
            per_file[str(p)] = len(df)
        self.ids = np.concatenate(ids)
        uniq, first = np.unique(self.ids, return_index=True)
        if len(uniq) < len(self.ids):  # the same source in two files: keep its first row
            keep = np.sort(first)
            log.info("real XP files: %d duplicate source_id dropped", len(self.ids) - len(keep))
        else:
            keep = np.arange(len(self.ids))
        self.ids = self.ids[keep]
        self.x = np.concatenate(xs)[keep]
        self.err = np.concatenate(es)[keep]
        self.val = real_holdout(self.ids, fraction, salt)
        self.per_file = per_file

    def blocks(self, val: bool, chunk_rows: int) -> Iterator[tuple]:
        idx = np.flatnonzero(self.val == val)
        for a in range(0, len(idx), chunk_rows):
            i = idx[a : a + chunk_rows]
            yield self.ids[i], self.x[i], self.err[i]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = np.flatnonzero(~self.val)
        pick = np.sort(rng.choice(len(idx), size=min(n, len(idx)), replace=False))
        return self.x[idx[pick]].astype(np.float32)


class _Finetune:
    """The fine-tuning FITS table: checked columns, split assignment, block reader."""

    def __init__(
        self, path: str, features, labels: Sequence[str], split: SplitParams, xp_norm: str = "none"
    ):
        self.xp_norm = xp_norm
        self.path = path
        self.n, names = fits_table_info(path)
        self.features, self.err_pairs = _matrix_cols(features)
        self.labels = list(labels)
        self.label_cols = [label_source_column(lab) for lab in labels]
        self.label_err_cols = [label_error_column(lab) for lab in labels]
        need = [SOURCE_ID, *self.label_cols, *self.label_err_cols, *self.features]
        need += [e for _, e in self.err_pairs]
        missing = [c for c in dict.fromkeys(need) if c not in names]
        if missing:
            raise InputError(
                f"missing column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}; expected "
                "source_id, every label, e_<label>, feature and feature-error column",
                path,
                missing[0],
            )
        self.columns = list(dict.fromkeys(need))
        ids = np.concatenate(
            [b[SOURCE_ID].astype(np.int64) for b in iter_fits_blocks(path, [SOURCE_ID], 1 << 20)]
            or [np.zeros(0, np.int64)]
        )
        if len(np.unique(ids)) != len(ids):
            dup = ids[np.argmax(np.unique(ids, return_counts=True)[1] > 1)] if len(ids) else None
            raise InputError(f"duplicate source_id values (e.g. {dup}); expected unique ids",
                             path, SOURCE_ID)  # fmt: skip
        self.split_of = assign_splits(ids, split)
        for k, name in enumerate(FINETUNE_SPLITS):
            ratio = (split.train, split.val, split.test)[k]
            if ratio > 0 and not np.any(self.split_of == k):
                raise InputError(
                    f"the {name} split is empty ({self.n} rows); expected a larger table or "
                    "another split",
                    path,
                    SOURCE_ID,
                )

    def blocks(self, chunk_rows: int) -> Iterator[tuple]:
        start = 0
        for b in iter_fits_blocks(self.path, self.columns, chunk_rows):
            n = len(b[SOURCE_ID])
            x, err = _xe_from_block(b, self.features, self.err_pairs, self.xp_norm)
            _check_finite_or_nan(x, self.features, self.path, None, "feature")
            y = np.stack([b[c].astype(np.float64) for c in self.label_cols], axis=1)
            y_err = np.stack([b[c].astype(np.float64) for c in self.label_err_cols], axis=1)
            _check_finite_or_nan(y, self.labels, self.path, None, "label")
            ids = b[SOURCE_ID].astype(np.int64)
            yield start, ids, x, err, y, y_err, self.split_of[start : start + n]
            start += n


# ----------------------------------------------------------------------------------------------
# scalers
# ----------------------------------------------------------------------------------------------


def _label_scaler(ft: _Finetune, required: Sequence[str], chunk_rows: int) -> StandardScaler:
    L = len(ft.labels)
    total, total_sq, count = np.zeros(L), np.zeros(L), np.zeros(L, dtype=np.int64)
    for start, ids, _, _, y, _, split in ft.blocks(chunk_rows):
        for lab in required:
            j = ft.labels.index(lab)
            bad = np.flatnonzero(np.isnan(y[:, j]))
            if len(bad):
                raise InputError(
                    f"NaN label at row {start + int(bad[0])} (source_id {int(ids[bad[0]])}); "
                    f"expected a value in every row (data.required_labels)",
                    ft.path,
                    ft.label_cols[j],
                )
        yt = y[split == 0]
        ok = np.isfinite(yt)
        z = np.where(ok, yt, 0.0)
        total += z.sum(0)
        total_sq += (z * z).sum(0)
        count += ok.sum(0)
    for j, c in enumerate(count):
        if c == 0:
            raise InputError(
                "no finite value in the fine-tuning train split; expected labels to fit the "
                "label scaler",
                ft.path,
                ft.label_cols[j],
            )
    return StandardScaler.from_moments(ft.labels, total, total_sq, count)


def _finetune_sample(ft: _Finetune, n: int, seed: int, chunk_rows: int) -> np.ndarray:
    """A seeded sample of at most ``n`` fine-tuning train rows (features), streamed."""
    train_rows = np.flatnonzero(ft.split_of == 0)
    pick = np.zeros(len(ft.split_of), dtype=bool)
    pick[train_rows[ch5.sample_positions(len(train_rows), n, seed)]] = True
    parts = []
    for start, _, x, _, _, _, _ in ft.blocks(chunk_rows):
        parts.append(x[pick[start : start + len(x)]])
    return np.concatenate(parts) if parts else np.empty((0, len(ft.features)))


def _feature_scaler(
    sim: _Simulated | None,
    real: _Real | None,
    ft: _Finetune,
    features: list[str],
    max_rows: int,
    seed: int,
    chunk_rows: int,
) -> tuple[RobustScaler, dict]:
    n_sim = sim.n_rows(sim.scaler_keys) if sim else 0
    n_real = int(np.sum(~real.val)) if real else 0
    total = n_sim + n_real
    k = min(max_rows, total)
    k_sim = round(k * n_sim / total) if total else 0
    rng = np.random.default_rng(seed)
    parts = []
    if sim:
        parts.append(sim.sample(k_sim, seed, chunk_rows))
    if real:
        parts.append(real.sample(k - k_sim, rng))
    sample = np.concatenate(parts) if parts else np.empty((0, len(features)), np.float32)
    scaler = RobustScaler.fit(sample, features)
    weak = [j for j, c in enumerate(scaler.n_fit) if c < MIN_SCALER_VALUES]
    if weak:
        fallback = RobustScaler.fit(_finetune_sample(ft, max_rows, seed + 1, chunk_rows), features)
        for j in weak:
            scaler.centre[j], scaler.scale[j] = fallback.centre[j], fallback.scale[j]
            scaler.n_fit[j] = fallback.n_fit[j]
    info = {
        "sample_rows": len(sample),
        "sample_simulated": int(k_sim) if sim else 0,
        "sample_real": len(sample) - (int(k_sim) if sim else 0),
        "seed": int(seed),
        "keys": list(sim.scaler_keys) if sim else [],
        "fitted_on_finetune": [features[j] for j in weak],
    }
    return scaler, info


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------


def _write_pretrain(path, blocks, scaler: RobustScaler, features, chunk_rows, attrs, tick) -> int:
    columns = table_layout(features)
    with ShardWriter(path, columns, chunk_rows=chunk_rows, compression="lzf", attrs=attrs) as w:
        for ids, x, err in blocks:
            w.append({"x": scaler.transform(x), "x_err": scaler.transform_errors(err),
                      "source_id": ids})  # fmt: skip
            tick(len(ids))
        return w.n_rows


def _sources(d, sim: _Simulated | None, real: _Real | None, ft: _Finetune) -> dict:
    """The manifest's description of the inputs actually read."""
    out: dict = {"simulated": None, "real": None}
    if sim is not None:
        out["simulated"] = {
            "path": str(d.pretrain_path),
            "keys": sim.keys,
            "train_keys": sim.train_keys,
            "val_keys": sim.val_keys,
            "rows": sim.rows,
        }
    if real is not None:
        out["real"] = {
            "paths": real.per_file,
            "n_sources": len(real.ids),
            "n_val": int(real.val.sum()),
            "val_fraction": d.real_val_fraction,
        }
    out["finetune"] = {"path": str(d.finetune_path), "rows": ft.n}
    return out


def prepare(
    params: StellarXPParams,
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Scale, split and shard the stellar_xp inputs (see the module docstring).

    Parameters
    ----------
    params : StellarXPParams
        The ``stellar_xp`` section (``data`` is used).
    out_dir : str or pathlib.Path
        Output folder; replaced only when everything succeeded.
    progress : callable, optional
        ``progress(done, total)`` over input rows written.

    Returns
    -------
    dict
        The manifest (also ``manifest.json``): ``features`` (F names),
        ``feature_errors`` (error column or None per feature), ``recon_cols``,
        ``n_recon``, ``labels``, ``label_units``, ``xp_indices``,
        ``parallax_index``, ``parallax_label_index``, ``pretrain_sources``,
        ``sources``, ``counts`` (rows per shard), ``scaler`` (sample details),
        ``split`` (ratios, salt).

    Raises
    ------
    InputError
        Missing file; missing dataset key or column; a dataset that is not
        1-D compound or a non-scalar field; wrong or unknown layout of a real
        XP file; infinite values; duplicate fine-tuning ``source_id``; NaN in
        a ``required_labels`` column; a label with no value in the train
        split; an empty split; inconsistent ``val_keys``/``scaler_keys``.
    """
    d = params.data
    features = feature_names(d.include_radec)
    labels = list(d.labels)
    unknown = [lab for lab in labels if lab not in ALL_LABELS]
    if unknown:
        raise InputError(f"unknown labels {unknown}; expected a subset of {list(ALL_LABELS)}",
                         key="stellar_xp.data.labels")  # fmt: skip
    use_sim = d.pretrain_sources in ("simulated", "mixed")
    use_real = d.pretrain_sources in ("real", "mixed")
    chunk = d.chunk_rows
    salt = d.split.salt
    xn = d.xp_normalisation
    sim = _Simulated(d.pretrain_path, d.val_keys, d.scaler_keys, features, xn) if use_sim else None
    real = _Real(d.real_xp_paths, features, d.real_val_fraction, salt, xn) if use_real else None
    ft = _Finetune(d.finetune_path, features, labels, d.split, xn)
    required = list(d.required_labels)
    seed = int(hash_unit(np.array([0]), f"{salt}:scaler")[0] * 2**31)
    label_scaler = _label_scaler(ft, required, chunk)
    feature_scaler, scaler_info = _feature_scaler(
        sim, real, ft, features, d.scaler_max_rows, seed, chunk
    )

    total = ft.n
    if sim:
        total += sim.n_rows(sim.keys)
    if real:  # held-out real rows are written twice when pretraining on real stars only
        total += len(real.ids) + (0 if sim else int(real.val.sum()))
    state = {"done": 0}

    def tick(n: int) -> None:
        state["done"] += n
        if progress:
            progress(state["done"], total)

    counts: dict[str, int] = {}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        # pretraining
        def train_blocks():
            if sim:
                yield from sim.blocks(sim.train_keys, chunk)
            if real:
                yield from real.blocks(False, chunk)

        def val_blocks():
            if sim:
                yield from sim.blocks(sim.val_keys, chunk)
            elif real:  # real-only pretraining: validate on the held-out real sources
                yield from real.blocks(True, chunk)

        def val_real_blocks():
            if real:
                yield from real.blocks(True, chunk)

        for name, blocks in (
            ("pretrain_train", train_blocks()),
            ("pretrain_val", val_blocks()),
            ("pretrain_val_real", val_real_blocks()),
        ):
            attrs = {"stage": "pretrain", "split": name.split("_", 1)[1]}
            counts[name] = _write_pretrain(
                tmp / f"{name}.h5", blocks, feature_scaler, features, chunk, attrs, tick
            )
        # fine-tuning: one pass, three shards
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(
                    ShardWriter(
                        tmp / f"finetune_{s}.h5",
                        table_layout(features, labels),
                        chunk_rows=chunk,
                        compression="lzf",
                        attrs={"stage": "finetune", "split": s},
                    )
                )
                for s in FINETUNE_SPLITS
            ]
            for _, ids, x, err, y, y_err, split in ft.blocks(chunk):
                xs, es = feature_scaler.transform(x), feature_scaler.transform_errors(err)
                ys, yes = label_scaler.transform(y), label_scaler.transform_errors(y_err)
                for k, w in enumerate(writers):
                    m = split == k
                    if m.any():
                        w.append({"x": xs[m], "x_err": es[m], "source_id": ids[m],
                                  "y": ys[m], "y_err": yes[m]})  # fmt: skip
                tick(len(ids))
        for s, w in zip(FINETUNE_SPLITS, writers, strict=True):
            counts[f"finetune_{s}"] = w.n_rows
        # an empty split would train on nothing and exit 0: refused before the swap-in
        pretrain_input = d.pretrain_path if sim else ", ".join(map(str, d.real_xp_paths))
        for name in ("pretrain_train", "pretrain_val"):
            if counts[name] == 0:
                raise InputError(
                    f"no rows for {name} (expected at least one star with XP coefficients)",
                    pretrain_input, "data.pretrain_sources",
                )  # fmt: skip
        for name in ("finetune_train", "finetune_val"):
            if counts[name] == 0:
                raise InputError(
                    f"no labelled rows for {name} (expected at least one star with labels)",
                    d.finetune_path, "data.split",
                )  # fmt: skip

        manifest = {
            "format": MANIFEST_FORMAT,
            "features": features,
            "feature_errors": error_columns(features),
            "recon_cols": recon_cols(d.recon_until),
            "xp_normalisation": d.xp_normalisation,
            "n_recon": len(recon_cols(d.recon_until)),
            "labels": labels,
            "label_units": {lab: LABEL_UNITS[lab] for lab in labels},
            "xp_indices": xp_indices(features),
            "parallax_index": parallax_index(features),
            "parallax_label_index": label_index(labels, "parallax"),
            "pretrain_sources": d.pretrain_sources,
            "sources": _sources(d, sim, real, ft),
            "counts": counts,
            "scaler": scaler_info,
            "split": {
                "train": d.split.train,
                "val": d.split.val,
                "test": d.split.test,
                "salt": salt,
                "method": "splitmix64(source_id ^ sha256(salt)[:8])",
            },
            "chunk_rows": chunk,
        }
        save_table_scalers(
            tmp / "scalers.json", feature_scaler, label_scaler,
            feature_errors=error_columns(features),
        )  # fmt: skip
        write_json(tmp / "manifest.json", manifest)
    return manifest
