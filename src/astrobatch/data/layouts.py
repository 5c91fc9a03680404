"""Column layouts of the prepared shards each reader of this package expects (torch-free).

The readers (:mod:`astrobatch.data.sets`, :mod:`astrobatch.data.tables`,
:mod:`astrobatch.data.images`) and the studies' ``prepare`` (the writers) share
these declarations, so a shard always has the columns its reader asks for. They
live in a module of their own, without torch, so that ``prepare`` stays light.
The file format itself is :mod:`astrobatch.io.shards`.

Set shards (one row per set, e.g. a cluster snapshot)::

    /target             float32 (n,)        target in model space (scaled)
    /<col>              (n,)                ids and physical per-set columns
    /stars/ptr          int64   (n + 1,)    CSR pointer over the elements
    /stars/features     float32 (m, F)      scaled element features, names = features

Table shards (one row per object)::

    /x, /x_err          float32 (n, F)      scaled features (NaN = missing) and errors
    /y, /y_err          float32 (n, L)      scaled labels and errors (labelled shards only)
    /source_id          int64   (n,)

Cutout shards (one row per image)::

    /images             float32 (n, C, S, S)   raw cutouts, units = image units, attr bands
    /photometry         float32 (n, C)         aperture magnitudes, Vega mag
    /log_age            float32 (n,)           log10 yr
    /cluster_id         int64   (n,)
    /galaxy_id          str     (n,)
    /catalogue_magnitudes float32 (n, K)       when the raw file has them
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from astrobatch.io.shards import Column

#: Ragged group of the elements of a set shard, and its feature column.
SET_ELEMENTS = "stars"
SET_FEATURES = f"{SET_ELEMENTS}/features"
#: Keys every set shard has.
SET_REQUIRED = ("target", SET_FEATURES)
#: Row columns of every table shard (labelled ones add ``y`` and ``y_err``).
TABLE_REQUIRED = ("x", "x_err", "source_id")
#: Keys every cutout shard has.
CUTOUT_REQUIRED = ("images", "log_age")


def set_layout(
    features: Sequence[str], set_columns: Mapping[str, np.dtype | type]
) -> tuple[dict[str, Column], dict[str, dict[str, Column]]]:
    """Row columns and the element group of a set shard.

    Parameters
    ----------
    features : sequence of str
        The F element feature names.
    set_columns : dict of str to dtype
        Per-set columns besides ``target`` (``str`` or a dtype of kind ``U``/``O``
        for strings).

    Returns
    -------
    columns : dict of str to Column
    groups : dict of str to dict of str to Column
        ``{"stars": {"features": Column(float32, (F,), names=features)}}``.

    Examples
    --------
    >>> cols, groups = set_layout(["x", "y"], {"run_id": np.dtype("<U3")})
    >>> sorted(cols), groups["stars"]["features"].shape
    (['run_id', 'target'], (2,))
    """
    cols = {}
    for k, dt in set_columns.items():
        string = dt is str or np.dtype(dt).kind in "UOS"
        cols[k] = Column(str if string else np.dtype(dt))
    cols["target"] = Column(np.float32)
    feats = Column(np.float32, (len(features),), names=tuple(features))
    return cols, {SET_ELEMENTS: {"features": feats}}


def table_layout(features: Sequence[str], labels: Sequence[str] | None = None) -> dict:
    """Row columns of a table shard (``labels=None``: unlabelled, pretraining).

    Examples
    --------
    >>> sorted(table_layout(["a"], ["t"]))
    ['source_id', 'x', 'x_err', 'y', 'y_err']
    """
    F = (len(features),)
    cols = {
        "x": Column(np.float32, F, names=tuple(features)),
        "x_err": Column(np.float32, F, names=tuple(features)),
    }
    if labels is not None:
        L = (len(labels),)
        cols["y"] = Column(np.float32, L, names=tuple(labels))
        cols["y_err"] = Column(np.float32, L, names=tuple(labels))
    cols["source_id"] = Column(np.int64)
    return cols


def cutout_layout(
    n_channels: int,
    size: int,
    bands: Sequence[str],
    image_units: str,
    aperture_radius_px: float,
    catalogue_shape: tuple[int, ...] | None = None,
) -> dict:
    """Row columns of a cutout shard.

    Parameters
    ----------
    n_channels, size : int
        C and S of the (cropped) images.
    bands : sequence of str
        Band of each channel.
    image_units : str
    aperture_radius_px : float
        Stored as an attribute of ``photometry``.
    catalogue_shape : tuple of int, optional
        Per-row shape of ``catalogue_magnitudes``; None: no such column.
    """
    bands = [str(b) for b in bands]
    cols = {
        "images": Column(np.float32, (n_channels, size, size), units=image_units,
                         attrs={"bands": bands}),
        "photometry": Column(
            np.float32, (n_channels,), units="Vega mag, aperture photometry of the raw cutout",
            names=tuple(bands) if len(bands) == n_channels else None,
            attrs={"aperture_radius_px": aperture_radius_px},
        ),
        "log_age": Column(np.float32, units="log10 yr"),
        "cluster_id": Column(np.int64),
        "galaxy_id": Column(str),
    }  # fmt: skip
    if catalogue_shape is not None:
        cols["catalogue_magnitudes"] = Column(np.float32, tuple(catalogue_shape))
    return cols
