"""Prediction tables of ``astrobatch <study> predict``: ids, values with units, atomic writes.

Every study's ``predict`` command applies a trained model to files that took no part in its
splits and returns an :class:`astropy.table.Table`; this module checks it and writes it as
ECSV (``.ecsv``) or FITS (``.fits``, ``.fit``, ``.fits.gz``), so that
``astropy.table.Table.read(path)`` gives the same columns, units and metadata back.

The table's contract (:func:`check_predictions`):

- ``meta["id_columns"]``: the names of the columns that identify a row (a file name, a
  source id, a cluster id), present and without units;
- every other numeric column carries a unit (:data:`astropy.units.dimensionless_unscaled`
  for ratios, fractions and log-quantities written as ``dex``-free numbers, so a reader
  never has to guess);
- at least one row.

In FITS the provenance goes to header cards of at most 8 characters (:data:`FITS_KEYS`:
``IDCOLS``, ``STUDY``, ``MODEL``, ``INPUTS``, ``DATE``, ``ABVERSN``; lists comma-joined), and
dimensionless columns have no ``TUNIT`` (the FITS convention); ECSV keeps both as written.

:func:`write_predictions` adds provenance to ``meta`` (the study, the model folder, the
inputs, the UTC date and the astrobatch version).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path

__all__ = [
    "FITS_KEYS", "FORMATS", "check_predictions", "prediction_format", "read_predictions",
    "write_predictions",
]  # fmt: skip

#: Header card of each provenance key in a FITS file (8 characters at most).
FITS_KEYS = {"id_columns": "IDCOLS", "date_utc": "DATE", "astrobatch_version": "ABVERSN"}
#: File suffix -> astropy ``format`` of the prediction table.
FORMATS = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits"}


def prediction_format(path: str | Path) -> str:
    """The astropy table format of ``path`` from its suffix (:data:`FORMATS`).

    Raises
    ------
    astrobatch.errors.InputError
        On a suffix other than ``.ecsv``, ``.fits``, ``.fit`` or ``.fits.gz``.

    Examples
    --------
    >>> prediction_format("reports/star_sets/predictions_real.ecsv")
    'ascii.ecsv'
    """
    name = Path(path).name.lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"expected an output file ending in one of {sorted(FORMATS)}", path, "--out")


def check_predictions(table) -> None:
    """Check a prediction table's contract (module docstring).

    Parameters
    ----------
    table : astropy.table.Table

    Raises
    ------
    ValueError
        No rows, no ``meta["id_columns"]``, an id column missing, or a numeric value column
        without a unit (a programming error of the study's predict function).
    """
    from astropy.table import Table

    if not isinstance(table, Table):
        raise ValueError(f"expected an astropy Table, got {type(table).__name__}")
    if len(table) == 0:
        raise ValueError("prediction table has no rows")
    ids = list(table.meta.get("id_columns") or [])
    if not ids:
        raise ValueError("prediction table has no meta['id_columns']")
    missing = [c for c in ids if c not in table.colnames]
    if missing:
        raise ValueError(f"id columns {missing} are not in the table {table.colnames}")
    no_unit = [
        c for c in table.colnames
        if c not in ids and table[c].dtype.kind in "fiu" and table[c].unit is None
    ]  # fmt: skip
    if no_unit:
        raise ValueError(f"numeric prediction columns without a unit: {no_unit}")


def write_predictions(
    table, path: str | Path, study: str, model: str | Path, inputs: Iterable[str | Path]
) -> Path:
    """Check ``table`` and write it atomically to ``path`` (ECSV or FITS by suffix).

    Parameters
    ----------
    table : astropy.table.Table
        The study's predictions (:func:`check_predictions`); its ``meta`` gains
        ``study``, ``model``, ``inputs``, ``date_utc`` and ``astrobatch_version``.
    path : str or pathlib.Path
        Output file; parent folders are created; an existing file is replaced only once
        the new one is complete.
    study : str
    model : str or pathlib.Path
        The model folder the predictions came from.
    inputs : iterable of str or pathlib.Path
        The files or folders predicted on.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    astrobatch.errors.InputError
        On an unsupported suffix (before anything is written).
    ValueError
        On a table that breaks the contract.
    """
    from astrobatch import __version__

    fmt = prediction_format(path)
    check_predictions(table)
    out = table.copy(copy_data=False)
    out.meta.update({
        "study": study,
        "model": str(model),
        "inputs": [str(p) for p in inputs],
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "astrobatch_version": __version__,
    })  # fmt: skip
    if fmt == "fits":  # header cards: 8-character names, scalar values (lists comma-joined)
        out.meta = {
            FITS_KEYS.get(k, k).upper(): ",".join(map(str, v))
            if isinstance(v, (list, tuple))
            else v
            for k, v in out.meta.items()
        }
        for c in out.colnames:
            if out[c].dtype.kind == "O":
                out[c] = np.asarray(out[c], dtype=str)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # longer study keys (``reference``, ``description``) become HIERARCH cards, a
        # convention astropy reads back: its warning about them is noise here
        warnings.filterwarnings("ignore", "Keyword name", category=Warning)
        out.write(tmp, format=fmt, overwrite=True)
    return path


def read_predictions(path: str | Path | None):
    """A prediction table written by :func:`write_predictions`, or None where there is none.

    For an evaluate stage that summarises a ``predict`` stage's table: a null path or a
    missing file means no real-data metrics (logged at INFO), not an error.

    Parameters
    ----------
    path : str or pathlib.Path or None

    Returns
    -------
    astropy.table.Table or None

    Raises
    ------
    astrobatch.errors.InputError
        A file that is not a readable table of a supported format.
    """
    import logging

    from astropy.table import Table

    if not path:
        return None
    if not Path(path).is_file():
        logging.getLogger(__name__).info(
            "no predictions table at %s (run the predict stage): no real/ metrics", path
        )
        return None
    try:
        return Table.read(path, format=prediction_format(path))
    except (OSError, ValueError) as err:
        raise InputError(f"not a predictions table ({err})", path) from None
