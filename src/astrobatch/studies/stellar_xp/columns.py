"""Column names of the stellar_xp study: features, their error columns, labels.

Features, in order (McKay & Fabbro 2025, the Masked Stellar Autoencoder)::

    W1, W2                                   CatWISE, Vega mag
    G, BP, RP                                Gaia DR3 mean photometry, Vega mag
    bp_1 .. bp_55, rp_1 .. rp_55             Gaia DR3 XP continuous-basis coefficients
                                             (e-/s in the basis-function normalisation)
    U_SMSS, V_SMSS, G_SMSS, R_SMSS, I_SMSS, Z_SMSS   SkyMapper, AB mag
    U_SDSS, G_SDSS, R_SDSS, I_SDSS, Z_SDSS           SDSS, AB mag
    G_PS1, R_PS1, I_PS1, Z_PS1, Y_PS1                Pan-STARRS1, AB mag
    J, H, KS                                 2MASS, Vega mag
    PARALLAX                                 Gaia parallax, mas
    EBV                                      SFD E(B-V) of the line of sight, mag
    pmra, pmdec                              Gaia proper motion, mas/yr
    [RA, DEC]                                ICRS, deg (optional, pretraining only)

Error columns (one per feature, or none), chosen to follow each catalogue's
habit and the upstream names:

============================  =====================
feature                       error column
============================  =====================
``W1``, ``W2``                ``e_W1``, ``e_W2``
``G``, ``BP``, ``RP``         ``e_G``, ``e_BP``, ``e_RP``
``bp_i``, ``rp_i``            ``bpe_i``, ``rpe_i``
``<band>_<survey>``, ``J``,   ``E_<band>_<survey>``, ``E_J``, ``E_H``, ``E_KS``
``H``, ``KS``
``PARALLAX``                  ``e_parallax``
``EBV``                       none
``pmra``, ``pmdec``           ``e_pmra``, ``e_pmdec``
``RA``, ``DEC``               none
============================  =====================

Labels (fine-tuning table): ``teff`` (K), ``logg`` (dex, cgs), ``fe_h`` (dex),
``alpha`` ([alpha/Fe], dex), ``age`` (Gyr), each with ``e_<label>``; the label
``parallax`` (mas) is read from the feature ``PARALLAX`` and its error from
``e_parallax``.

Examples
--------
>>> f = feature_names()
>>> len(f), f[:5], f[-4:]
(138, ['W1', 'W2', 'G', 'BP', 'RP'], ['PARALLAX', 'EBV', 'pmra', 'pmdec'])
>>> recon_cols("EBV")[-1], len(recon_cols("KS"))
('EBV', 134)
>>> error_column("bp_3"), error_column("G_PS1"), error_column("EBV")
('bpe_3', 'E_G_PS1', None)
"""

from __future__ import annotations

from collections.abc import Sequence

#: Number of Gaia XP continuous-basis coefficients per band (BP and RP).
N_XP = 55
#: Coefficient columns, 1-based as in the upstream files (``bp_coeff_0`` -> ``bp_1``).
BP_COLS: tuple[str, ...] = tuple(f"bp_{i}" for i in range(1, N_XP + 1))
RP_COLS: tuple[str, ...] = tuple(f"rp_{i}" for i in range(1, N_XP + 1))
XP_COLS: tuple[str, ...] = BP_COLS + RP_COLS
BPE_COLS: tuple[str, ...] = tuple(f"bpe_{i}" for i in range(1, N_XP + 1))
RPE_COLS: tuple[str, ...] = tuple(f"rpe_{i}" for i in range(1, N_XP + 1))

WISE_BANDS: tuple[str, ...] = ("W1", "W2")
GAIA_BANDS: tuple[str, ...] = ("G", "BP", "RP")
SMSS_BANDS: tuple[str, ...] = tuple(f"{b}_SMSS" for b in "UVGRIZ")
SDSS_BANDS: tuple[str, ...] = tuple(f"{b}_SDSS" for b in "UGRIZ")
PS1_BANDS: tuple[str, ...] = tuple(f"{b}_PS1" for b in "GRIZY")
TMASS_BANDS: tuple[str, ...] = ("J", "H", "KS")
#: Every photometric band, in feature order.
MAG_COLS: tuple[str, ...] = (
    WISE_BANDS + GAIA_BANDS + SMSS_BANDS + SDSS_BANDS + PS1_BANDS + TMASS_BANDS
)
ASTROMETRY_COLS: tuple[str, ...] = ("PARALLAX", "EBV", "pmra", "pmdec")
RADEC_COLS: tuple[str, ...] = ("RA", "DEC")

#: The feature order without RA, DEC (138 columns).
FEATURES: tuple[str, ...] = (
    WISE_BANDS
    + GAIA_BANDS
    + XP_COLS
    + SMSS_BANDS
    + SDSS_BANDS
    + PS1_BANDS
    + TMASS_BANDS
    + ASTROMETRY_COLS
)

#: Physical labels of the fine-tuning table (``parallax`` is added from the features).
LABELS: tuple[str, ...] = ("teff", "logg", "fe_h", "alpha", "age")
#: Every label a model may be fine-tuned on.
ALL_LABELS: tuple[str, ...] = (*LABELS, "parallax")
#: Units of the labels.
LABEL_UNITS: dict[str, str] = {
    "teff": "K",
    "logg": "dex (cgs)",
    "fe_h": "dex",
    "alpha": "dex ([alpha/Fe])",
    "age": "Gyr",
    "parallax": "mas",
}
#: Source identifier column (int64; Gaia DR3 ``source_id`` for real stars).
SOURCE_ID = "source_id"


def feature_names(include_radec: bool = False) -> list[str]:
    """The feature columns in model order.

    Parameters
    ----------
    include_radec : bool
        Append ``RA``, ``DEC`` (deg) at the end (pretraining option).

    Returns
    -------
    list of str
        138 names, or 140 with ``RA``, ``DEC``.
    """
    return list(FEATURES) + (list(RADEC_COLS) if include_radec else [])


def error_column(feature: str) -> str | None:
    """The error column of one feature, or None when it has none.

    Parameters
    ----------
    feature : str
        A feature name (see the module docstring).

    Returns
    -------
    str or None

    Raises
    ------
    KeyError
        If ``feature`` is not a stellar_xp feature.
    """
    if feature in ("EBV", "RA", "DEC"):
        return None
    if feature.startswith(("bp_", "rp_")) and feature in XP_COLS:
        return f"{feature[:2]}e_{feature[3:]}"
    if feature in WISE_BANDS + GAIA_BANDS:
        return f"e_{feature}"
    if feature in SMSS_BANDS + SDSS_BANDS + PS1_BANDS + TMASS_BANDS:
        return f"E_{feature}"
    if feature == "PARALLAX":
        return "e_parallax"
    if feature in ("pmra", "pmdec"):
        return f"e_{feature}"
    raise KeyError(f"unknown stellar_xp feature {feature!r}")


def error_columns(features: Sequence[str]) -> list[str | None]:
    """:func:`error_column` of every feature (same order)."""
    return [error_column(f) for f in features]


def recon_cols(until: str = "EBV") -> list[str]:
    """The reconstructed columns: the feature prefix up to and including ``until``.

    Parameters
    ----------
    until : {"EBV", "KS"}
        Last reconstructed column.

    Returns
    -------
    list of str
        136 names up to ``EBV``, 134 up to ``KS``.

    Raises
    ------
    ValueError
        If ``until`` is not a feature.
    """
    if until not in FEATURES:
        raise ValueError(f"recon_cols: {until!r} is not a feature")
    return list(FEATURES[: FEATURES.index(until) + 1])


def label_error_column(label: str) -> str:
    """Error column of a label: ``e_<label>`` (``e_parallax`` for ``parallax``)."""
    return f"e_{label}"


def label_source_column(label: str) -> str:
    """Column of the fine-tuning table that holds ``label`` (``PARALLAX`` for ``parallax``)."""
    return "PARALLAX" if label == "parallax" else label


def indices(features: Sequence[str], names: Sequence[str]) -> list[int]:
    """Positions of ``names`` inside ``features`` (those absent are skipped).

    Examples
    --------
    >>> indices(["a", "b", "c"], ["c", "x", "a"])
    [2, 0]
    """
    pos = {f: i for i, f in enumerate(features)}
    return [pos[n] for n in names if n in pos]


def xp_indices(features: Sequence[str] | None = None) -> list[int]:
    """Indices of the 110 XP coefficient columns (``bp_1`` .. ``rp_55``) in ``features``.

    Parameters
    ----------
    features : sequence of str, optional
        Column order (default :func:`feature_names`).

    Examples
    --------
    >>> xp = xp_indices()
    >>> xp[0], xp[-1], len(xp)
    (5, 114, 110)
    """
    return indices(feature_names() if features is None else features, XP_COLS)


def parallax_index(features: Sequence[str] | None = None) -> int:
    """Index of ``PARALLAX`` in ``features`` (default :func:`feature_names`).

    Raises
    ------
    ValueError
        If ``PARALLAX`` is not among the features.
    """
    feats = list(feature_names() if features is None else features)
    return feats.index("PARALLAX")


def label_index(labels: Sequence[str], label: str = "parallax") -> int:
    """Index of ``label`` inside ``labels``, or -1 when absent.

    Examples
    --------
    >>> label_index(["teff", "parallax"]), label_index(["teff"])
    (1, -1)
    """
    labels = list(labels)
    return labels.index(label) if label in labels else -1
