"""Raw cluster-cutout HDF5 files (the PHANGS-HST ``raw_phangs_dataset.h5`` layout).

Layout (the real file has exactly the first four datasets and no attributes)::

    /cluster_ids        int32    (N,)            cluster id (unique within a galaxy)
    /galaxy_ids         str      (N,)            host galaxy / field, e.g. "NGC_628C" (UTF-8)
    /image_cutouts      float32  (N, C, H, W)    C = 5 filters (F275W, F336W, F438W or F435W,
                                                 F555W, F814W) or C = 1 (white light); H == W
                                                 (112 in the real file); cluster at pixel
                                                 (H // 2, W // 2)
    /cluster_log_ages   float32  (N,)            log10 age / yr (finite)

Optional datasets that only simulated files carry (absent -> ``None`` in the reader)::

    /catalogue_magnitudes   float32 (N, C)   apparent Vega magnitudes of the cluster, NaN where
                                             the parent catalogue had no detection
    /cluster_log_masses     float32 (N,)     log10 mass / Msun
    /cluster_ebv            float32 (N,)     E(B-V), mag (starburst law, Calzetti et al. 2000)
    /catalogue_source_ids   int64   (N,)     parent LEGUS source, pointing * 100000 + id

Each dataset written here carries a ``units`` attribute; the root attribute
``band_names`` (JSON list) names the channels. Image units are those of the
source (simulated files: electrons per second per pixel, sky subtracted).

:func:`write_cutouts` writes a whole file; :class:`CutoutWriter` streams the
images block by block, so a simulator never holds all N cutouts in memory.
Both write a temporary file in the destination folder and rename it only on
success (:func:`astrobatch.io.atomic.atomic_path`). :func:`open_cutouts`
validates a file once, at the boundary, and then reads images lazily.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path
from astrobatch.io.errors import h5_dataset, h5_read, open_h5, reading

#: HST bands of the PHANGS-HST cluster cutouts, in channel order (WFC3/UVIS F275W, F336W,
#: F438W, F555W and F814W; LEGUS catalogues name their columns after the same bands).
PHANGS_BANDS: tuple[str, ...] = ("F275W", "F336W", "F438W", "F555W", "F814W")

#: The four datasets every raw cutout file has.
REQUIRED_KEYS: tuple[str, ...] = ("cluster_ids", "galaxy_ids", "image_cutouts", "cluster_log_ages")
#: Optional per-cluster datasets (simulated files), with their trailing shape ("C" = channels).
EXTRA_KEYS: dict[str, tuple] = {
    "catalogue_magnitudes": ("C",),
    "cluster_log_masses": (),
    "cluster_ebv": (),
    "catalogue_source_ids": (),
}
#: Units written to each dataset's ``units`` attribute.
UNITS: dict[str, str] = {
    "cluster_ids": "1",
    "galaxy_ids": "1",
    "image_cutouts": "electron / s / pixel (sky subtracted)",
    "cluster_log_ages": "dex (log10 age / yr)",
    "catalogue_magnitudes": "mag (Vega, apparent, total)",
    "cluster_log_masses": "dex (log10 mass / Msun)",
    "cluster_ebv": "mag (E(B-V), starburst law, Calzetti et al. 2000)",
    "catalogue_source_ids": "1 (parent catalogue source: pointing * 100000 + source id)",
}
#: Allowed numbers of channels: the five filters, or one white-light (stacked) image.
ALLOWED_CHANNELS: tuple[int, ...] = (1, 5)
#: Default HDF5 chunk length along N (cutouts per chunk; 16 x 5 x 112 x 112 float32 = 4 MiB).
DEFAULT_CHUNK_IMAGES = 16
#: How cutout files are named in read-error messages.
CUTOUT_WHAT = "raw cutout HDF5 file"
#: Chunk cache of the reader, bytes.
READ_CACHE_BYTES = 64 * 2**20


def default_band_names(n_channels: int) -> tuple[str, ...]:
    """Channel names when a file does not say: the five filters, or ``("white",)``.

    Parameters
    ----------
    n_channels : int
        1 or 5.

    Returns
    -------
    tuple of str

    Raises
    ------
    InputError
        If ``n_channels`` is not 1 or 5.
    """
    if n_channels == 5:
        return tuple(PHANGS_BANDS)
    if n_channels == 1:
        return ("white",)
    raise InputError(f"expected 1 or 5 channels, got {n_channels}", key="image_cutouts")


def _check_meta(
    cluster_ids, galaxy_ids, cluster_log_ages, n: int, path
) -> tuple[np.ndarray, list[str], np.ndarray]:
    ids = np.asarray(cluster_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(
            f"expected integers of shape ({n},), got {ids.dtype} {ids.shape}", path, "cluster_ids"
        )
    if np.any(ids > np.iinfo(np.int32).max) or np.any(ids < np.iinfo(np.int32).min):
        raise InputError("expected ids that fit in int32", path, "cluster_ids")
    gal = [str(g) for g in np.asarray(galaxy_ids, dtype=object).reshape(-1)]
    if np.ndim(galaxy_ids) != 1 or len(gal) != n:
        raise InputError(f"expected {n} strings, got shape {np.shape(galaxy_ids)}", path,
                         "galaxy_ids")  # fmt: skip
    ages = np.asarray(cluster_log_ages, dtype=np.float64)
    if ages.shape != (n,):
        raise InputError(f"expected shape ({n},), got {ages.shape}", path, "cluster_log_ages")
    if not np.all(np.isfinite(ages)):
        raise InputError("expected finite log ages (dex), got NaN/inf", path, "cluster_log_ages")
    return ids.astype(np.int32), gal, ages.astype(np.float32)


def _check_extra(name: str, value, n: int, n_channels: int, path) -> np.ndarray:
    arr = np.asarray(value)
    trailing = EXTRA_KEYS.get(name)
    if trailing is None:
        if arr.ndim < 1 or arr.shape[0] != n:
            raise InputError(f"expected a leading dimension of {n}, got shape {arr.shape}", path,
                             name)  # fmt: skip
        return arr
    want = (n, *(n_channels if t == "C" else t for t in trailing))
    if arr.shape != want:
        raise InputError(f"expected shape {want}, got {arr.shape}", path, name)
    if name == "catalogue_source_ids":
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"expected integers, got {arr.dtype}", path, name)
        return arr.astype(np.int64)
    return arr.astype(np.float32)


class CutoutWriter:
    """Write a raw cutout file, images streamed block by block; it appears only on success.

    The per-cluster metadata are given up front; the images are written with
    :meth:`write` in any order of blocks, and every row must have been written
    when the ``with`` block ends (otherwise :class:`InputError`, and no file).

    Parameters
    ----------
    path : str or pathlib.Path
        Final ``.h5`` path (parent folders are created).
    cluster_ids : array_like, shape (N,), integer
        Cluster ids (stored as int32).
    galaxy_ids : sequence of str, length N
        Host-galaxy ids (stored as variable-length UTF-8 strings).
    cluster_log_ages : array_like, shape (N,), float
        log10 age / yr, finite (stored as float32).
    image_shape : tuple of int
        ``(C, H, W)`` with C in {1, 5} and H == W.
    extra : mapping of str to array_like, optional
        Optional datasets with leading dimension N (see :data:`EXTRA_KEYS`
        for the known ones and their shapes; float32 except
        ``catalogue_source_ids``, int64).
    attrs : mapping, optional
        Root attributes (str, numbers, or JSON-serialisable values stored as JSON).
    band_names : sequence of str, optional
        Channel names (default :func:`default_band_names`).
    chunk_images : int
        Cutouts per HDF5 chunk (chunks are ``(min(N, chunk_images), C, H, W)``).
    compression : {None, "lzf", "gzip"}
        HDF5 filter of the image dataset (with byte shuffle when set).

    Raises
    ------
    InputError
        On inconsistent shapes, non-finite log ages, out-of-range rows, or
        rows left unwritten.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "raw.h5"
    >>> with CutoutWriter(p, [1, 2], ["G", "G"], [7.0, 8.0], (5, 16, 16)) as w:
    ...     w.write(0, np.zeros((2, 5, 16, 16), np.float32))
    >>> with open_cutouts(p) as f:
    ...     f.n, f.image_shape
    (2, (5, 16, 16))
    """

    def __init__(
        self,
        path: str | Path,
        cluster_ids,
        galaxy_ids: Sequence[str],
        cluster_log_ages,
        image_shape: tuple[int, int, int],
        extra: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        band_names: Sequence[str] | None = None,
        chunk_images: int = DEFAULT_CHUNK_IMAGES,
        compression: str | None = None,
    ):
        self.path = Path(path)
        n = int(np.shape(cluster_ids)[0]) if np.ndim(cluster_ids) >= 1 else 0
        if n < 1:
            raise InputError("expected at least one cutout", self.path, "cluster_ids")
        self.n = n
        self.ids, self.galaxy_ids, self.log_ages = _check_meta(
            cluster_ids, galaxy_ids, cluster_log_ages, n, self.path
        )
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or shape[0] not in ALLOWED_CHANNELS or shape[1] != shape[2]:
            raise InputError(
                f"expected image_shape (C, H, W) with C in {ALLOWED_CHANNELS} and H == W, "
                f"got {shape}",
                self.path,
                "image_cutouts",
            )
        if shape[1] < 1:
            raise InputError(f"expected H >= 1, got {shape}", self.path, "image_cutouts")
        self.image_shape = shape
        self.band_names = tuple(band_names or default_band_names(shape[0]))
        if len(self.band_names) != shape[0]:
            raise InputError(
                f"expected {shape[0]} band names, got {list(self.band_names)}",
                self.path,
                "band_names",
            )
        self.extra = {
            k: _check_extra(k, v, n, shape[0], self.path) for k, v in (extra or {}).items()
        }
        for k in self.extra:
            if k in REQUIRED_KEYS:
                raise InputError("an extra dataset cannot replace a required one", self.path, k)
        self.attrs = dict(attrs or {})
        self.chunk_images = max(1, int(chunk_images))
        if compression not in (None, "lzf", "gzip"):
            raise InputError(f"expected None, 'lzf' or 'gzip', got {compression!r}", self.path,
                             "compression")  # fmt: skip
        self.compression = compression
        self._ctx = None
        self._written = None

    def __enter__(self) -> CutoutWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        try:
            self._f = h5py.File(tmp, "w")
            f = self._f
            self._put(f, "cluster_ids", self.ids)
            self._put(f, "galaxy_ids", np.asarray(self.galaxy_ids, dtype=object),
                      dtype=h5py.string_dtype("utf-8"))  # fmt: skip
            self._put(f, "cluster_log_ages", self.log_ages)
            c, h, w = self.image_shape
            self._images = f.create_dataset(
                "image_cutouts",
                shape=(self.n, c, h, w),
                dtype=np.float32,
                chunks=(min(self.n, self.chunk_images), c, h, w),
                compression=self.compression,
                shuffle=self.compression is not None,
            )
            self._images.attrs["units"] = UNITS["image_cutouts"]
            self._images.attrs["band_names"] = json.dumps(list(self.band_names))
            for k, v in self.extra.items():
                self._put(f, k, v)
            f.attrs["band_names"] = json.dumps(list(self.band_names))
            for k, v in self.attrs.items():
                f.attrs[k] = v if isinstance(v, str | int | float | np.number) else json.dumps(v)
        except BaseException as e:
            self._abort(e)
            raise
        self._written = np.zeros(self.n, dtype=bool)
        return self

    @staticmethod
    def _put(f: h5py.File, key: str, value, dtype=None) -> None:
        d = f.create_dataset(key, data=value, dtype=dtype)
        d.attrs["units"] = UNITS.get(key, "see root attributes")

    def write(self, start: int, images) -> None:
        """Write a block of cutouts at rows ``start : start + len(images)``.

        Parameters
        ----------
        start : int
            First row (0-based).
        images : array_like, shape (B, C, H, W), float
            Cutouts (cast to float32).

        Raises
        ------
        InputError
            If the writer is not open, the block's shape is wrong or it runs
            past N.
        """
        if self._written is None:
            raise InputError("the writer is not open (use it in a with block)", self.path)
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[1:] != self.image_shape:
            raise InputError(
                f"expected a block of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {arr.shape}",
                self.path,
                "image_cutouts",
            )
        start = int(start)
        stop = start + arr.shape[0]
        if start < 0 or stop > self.n:
            raise InputError(f"rows {start}:{stop} outside 0:{self.n}", self.path, "image_cutouts")
        self._images[start:stop] = arr
        self._written[start:stop] = True

    def _abort(self, exc: BaseException) -> None:
        try:
            if getattr(self, "_f", None) is not None:
                self._f.close()
        finally:
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None and self._written is not None and not self._written.all():
            missing = int(np.flatnonzero(~self._written)[0])
            exc = InputError(
                f"{int((~self._written).sum())} of {self.n} cutouts never written "
                f"(first: row {missing})",
                self.path,
                "image_cutouts",
            )
            self._written = None
            self._abort(exc)
            raise exc
        self._written = None
        if exc is not None:
            self._abort(exc)
            return
        self._f.close()
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)


def write_cutouts(
    path: str | Path,
    cluster_ids,
    galaxy_ids: Sequence[str],
    image_cutouts,
    cluster_log_ages,
    extra: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    band_names: Sequence[str] | None = None,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    compression: str | None = None,
) -> Path:
    """Write a whole raw cutout file atomically (see the module docstring for the layout).

    Parameters
    ----------
    path : str or pathlib.Path
        Destination ``.h5``.
    cluster_ids : array_like, shape (N,), integer
    galaxy_ids : sequence of str, length N
    image_cutouts : array_like, shape (N, C, H, W), float
        C in {1, 5}, H == W; stored as float32.
    cluster_log_ages : array_like, shape (N,), float
        log10 age / yr, finite.
    extra, attrs, band_names, chunk_images, compression
        As in :class:`CutoutWriter`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        On inconsistent shapes or non-finite log ages.
    """
    images = np.asarray(image_cutouts)
    if images.ndim != 4:
        raise InputError(f"expected shape (N, C, H, W), got {images.shape}", path, "image_cutouts")
    if images.shape[0] != np.shape(cluster_ids)[0]:
        raise InputError(
            f"expected {np.shape(cluster_ids)[0]} cutouts (one per cluster id), "
            f"got {images.shape[0]}",
            path,
            "image_cutouts",
        )
    with CutoutWriter(
        path, cluster_ids, galaxy_ids, cluster_log_ages, images.shape[1:], extra=extra,
        attrs=attrs, band_names=band_names, chunk_images=chunk_images, compression=compression,
    ) as w:  # fmt: skip
        step = max(1, w.chunk_images)
        for start in range(0, w.n, step):
            w.write(start, images[start : start + step])
    return Path(path)


class CutoutFile:
    """An open, validated raw cutout file; images are read lazily.

    Use :func:`open_cutouts`; close with :meth:`close` or a ``with`` block.

    Attributes
    ----------
    path : pathlib.Path
    n : int
        Number of cutouts N.
    image_shape : tuple of int
        ``(C, H, W)``.
    band_names : tuple of str
        Channel names (root attribute ``band_names``, else :func:`default_band_names`);
        also :attr:`bands`.
    n_channels, image_size : int
        C and H (= W).
    image_units : str
        The image dataset's ``units`` attribute ("unknown ..." when absent, as in
        the real file).
    cluster_ids : numpy.ndarray, shape (N,), int32
    galaxy_ids : numpy.ndarray, shape (N,), str
    log_ages : numpy.ndarray, shape (N,), float32
        log10 age / yr.
    catalogue_magnitudes : numpy.ndarray, shape (N, C), float32, or None
    cluster_log_masses, cluster_ebv : numpy.ndarray, shape (N,), float32, or None
    catalogue_source_ids : numpy.ndarray, shape (N,), int64, or None
    attrs : dict
        Root attributes (JSON strings decoded where possible).
    """

    def __init__(self, path: Path, f: h5py.File):
        self.path = path
        self._f = f
        with reading(path, CUTOUT_WHAT) as ctx:
            self._validate(f, ctx)

    def _validate(self, f: h5py.File, ctx) -> None:
        path = self.path
        for key in REQUIRED_KEYS:
            if key not in f:
                raise InputError(
                    f"missing dataset (expected {', '.join(REQUIRED_KEYS)}); found "
                    f"{', '.join(sorted(f.keys())) or 'nothing'}",
                    path,
                    key,
                )
            ctx.key = key
            if not isinstance(f[key], h5py.Dataset):
                raise InputError("expected a dataset, found a group", path, key)
            h5_dataset(f, key, path)  # not a null dataspace
        ctx.key = "image_cutouts"
        img = f["image_cutouts"]
        if img.ndim != 4:
            raise InputError(f"expected shape (N, C, H, W), got {img.shape}", path,
                             "image_cutouts")  # fmt: skip
        n, c, h, w = (int(s) for s in img.shape)
        if c not in ALLOWED_CHANNELS:
            raise InputError(
                f"expected C in {ALLOWED_CHANNELS} channels (shape (N, C, H, W)), got shape "
                f"{img.shape}",
                path,
                "image_cutouts",
            )
        if h != w or h < 1:
            raise InputError(f"expected square cutouts (H == W), got shape {img.shape}", path,
                             "image_cutouts")  # fmt: skip
        if not np.issubdtype(img.dtype, np.floating):
            raise InputError(f"expected floating-point images, got {img.dtype}", path,
                             "image_cutouts")  # fmt: skip
        if n < 1:
            raise InputError("expected at least one cutout, got N = 0", path, "image_cutouts")
        for key in ("cluster_ids", "galaxy_ids", "cluster_log_ages"):
            ctx.key = key
            d = f[key]
            if d.ndim != 1:
                raise InputError(f"expected shape (N,), got {d.shape}", path, key)
            if d.shape[0] != n:
                raise InputError(
                    f"expected N = {n} entries (the number of image_cutouts), got {d.shape[0]}",
                    path,
                    key,
                )
        ctx.key = None
        if not np.issubdtype(f["cluster_ids"].dtype, np.integer):
            raise InputError(f"expected integers, got {f['cluster_ids'].dtype}", path,
                             "cluster_ids")  # fmt: skip
        if h5py.check_string_dtype(f["galaxy_ids"].dtype) is None:
            raise InputError(f"expected strings, got {f['galaxy_ids'].dtype}", path, "galaxy_ids")
        if not np.issubdtype(f["cluster_log_ages"].dtype, np.floating):
            raise InputError(f"expected floats, got {f['cluster_log_ages'].dtype}", path,
                             "cluster_log_ages")  # fmt: skip
        self.n = n
        self.image_shape = (c, h, w)
        ids = h5_read(f["cluster_ids"], path, "cluster_ids")
        if ids.size and (ids.max() > np.iinfo(np.int32).max or ids.min() < np.iinfo(np.int32).min):
            raise InputError("expected ids that fit in int32", path, "cluster_ids")
        self.cluster_ids = ids.astype(np.int32)
        self.galaxy_ids = h5_read(f["galaxy_ids"], path, "galaxy_ids")
        self.log_ages = h5_read(f["cluster_log_ages"], path, "cluster_log_ages").astype(np.float32)
        bad = ~np.isfinite(self.log_ages)
        if bad.any():
            raise InputError(
                f"expected finite log ages (dex), got {int(bad.sum())} NaN/inf "
                f"(first at row {int(np.flatnonzero(bad)[0])})",
                path,
                "cluster_log_ages",
            )
        ctx.key = "attributes"
        self.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        names = self.attrs.get("band_names")
        if isinstance(names, list | tuple) and len(names) == c:
            self.band_names = tuple(str(b) for b in names)
        else:
            self.band_names = default_band_names(c)
        self._extra: dict[str, np.ndarray] = {}
        self._other: list[str] = []  # unknown datasets with leading dimension N, read on demand
        for key in f:
            ctx.key = key
            d = f[key]
            if key in REQUIRED_KEYS or not isinstance(d, h5py.Dataset):
                continue
            if key in EXTRA_KEYS:
                h5_dataset(f, key, path, "iu" if key == "catalogue_source_ids" else "fiu")
                self._extra[key] = _check_extra(key, h5_read(d, path, key), n, c, path)
            elif d.shape is not None and d.ndim >= 1 and d.shape[0] == n:
                self._other.append(key)
        ctx.key = "image_cutouts"
        units = img.attrs.get("units")
        self.image_units = (
            _decode_attr(units) if units is not None else "unknown (no units attribute)"
        )
        self._chunk = int(img.chunks[0]) if img.chunks else 64

    # ------------------------------------------------------------------ shape
    @property
    def n_channels(self) -> int:
        """Number of channels C (1 or 5)."""
        return self.image_shape[0]

    @property
    def image_size(self) -> int:
        """Cutout side H = W, pixels."""
        return self.image_shape[1]

    @property
    def bands(self) -> tuple[str, ...]:
        """Alias of :attr:`band_names`."""
        return self.band_names

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)`` of the image dataset."""
        return (self.n, *self.image_shape)

    # ------------------------------------------------------------------ extras
    def extra(self, name: str) -> np.ndarray | None:
        """An optional per-cluster dataset (leading dimension N), or None when absent.

        Known extras (:data:`EXTRA_KEYS`) were validated and loaded at open;
        other datasets with leading dimension N are read now.
        """
        if name in self._extra:
            return self._extra[name]
        if name in self._other:
            return h5_read(self._file()[name], self.path, name)
        return None

    @property
    def extra_keys(self) -> tuple[str, ...]:
        """Names of the optional datasets present (known and other)."""
        return tuple(sorted([*self._extra, *self._other]))

    @property
    def catalogue_magnitudes(self) -> np.ndarray | None:
        """Apparent Vega magnitudes, shape (N, C), float32 (NaN: undetected), or None."""
        return self._extra.get("catalogue_magnitudes")

    @property
    def cluster_log_masses(self) -> np.ndarray | None:
        """log10 mass / Msun, shape (N,), float32, or None."""
        return self._extra.get("cluster_log_masses")

    @property
    def cluster_ebv(self) -> np.ndarray | None:
        """E(B-V) in mag, shape (N,), float32, or None."""
        return self._extra.get("cluster_ebv")

    @property
    def catalogue_source_ids(self) -> np.ndarray | None:
        """Parent LEGUS source (pointing * 100000 + source id), shape (N,), int64, or None."""
        return self._extra.get("catalogue_source_ids")

    # ------------------------------------------------------------------ images
    def read_images(self, start_or_indices=None, stop: int | None = None) -> np.ndarray:
        """Read cutouts: a row range ``[start, stop)`` or the rows ``indices``.

        Parameters
        ----------
        start_or_indices : int or array_like of int, optional
            First row (default 0), or an array of row indices (any order,
            repeats allowed; read chunk block by chunk block, so memory stays
            bounded by the result plus one chunk).
        stop : int, optional
            End row (exclusive) of a range; default N.

        Returns
        -------
        numpy.ndarray, shape (B, C, H, W), float32
            In the order asked for.

        Raises
        ------
        InputError
            If a row is outside [0, N), the file is closed, a chunk cannot be read
            (corrupt or truncated file) or a pixel read is NaN/inf (the message gives
            their number and the first row).
        """
        with reading(self.path, CUTOUT_WHAT, "image_cutouts"):
            images, rows = self._read_images(start_or_indices, stop)
        bad = ~np.isfinite(images)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(len(images), -1).any(axis=1))[0])
            raise InputError(
                f"expected finite pixels, got {int(bad.sum())} NaN/inf in the {len(images)} "
                f"cutouts read (first in row {int(rows[first])})",
                self.path,
                "image_cutouts",
            )
        return images

    def _read_images(self, start_or_indices, stop) -> tuple[np.ndarray, np.ndarray]:
        d = self._dataset()
        if start_or_indices is None or np.ndim(start_or_indices) == 0:
            start = 0 if start_or_indices is None else int(start_or_indices)
            stop = self.n if stop is None else int(stop)
            if not 0 <= start <= stop <= self.n:
                raise InputError(f"expected 0 <= start <= stop <= {self.n}, got {start}:{stop}",
                                 self.path, "image_cutouts")  # fmt: skip
            return np.asarray(d[start:stop], dtype=np.float32), np.arange(start, stop)
        idx = np.asarray(start_or_indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InputError(f"expected a 1-D array of integer rows, got {idx.dtype} {idx.shape}",
                             self.path, "image_cutouts")  # fmt: skip
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise InputError(f"rows outside [0, {self.n})", self.path, "image_cutouts")
        out = np.empty((idx.size, *self.image_shape), dtype=np.float32)
        if idx.size == 0:
            return out, idx
        uniq, inverse = np.unique(idx, return_inverse=True)
        got = np.empty((uniq.size, *self.image_shape), dtype=np.float32)
        blocks = uniq // self._chunk
        edges = np.flatnonzero(np.diff(blocks)) + 1
        for part in np.split(np.arange(uniq.size), edges):
            rows = uniq[part]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            got[part] = d[lo:hi][rows - lo]
        out[:] = got[inverse]
        return out, idx

    def iter_blocks(self, block_size: int = 64) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, images)`` over all rows in blocks of ``block_size``.

        Parameters
        ----------
        block_size : int
            Cutouts per block (>= 1).

        Yields
        ------
        start, stop : int
        images : numpy.ndarray, shape (stop - start, C, H, W), float32
        """
        step = max(1, int(block_size))
        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            yield start, stop, self.read_images(start, stop)

    def _file(self) -> h5py.File:
        if self._f is None or not self._f.id.valid:
            raise InputError("the cutout file is closed", self.path, "image_cutouts")
        return self._f

    def _dataset(self) -> h5py.Dataset:
        return self._file()["image_cutouts"]

    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> CutoutFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"CutoutFile({str(self.path)!r}, n={self.n}, image_shape={self.image_shape})"


def _decode_attr(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_cutouts(path: str | Path) -> CutoutFile:
    """Open and validate a raw cutout file (any N; see the module docstring for the layout).

    Checks, once, that the four required datasets exist with shapes ``(N,)``
    and ``(N, C, H, W)`` (C in {1, 5}, H == W), the same N everywhere,
    integer ids, string galaxy ids, floating-point images and finite log
    ages; optional datasets must have leading dimension N. Image values are
    not scanned (that would read the whole file).

    Parameters
    ----------
    path : str or pathlib.Path
        HDF5 file.

    Returns
    -------
    CutoutFile
        Open file (metadata loaded, images lazy); close it or use ``with``.

    Raises
    ------
    InputError
        Naming the file, the key and the expectation: missing file, not an
        HDF5 file, missing dataset, wrong ndim or shape, N mismatch,
        non-finite log ages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found (expected a raw cutout HDF5 file)", path)
    try:
        f = open_h5(path, "cutout file", rdcc_nbytes=READ_CACHE_BYTES)
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot open as HDF5: {e}", path) from e
    try:
        return CutoutFile(path, f)
    except BaseException:
        f.close()
        raise
