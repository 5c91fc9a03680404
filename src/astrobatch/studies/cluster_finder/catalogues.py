"""redMaPPer cluster, member and galaxy catalogues, read into one canonical set of columns.

Every reader returns a :class:`pandas.DataFrame` with the canonical columns below, in this
order, whatever the file's layout (``frame.attrs["layout"]`` and ``frame.attrs["path"]``
say where it came from). Floats are float64, ids int64.

Canonical columns
-----------------
clusters (:data:`CLUSTER_COLUMNS`)
    ``cluster_id`` (int64), ``ra``, ``dec`` (ICRS deg), ``z_lambda``, ``z_lambda_err``
    (photometric redshift and its error), ``z_spec`` (BCG spectroscopic redshift, NaN where
    missing), ``richness``, ``richness_err`` (redMaPPer lambda).
members (:data:`MEMBER_COLUMNS`)
    ``cluster_id``, ``ra``, ``dec``, ``r`` (distance from the centre, h^-1 Mpc), ``p``
    (membership probability), ``p_free``, ``theta_i``, ``theta_r`` (redMaPPer weights),
    ``mag_u .. mag_z``, ``magerr_u .. magerr_z`` (SDSS model magnitudes ugriz and errors),
    ``imag``, ``imag_err`` (i-band reference magnitude), ``z_spec`` (NaN where missing),
    ``objid`` (int64, -1 where the file has none). A member file's own cluster redshift
    (column ``Z`` of the redmapper layout) is never read: it is the label the member-set
    models predict and must not become a feature.
galaxies (:data:`GALAXY_COLUMNS`)
    ``ra``, ``dec``, ``mag_u .. mag_z``, ``magerr_u .. magerr_z``.

Layouts (:data:`LAYOUTS`, detected from the columns, names matched case-insensitively)
--------------------------------------------------------------------------------------
``dr8``
    The public redMaPPer SDSS DR8 v6.3 names (Rykoff et al. 2014, arXiv:1303.3562):
    clusters ``ID, RA, DEC, Z_LAMBDA, Z_LAMBDA_ERR, Z_SPEC, LAMBDA, LAMBDA_ERR``; members
    ``ID, RA, DEC, R, P, P_FREE, THETA_I, THETA_R, IMAG, IMAG_ERR, MODEL_MAG_{U,G,R,I,Z},
    MODEL_MAGERR_{U,G,R,I,Z}, Z_SPEC, OBJID``; galaxies ``RA, DEC, MODEL_MAG_{U..Z},
    MODEL_MAGERR_{U..Z}``.
``redmapper``
    The redmapper code's names (its test fixtures): an ``MEM_MATCH_ID`` cluster id,
    ``LAMBDA_E``, ``Z_LAMBDA_E``, ``BCG_SPEC_Z`` (also ``LAMBDA_CHISQ``, ``LAMBDA_CHISQ_E``
    of the v5.10 release); members ``PFREE``, 5-element array columns ``MAG`` and ``MAG_ERR``
    (ugriz), ``REFMAG``, ``REFMAG_ERR`` (read as ``imag``, ``imag_err``: the reference band
    of SDSS redMaPPer is i), ``ZSPEC``, ``ID`` (the galaxy's id, read as ``objid``);
    galaxies 5-element ``MODEL_MAG`` and ``MODEL_MAGERR`` (or ``MAG``, ``MAG_ERR``).
``cluster_list``
    The redMaPPer DR8 v5.10 cluster list as a CSV (``ID, name, RA, dec, redshift, lambda,
    r500``): ``redshift`` is the photometric ``z_lambda``; ``name`` and ``r500`` are dropped.

A file with ``MEM_MATCH_ID`` is ``redmapper``; a cluster file with ``redshift`` but no
``Z_LAMBDA`` is ``cluster_list``; otherwise ``dr8``. Other releases map their names onto
the canonical ones with ``columns={their_name: canonical_name}`` (the direction of
``DataFrame.rename``; ``"NAME[i]"`` is element ``i`` of an array column), which takes
precedence over the layout, e.g. ``columns={"LAMBDA_CHISQ": "richness", "MAG[3]":
"mag_i"}``.

Missing values: a spectroscopic redshift of -1 (or any negative value) is missing and
becomes NaN; an optional column absent from the file becomes NaN (``objid``: -1). Columns
required by default: clusters ``cluster_id, ra, dec, z_lambda, richness``; members
``cluster_id, ra, dec, r, p, p_free, theta_i, theta_r`` and the magnitudes and errors;
galaxies all (``require=`` narrows the set, e.g. for the redmapper input cluster catalogue
that has no positions).

Validation (one :class:`~astrobatch.errors.InputError` naming the file, the column and the
expectation): a missing required column, NaN / inf coordinates, magnitudes or member
features (with the count of bad rows), a declination outside [-90, 90], a richness <= 0, a
``z_lambda`` outside (0, 2) or a BCG ``z_spec`` >= 2, non-integer or (clusters) duplicate
ids; across files :func:`check_members` (members whose cluster matches no cluster) and
:func:`check_in_footprint` (clusters outside the survey footprint).

Writers (:func:`write_clusters`, :func:`write_members`, :func:`write_galaxies`) write a
canonical frame as a FITS binary table in the ``dr8`` or ``redmapper`` layout, atomically;
missing ``z_spec`` is written as -1. Floats are written as float64 (the public files use
float32 for most columns) so that reading back gives the same canonical frame.

Examples
--------
>>> import tempfile, pathlib, pandas as pd
>>> p = pathlib.Path(tempfile.mkdtemp()) / "clusters.fits"
>>> df = pd.DataFrame({"cluster_id": [1, 2], "ra": [10.0, 20.0], "dec": [0.0, 5.0],
...                    "z_lambda": [0.2, 0.3], "richness": [30.0, 55.0]})
>>> write_clusters(p, df, layout="redmapper")
>>> back = read_clusters(p)
>>> back.attrs["layout"], bool(back["z_spec"].isna().all()), list(back.columns)[:4]
('redmapper', True, ['cluster_id', 'ra', 'dec', 'z_lambda'])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from astrobatch.errors import InputError
from astrobatch.io.errors import check_finite, reading
from astrobatch.io.fits_tables import fits_table_info, write_fits_table

__all__ = [
    "BANDS",
    "CLUSTER_COLUMNS",
    "GALAXY_COLUMNS",
    "LAYOUTS",
    "MEMBER_COLUMNS",
    "catalogue_kind",
    "check_in_footprint",
    "check_members",
    "read_clusters",
    "read_galaxies",
    "read_members",
    "write_clusters",
    "write_galaxies",
    "write_members",
]

#: SDSS bands, in the order of the 5-element magnitude arrays.
BANDS = ("u", "g", "r", "i", "z")
MAG_COLUMNS = tuple(f"mag_{b}" for b in BANDS)
MAGERR_COLUMNS = tuple(f"magerr_{b}" for b in BANDS)

CLUSTER_COLUMNS = (
    "cluster_id",
    "ra",
    "dec",
    "z_lambda",
    "z_lambda_err",
    "z_spec",
    "richness",
    "richness_err",
)
MEMBER_COLUMNS = (
    "cluster_id",
    "ra",
    "dec",
    "r",
    "p",
    "p_free",
    "theta_i",
    "theta_r",
    *MAG_COLUMNS,
    *MAGERR_COLUMNS,
    "imag",
    "imag_err",
    "z_spec",
    "objid",
)
GALAXY_COLUMNS = ("ra", "dec", *MAG_COLUMNS, *MAGERR_COLUMNS)

COLUMNS = {"clusters": CLUSTER_COLUMNS, "members": MEMBER_COLUMNS, "galaxies": GALAXY_COLUMNS}
REQUIRED = {
    "clusters": ("cluster_id", "ra", "dec", "z_lambda", "richness"),
    "members": (
        "cluster_id",
        "ra",
        "dec",
        "r",
        "p",
        "p_free",
        "theta_i",
        "theta_r",
        *MAG_COLUMNS,
        *MAGERR_COLUMNS,
    ),
    "galaxies": GALAXY_COLUMNS,
}
WHAT = {
    "clusters": "redMaPPer cluster catalogue",
    "members": "redMaPPer member catalogue",
    "galaxies": "galaxy catalogue",
}
#: Integer columns and their value when absent from a file.
INT_COLUMNS = {"cluster_id": -1, "objid": -1}
#: Columns whose NaN / inf is an error (when present in the file).
FINITE = {
    "clusters": ("ra", "dec"),
    "members": (
        "ra",
        "dec",
        "r",
        "p",
        "p_free",
        "theta_i",
        "theta_r",
        *MAG_COLUMNS,
        *MAGERR_COLUMNS,
        "imag",
        "imag_err",
    ),
    "galaxies": GALAXY_COLUMNS,
}
#: Redshift range of redMaPPer clusters (exclusive).
Z_RANGE = (0.0, 2.0)
#: Ids named in an error message at most.
SHOW = 5


def _mags(mag: str, err: str) -> dict[str, tuple[str, ...]]:
    out = {f"mag_{b}": (f"{mag}_{b.upper()}",) for b in BANDS}
    out.update({f"magerr_{b}": (f"{err}_{b.upper()}",) for b in BANDS})
    return out


def _arrays(mags: Sequence[str], errs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    out = {f"mag_{b}": tuple(f"{m}[{i}]" for m in mags) for i, b in enumerate(BANDS)}
    out.update({f"magerr_{b}": tuple(f"{e}[{i}]" for e in errs) for i, b in enumerate(BANDS)})
    return out


#: kind -> layout -> canonical column -> source columns tried in order (``NAME[i]``: element
#: ``i`` of an array column). The first source of each is what the writers write.
LAYOUTS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "clusters": {
        "dr8": {
            "cluster_id": ("ID",),
            "ra": ("RA",),
            "dec": ("DEC",),
            "z_lambda": ("Z_LAMBDA",),
            "z_lambda_err": ("Z_LAMBDA_ERR", "Z_LAMBDA_E"),
            "z_spec": ("Z_SPEC", "BCG_SPEC_Z"),
            "richness": ("LAMBDA",),
            "richness_err": ("LAMBDA_ERR", "LAMBDA_E"),
        },
        "redmapper": {
            "cluster_id": ("MEM_MATCH_ID",),
            "ra": ("RA",),
            "dec": ("DEC",),
            "z_lambda": ("Z_LAMBDA",),
            "z_lambda_err": ("Z_LAMBDA_E", "Z_LAMBDA_ERR"),
            "z_spec": ("BCG_SPEC_Z", "Z_SPEC"),
            "richness": ("LAMBDA", "LAMBDA_CHISQ"),
            "richness_err": ("LAMBDA_E", "LAMBDA_CHISQ_E", "LAMBDA_ERR"),
        },
        "cluster_list": {
            "cluster_id": ("ID",),
            "ra": ("RA",),
            "dec": ("DEC",),
            "z_lambda": ("REDSHIFT",),
            "richness": ("LAMBDA",),
        },
    },
    "members": {
        "dr8": {
            "cluster_id": ("ID",),
            "ra": ("RA",),
            "dec": ("DEC",),
            "r": ("R",),
            "p": ("P",),
            "p_free": ("P_FREE", "PFREE"),
            "theta_i": ("THETA_I",),
            "theta_r": ("THETA_R",),
            **_mags("MODEL_MAG", "MODEL_MAGERR"),
            "imag": ("IMAG",),
            "imag_err": ("IMAG_ERR",),
            "z_spec": ("Z_SPEC", "ZSPEC"),
            "objid": ("OBJID",),
        },
        "redmapper": {
            "cluster_id": ("MEM_MATCH_ID",),
            "ra": ("RA",),
            "dec": ("DEC",),
            "r": ("R",),
            "p": ("P",),
            "p_free": ("PFREE", "P_FREE"),
            "theta_i": ("THETA_I",),
            "theta_r": ("THETA_R",),
            **_arrays(("MAG", "MODEL_MAG"), ("MAG_ERR", "MODEL_MAGERR")),
            "imag": ("REFMAG", "IMAG"),
            "imag_err": ("REFMAG_ERR", "IMAG_ERR"),
            "z_spec": ("ZSPEC", "Z_SPEC"),
            "objid": ("ID", "OBJID"),
        },
    },
    "galaxies": {
        "dr8": {"ra": ("RA",), "dec": ("DEC",), **_mags("MODEL_MAG", "MODEL_MAGERR")},
        "redmapper": {
            "ra": ("RA",),
            "dec": ("DEC",),
            **_arrays(("MODEL_MAG", "MAG"), ("MODEL_MAGERR", "MAG_ERR")),
        },
    },
}

_ELEMENT = re.compile(r"^(.*)\[(\d+)\]$")


# --------------------------------------------------------------------------- raw tables
class _Table:
    """A file's columns, looked up case-insensitively; arrays are read on demand."""

    def __init__(self, path: Path, what: str, hdu: int = 1):
        self.path = path
        self.what = what
        self.hdu = hdu
        if not path.is_file():
            raise InputError(f"{what} not found (expected a FITS or CSV table)", path)
        name = path.name.lower()
        self.is_csv = name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz"))
        if self.is_csv:
            with reading(path, f"{what} (CSV)"):
                frame = pd.read_csv(path)
            self.data = {str(c): frame[c].to_numpy() for c in frame.columns}
            names = list(self.data)
            self.n = len(frame)
            self.hdul = None
        else:
            self.n, names = fits_table_info(path, hdu)
            from astropy.io import fits

            with reading(path, f"{what} (FITS)", f"HDU {hdu}", also=_fits_errors):
                self.hdul = fits.open(path, memmap=True)
                self.data = self.hdul[hdu].data
        self.names = names
        self.cache: dict[str, np.ndarray] = {}
        self.upper: dict[str, str] = {}
        for c in names:
            self.upper.setdefault(c.upper(), c)

    def close(self) -> None:
        if self.hdul is not None:
            self.hdul.close()

    def _raw(self, name: str) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = self._load(name)
        return self.cache[name]

    def _load(self, name: str) -> np.ndarray:
        with reading(self.path, self.what, name, also=_fits_errors):
            if self.is_csv:
                v = np.asarray(self.data[name])
            elif self.data is None:
                v = np.empty(0)
            else:
                v = np.array(self.data.field(name))
            if v.dtype.byteorder not in ("=", "|"):
                v = v.astype(v.dtype.newbyteorder("="))
            return v

    def has(self, source: str) -> bool:
        """Whether ``source`` (``NAME`` or ``NAME[i]``) is in the table."""
        m = _ELEMENT.match(source)
        if m is None:
            return source.upper() in self.upper
        name = self.upper.get(m.group(1).upper())
        if name is None or self.is_csv:
            return False
        v = self._raw(name)
        return v.ndim == 2 and int(m.group(2)) < v.shape[1]

    def get(self, source: str) -> np.ndarray:
        """The values of ``source``, shape (n,)."""
        m = _ELEMENT.match(source)
        if m is None:
            name = self.upper[source.upper()]
            v = self._raw(name)
            if v.ndim != 1:
                raise InputError(f"expected a scalar column, got shape {v.shape}", self.path, name)
            return v
        name = self.upper[m.group(1).upper()]
        return self._raw(name)[:, int(m.group(2))]


def _fits_errors() -> tuple:
    from astropy.io.fits.verify import VerifyError

    return (VerifyError,)


def _detect(kind: str, table: _Table, mapped: set[str]) -> str:
    has = table.has
    if kind == "clusters":
        if has("MEM_MATCH_ID"):
            return "redmapper"
        if has("REDSHIFT") and not has("Z_LAMBDA"):
            return "cluster_list"
        if has("ID") or "cluster_id" in mapped:
            return "dr8"
    elif kind == "members":
        if has("MEM_MATCH_ID"):
            return "redmapper"
        if has("ID") or "cluster_id" in mapped:
            return "dr8"
    else:
        if any(has(f"{m}[0]") for m in ("MODEL_MAG", "MAG")):
            return "redmapper"
        return "dr8"
    raise InputError(
        "cannot tell the catalogue layout: expected a cluster id column ID (dr8 layout) or "
        f"MEM_MATCH_ID (redmapper layout), or a columns= mapping onto cluster_id; present: "
        f"{table.names[:20]}",
        table.path,
        "ID",
    )


def _as_int(v: np.ndarray, path: Path, key: str) -> np.ndarray:
    if v.dtype.kind in "iub":
        return v.astype(np.int64)
    if v.dtype.kind == "f":
        ok = np.isfinite(v) & (v == np.round(v))
        if ok.all():
            return v.astype(np.int64)
        bad = np.flatnonzero(~ok)
        raise InputError(
            f"expected integer ids, got {bad.size} non-integer value(s) (first at row "
            f"{int(bad[0])}: {v[bad[0]]})",
            path,
            key,
        )
    try:
        return np.array([int(str(s).strip()) for s in v], dtype=np.int64)
    except ValueError:
        raise InputError(f"expected integer ids, got dtype {v.dtype}", path, key) from None


def _read(
    kind: str,
    path: str | Path,
    columns: Mapping[str, str] | None,
    require: Sequence[str] | None,
    layout: str,
    hdu: int,
) -> pd.DataFrame:
    path = Path(path)
    canon = COLUMNS[kind]
    user: dict[str, str] = {}
    for source, c in (columns or {}).items():
        if c not in canon:
            raise InputError(
                f"columns= maps {source!r} onto unknown column {c!r}; expected one of the "
                f"canonical {kind} columns {list(canon)}",
                path,
                str(source),
            )
        user[c] = str(source)
    required = REQUIRED[kind] if require is None else tuple(require)
    unknown = [c for c in required if c not in canon]
    if unknown:
        raise InputError(
            f"require= names unknown column(s) {unknown}; expected canonical {kind} "
            f"columns {list(canon)}",
            path,
            unknown[0],
        )
    table = _Table(path, WHAT[kind], hdu)
    try:
        if layout == "auto":
            layout = _detect(kind, table, set(user))
        elif layout not in LAYOUTS[kind]:
            raise InputError(
                f"unknown layout {layout!r}; expected 'auto' or one of {list(LAYOUTS[kind])}",
                path,
                "layout",
            )
        spec = LAYOUTS[kind][layout]
        out: dict[str, np.ndarray] = {}
        src: dict[str, str] = {}
        absent: set[str] = set()
        for c in canon:
            if c in user:
                if not table.has(user[c]):
                    raise InputError(
                        f"missing column {user[c]!r} (mapped onto {c} by columns=); present: "
                        f"{table.names[:20]}",
                        path,
                        user[c],
                    )
                found = user[c]
            else:
                found = next((s for s in spec.get(c, ()) if table.has(s)), None)
            if found is None:
                if c in required:
                    expected = spec.get(c, ())
                    raise InputError(
                        f"missing required column for {c} ({layout} layout): expected "
                        f"{' or '.join(expected) or 'a columns= mapping'}; present: "
                        f"{table.names[:20]}",
                        path,
                        expected[0] if expected else c,
                    )
                out[c] = np.full(table.n, INT_COLUMNS.get(c, np.nan))
                absent.add(c)
                continue
            v = table.get(found)
            if c in INT_COLUMNS:
                out[c] = _as_int(v, path, found)
            else:
                if v.dtype.kind not in "fiub":
                    raise InputError(f"expected numbers for {c}, got dtype {v.dtype}", path, found)
                out[c] = v.astype(np.float64)
            src[c] = found
    finally:
        table.close()
    for c in INT_COLUMNS:
        if c in out:
            out[c] = out[c].astype(np.int64)
    frame = pd.DataFrame({c: out[c] for c in canon})
    _validate(kind, frame, path, src, present=set(canon) - absent)
    frame.attrs["layout"] = layout
    frame.attrs["path"] = str(path)
    return frame


def _validate(
    kind: str,
    frame: pd.DataFrame,
    path: Path,
    src: Mapping[str, str] | None = None,
    present: set[str] | None = None,
) -> None:
    """Check (and fix the missing spec-z of) a canonical frame in place."""
    src = src or {}
    present = set(frame.columns) if present is None else present

    def name(c: str) -> str:
        return src.get(c, c)

    def first_bad(bad: np.ndarray, values: np.ndarray) -> str:
        i = int(np.flatnonzero(bad)[0])
        return f"{int(bad.sum())} bad row(s) (first at row {i}: {values[i]})"

    for c in FINITE[kind]:
        if c in present:
            check_finite(frame[c].to_numpy(), path, name(c), f"{c} values")
    if "dec" in present:
        d = frame["dec"].to_numpy()
        bad = np.abs(d) > 90
        if bad.any():
            raise InputError(
                f"expected declinations in [-90, 90] deg, got {first_bad(bad, d)}",
                path,
                name("dec"),
            )
    if "z_spec" in frame:
        z = frame["z_spec"].to_numpy().copy()
        z[z < 0] = np.nan  # -1 (or any negative value): no spectroscopic redshift
        frame["z_spec"] = z
        bad = np.isinf(z) | ((z >= Z_RANGE[1]) if kind == "clusters" else False)
        if np.any(bad):
            raise InputError(
                f"expected spectroscopic redshifts in [0, {Z_RANGE[1]}) or -1 / NaN for none, "
                f"got {first_bad(bad, z)}",
                path,
                name("z_spec"),
            )
    if kind != "clusters":
        return
    if "richness" in present:
        lam = frame["richness"].to_numpy()
        bad = ~(lam > 0) | ~np.isfinite(lam)
        if bad.any():
            raise InputError(
                f"expected richness > 0, got {first_bad(bad, lam)}", path, name("richness")
            )
    if "z_lambda" in present:
        z = frame["z_lambda"].to_numpy()
        bad = ~((z > Z_RANGE[0]) & (z < Z_RANGE[1]))
        if bad.any():
            raise InputError(
                f"expected redshifts in ({Z_RANGE[0]}, {Z_RANGE[1]}), got {first_bad(bad, z)}",
                path,
                name("z_lambda"),
            )
    if "cluster_id" in present:
        ids = frame["cluster_id"].to_numpy()
        dup = pd.Series(ids).duplicated().to_numpy()
        if dup.any():
            raise InputError(
                f"expected unique cluster ids, got {int(dup.sum())} repeated (first "
                f"{ids[dup][:SHOW].tolist()})",
                path,
                name("cluster_id"),
            )


# ------------------------------------------------------------------------------ readers
def read_clusters(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    require: Sequence[str] | None = None,
    layout: str = "auto",
    hdu: int = 1,
) -> pd.DataFrame:
    """Read a redMaPPer cluster catalogue (FITS, or the cluster-list CSV) in canonical columns.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS table (HDU ``hdu``) or CSV (``.csv``, ``.csv.gz``).
    columns : mapping of str to str, optional
        ``{file column: canonical column}``, over the layout's names (``"NAME[i]"``: element
        ``i`` of an array column).
    require : sequence of str, optional
        Canonical columns that must be found (default ``cluster_id, ra, dec, z_lambda,
        richness``); the others become NaN when absent.
    layout : str
        ``"auto"`` (detect), ``"dr8"``, ``"redmapper"`` or ``"cluster_list"``.
    hdu : int
        HDU of a FITS table.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CLUSTER_COLUMNS` (``cluster_id`` int64; others float64; ``ra, dec``
        deg; ``z_spec`` NaN where missing). ``attrs["layout"]``, ``attrs["path"]``.

    Raises
    ------
    InputError
        Missing or unreadable file, a missing required column, NaN / inf coordinates,
        declination outside [-90, 90], richness <= 0, ``z_lambda`` outside (0, 2), a BCG
        ``z_spec`` >= 2, non-integer or repeated ids; the message names the file and column.
    """
    return _read("clusters", path, columns, require, layout, hdu)


def read_members(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    require: Sequence[str] | None = None,
    layout: str = "auto",
    hdu: int = 1,
) -> pd.DataFrame:
    """Read a redMaPPer member catalogue (FITS) in canonical columns.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS table (HDU ``hdu``).
    columns : mapping of str to str, optional
        ``{file column: canonical column}``, over the layout's names.
    require : sequence of str, optional
        Canonical columns that must be found (default: ids, positions, ``r, p, p_free,
        theta_i, theta_r`` and the magnitudes and errors); absent optional columns become
        NaN (``objid``: -1).
    layout : str
        ``"auto"``, ``"dr8"`` or ``"redmapper"``.
    hdu : int
        HDU of the table.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MEMBER_COLUMNS` (``cluster_id``, ``objid`` int64; others float64;
        magnitudes in mag, ``r`` in h^-1 Mpc, ``z_spec`` NaN where missing). The cluster
        redshift column ``Z`` of a redmapper member file is not read (a label, never a
        feature).

    Raises
    ------
    InputError
        Missing or unreadable file, a missing required column, NaN / inf in coordinates,
        magnitudes, errors or member features (count of bad rows), declination outside
        [-90, 90], non-integer ids; the message names the file and column.
    """
    return _read("members", path, columns, require, layout, hdu)


def read_galaxies(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    require: Sequence[str] | None = None,
    layout: str = "auto",
    hdu: int = 1,
) -> pd.DataFrame:
    """Read a galaxy catalogue (SDSS model magnitudes, FITS) in canonical columns.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS table (HDU ``hdu``): ``MODEL_MAG`` / ``MODEL_MAGERR`` 5-element arrays
        (redmapper), or flat ``MODEL_MAG_U ..`` (dr8).
    columns : mapping of str to str, optional
        ``{file column: canonical column}``, over the layout's names.
    require : sequence of str, optional
        Canonical columns that must be found (default all).
    layout : str
        ``"auto"``, ``"dr8"`` or ``"redmapper"``.
    hdu : int
        HDU of the table.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`GALAXY_COLUMNS` (float64; deg, mag).

    Raises
    ------
    InputError
        Missing or unreadable file, a missing column, NaN / inf coordinates or magnitudes,
        declination outside [-90, 90]; the message names the file and column.
    """
    return _read("galaxies", path, columns, require, layout, hdu)


# ------------------------------------------------------------------------- kind of file
#: Canonical columns that only a member catalogue has / only a cluster catalogue has (the
#: ids, positions and spectroscopic redshifts are in both; ``objid`` is read from ``ID``,
#: which is also the cluster id of the dr8 cluster layout).
KIND_COLUMNS = {
    "members": ("r", "p", "p_free", "theta_i", "theta_r", *MAG_COLUMNS, *MAGERR_COLUMNS,
                "imag", "imag_err"),
    "clusters": ("z_lambda", "z_lambda_err", "richness", "richness_err"),
}  # fmt: skip


def catalogue_kind(path: str | Path, hdu: int = 1) -> str:
    """Whether a redMaPPer table is a member catalogue or a cluster catalogue, by its columns.

    Every layout of :data:`LAYOUTS` is tried (dr8 public names, the redmapper code's names,
    the cluster-list CSV): the score of a kind is the largest number of its own columns
    (:data:`KIND_COLUMNS`) that one of its layouts finds in the file. The higher score wins,
    so a member file that lacks a column is still recognised as one (and
    :func:`read_members` then names the missing column).

    Parameters
    ----------
    path : str or pathlib.Path
        FITS table (HDU ``hdu``) or CSV.
    hdu : int
        HDU of a FITS table.

    Returns
    -------
    str
        ``"members"`` or ``"clusters"``.

    Raises
    ------
    InputError
        A missing or unreadable file, or a table with as many member as cluster columns
        (none of either, say); the message lists the columns present.

    Examples
    --------
    >>> import tempfile, pathlib, pandas as pd
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "clusters.fits"
    >>> write_clusters(p, pd.DataFrame({"cluster_id": [1], "ra": [10.0], "dec": [0.0],
    ...                                 "z_lambda": [0.2], "richness": [30.0]}))
    >>> catalogue_kind(p)
    'clusters'
    """
    path = Path(path)
    table = _Table(path, "redMaPPer catalogue", hdu)
    try:
        score = {
            kind: max(sum(any(table.has(s) for s in spec.get(c, ())) for c in own)
                      for spec in LAYOUTS[kind].values())
            for kind, own in KIND_COLUMNS.items()
        }  # fmt: skip
    finally:
        table.close()
    if score["members"] == score["clusters"]:
        raise InputError(
            "cannot tell a member catalogue from a cluster catalogue: expected member columns "
            "(P, THETA_I, THETA_R, R, magnitudes) or cluster columns (Z_LAMBDA, LAMBDA); "
            f"present: {table.names[:20]}",
            path,
            "Z_LAMBDA",
        )
    return max(score, key=score.get)


# ------------------------------------------------------------------------ cross checks
def check_members(members: pd.DataFrame, clusters: pd.DataFrame, path: str | Path) -> None:
    """Raise unless every member's ``cluster_id`` is a cluster of the cluster catalogue.

    Parameters
    ----------
    members : pandas.DataFrame
        Canonical members (:func:`read_members`).
    clusters : pandas.DataFrame
        Canonical clusters (:func:`read_clusters`).
    path : str or pathlib.Path
        The member file, for the message.

    Raises
    ------
    InputError
        With the number of orphan member rows and the first orphan cluster ids.
    """
    ids = members["cluster_id"].to_numpy()
    orphan = ~np.isin(ids, clusters["cluster_id"].to_numpy())
    if orphan.any():
        raise InputError(
            f"{int(orphan.sum())} of {len(ids)} member rows belong to clusters absent from "
            f"the cluster catalogue (cluster ids {np.unique(ids[orphan])[:SHOW].tolist()}); "
            "expected every member's cluster among the catalogue's clusters",
            path,
            "cluster_id",
        )


def check_in_footprint(clusters: pd.DataFrame, footprint, path: str | Path) -> None:
    """Raise unless every cluster lies inside the survey footprint.

    Parameters
    ----------
    clusters : pandas.DataFrame
        Canonical clusters (``cluster_id``, ``ra``, ``dec`` in deg).
    footprint : array_like, shape (12 * nside**2,)
        HEALPix RING map (see :func:`~astrobatch.studies.cluster_finder.geometry.in_footprint`).
    path : str or pathlib.Path
        The cluster file, for the message.

    Raises
    ------
    InputError
        Clusters without finite coordinates, or outside the footprint (count and first ids).
    """
    from astrobatch.studies.cluster_finder.geometry import in_footprint

    ra = clusters["ra"].to_numpy(dtype=np.float64)
    dec = clusters["dec"].to_numpy(dtype=np.float64)
    ids = clusters["cluster_id"].to_numpy()
    check_finite(ra, path, "ra", "cluster coordinates (deg)")
    check_finite(dec, path, "dec", "cluster coordinates (deg)")
    outside = ~in_footprint(footprint, ra, dec)
    if outside.any():
        raise InputError(
            f"{int(outside.sum())} of {len(ids)} clusters lie outside the survey footprint "
            f"(cluster ids {ids[outside][:SHOW].tolist()}); expected every cluster inside it",
            path,
            "ra, dec",
        )


# ------------------------------------------------------------------------------ writers
UNITS = {"ra": "deg", "dec": "deg", **{c: "mag" for c in (*MAG_COLUMNS, *MAGERR_COLUMNS)}}
UNITS.update({"imag": "mag", "imag_err": "mag"})
#: Array columns of the redmapper layout: file column -> canonical columns (ugriz).
ARRAYS = {
    "members": {"MAG": MAG_COLUMNS, "MAG_ERR": MAGERR_COLUMNS},
    "galaxies": {"MODEL_MAG": MAG_COLUMNS, "MODEL_MAGERR": MAGERR_COLUMNS},
}


def _write(kind: str, path: str | Path, frame: pd.DataFrame, layout: str) -> None:
    path = Path(path)
    if layout not in ("dr8", "redmapper"):
        raise InputError(
            f"unknown layout {layout!r}; expected 'dr8' or 'redmapper'", path, "layout"
        )
    missing = [c for c in REQUIRED[kind] if c not in frame.columns]
    if missing:
        raise InputError(
            f"cannot write the {WHAT[kind]}: the frame lacks canonical column(s) {missing}",
            path,
            missing[0],
        )
    n = len(frame)
    canon = pd.DataFrame(index=range(n))
    for c in COLUMNS[kind]:
        if c in frame.columns:
            v = frame[c].to_numpy()
            canon[c] = _as_int(v, path, c) if c in INT_COLUMNS else v.astype(np.float64)
        else:
            canon[c] = np.full(n, INT_COLUMNS.get(c, np.nan))
    _validate(kind, canon, path)
    spec = LAYOUTS[kind][layout]
    arrays = ARRAYS.get(kind, {}) if layout == "redmapper" else {}
    in_array = {c for cols in arrays.values() for c in cols}
    out: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for c in COLUMNS[kind]:
        if c in in_array:
            if c in (MAG_COLUMNS[0], MAGERR_COLUMNS[0]):
                name = next(a for a, cols in arrays.items() if c in cols)
                out[name] = np.stack([canon[b].to_numpy() for b in arrays[name]], axis=1)
                units[name] = "mag"
            continue
        name = spec[c][0]
        v = canon[c].to_numpy()
        if c == "z_spec":
            v = np.where(np.isnan(v), -1.0, v)
        out[name] = v
        if c in UNITS:
            units[name] = UNITS[c]
    write_fits_table(path, out, units=units, meta={"LAYOUT": layout}, float_dtype=np.float64)


def write_clusters(path: str | Path, df: pd.DataFrame, layout: str = "dr8") -> None:
    """Write canonical clusters as a FITS binary table, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file; it appears only once complete.
    df : pandas.DataFrame
        Canonical clusters: at least ``cluster_id, ra, dec, z_lambda, richness``; absent
        ``z_lambda_err, z_spec, richness_err`` are written as NaN (``z_spec``: -1).
    layout : str
        ``"dr8"``: ``ID, RA, DEC, Z_LAMBDA, Z_LAMBDA_ERR, Z_SPEC, LAMBDA, LAMBDA_ERR``;
        ``"redmapper"``: ``MEM_MATCH_ID, RA, DEC, Z_LAMBDA, Z_LAMBDA_E, BCG_SPEC_Z,
        LAMBDA, LAMBDA_E``. Floats float64, ids int64, missing spec-z -1.

    Raises
    ------
    InputError
        An unknown layout, a missing required column, or values :func:`read_clusters`
        would refuse (the message names the file and the canonical column).
    """
    _write("clusters", path, df, layout)


def write_members(path: str | Path, df: pd.DataFrame, layout: str = "dr8") -> None:
    """Write canonical members as a FITS binary table, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file.
    df : pandas.DataFrame
        Canonical members (:data:`MEMBER_COLUMNS`; absent ``imag, imag_err, z_spec`` are
        written as NaN / -1, absent ``objid`` as -1). The cluster redshift is not written.
    layout : str
        ``"dr8"``: ``ID, RA, DEC, R, P, P_FREE, THETA_I, THETA_R, MODEL_MAG_{U..Z},
        MODEL_MAGERR_{U..Z}, IMAG, IMAG_ERR, Z_SPEC, OBJID``; ``"redmapper"``:
        ``MEM_MATCH_ID, RA, DEC, R, P, PFREE, THETA_I, THETA_R, MAG[5], MAG_ERR[5], REFMAG,
        REFMAG_ERR, ZSPEC, ID``.

    Raises
    ------
    InputError
        An unknown layout, a missing required column, or values :func:`read_members` would
        refuse.
    """
    _write("members", path, df, layout)


def write_galaxies(path: str | Path, df: pd.DataFrame, layout: str = "dr8") -> None:
    """Write canonical galaxies as a FITS binary table, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file.
    df : pandas.DataFrame
        Canonical galaxies (:data:`GALAXY_COLUMNS`).
    layout : str
        ``"dr8"``: ``RA, DEC, MODEL_MAG_{U..Z}, MODEL_MAGERR_{U..Z}``; ``"redmapper"``:
        ``RA, DEC, MODEL_MAG[5], MODEL_MAGERR[5]``.

    Raises
    ------
    InputError
        An unknown layout, a missing column, or values :func:`read_galaxies` would refuse.
    """
    _write("galaxies", path, df, layout)
