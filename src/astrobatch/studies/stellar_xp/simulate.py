"""stellar_xp simulator (the embedded default): synthetic stars written in the real layouts.

Each star is drawn from physical labels (:mod:`~astrobatch.studies.stellar_xp.physics`):

1. population, age, [Fe/H], [alpha/Fe] and evolutionary stage, then mass,
   Teff, log g and radius roughly along isochrones;
2. a position drawn from its component's density rho (thin disc: scale height
   0.3 kpc, length 2.6 kpc; thick disc 0.9 / 2.0 kpc; halo rho ∝ r^-3, Sun at
   R0 = 8.2 kpc) within the distance where the star would reach the magnitude
   limit (:func:`_draw_positions`);
3. dust in front of the star (E(B-V), CCM89 law), the spectrum at that
   distance, its synthetic photometry and XP coefficients; stars outside the
   Gaia magnitude range (5 < G < limit) are redrawn;
4. astrometry: parallax = 1/d (mas, d in kpc) + zero point + noise,
   proper motions from isotropic velocity dispersions (thin 30, thick 60,
   halo 150 km/s per component; pm = v / (4.74047 d) mas/yr), converted to
   ICRS ``pmra``, ``pmdec`` with astropy;
5. noise at the stated errors and missing values (footprints, depths,
   saturation, dropouts; a fraction of stars without XP or without one band).

Outputs
    Pretraining: an HDF5 file of compound datasets ``sslset0_part<k>``
    (:mod:`astrobatch.io.compound_h5`) with ``source_id``, every feature
    (with ``RA``, ``DEC``) and every error column, no labels.
    Fine-tuning: a FITS table (:mod:`astrobatch.io.fits_tables`) with
    ``source_id``, the labels ``teff, logg, fe_h, alpha, age`` and their
    errors ``e_<label>`` (noisy, as a spectroscopic survey would give them;
    NaN where not measured), every feature and error column, and the noise-free
    truth (``true_<label>``, ``true_parallax``, ``true_distance``, ``true_ebv``,
    ``true_mass``, ``stage``, ``component``) for diagnostics.

Simulated ``source_id`` values start at 7e18 (above every Gaia DR3 id) so they
never collide with real sources; fine-tuning ids are offset by 1e12.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from astrobatch.io.compound_h5 import CompoundH5Writer
from astrobatch.io.fits_tables import write_fits_table
from astrobatch.studies.stellar_xp import physics as P
from astrobatch.studies.stellar_xp.columns import (
    BP_COLS,
    BPE_COLS,
    LABELS,
    MAG_COLS,
    RP_COLS,
    RPE_COLS,
    SOURCE_ID,
    error_column,
    feature_names,
)
from astrobatch.studies.stellar_xp.params import StellarXPSimulate

#: First simulated source_id (Gaia DR3 ids are below 6.92e18).
SIM_ID_BASE = 7_000_000_000_000_000_000
FINETUNE_ID_OFFSET = 1_000_000_000_000
R0_KPC = 8.2
#: (scale height, scale length) of the discs, kpc; the halo is rho ∝ r^-3.
DISC_SCALES = {0: (0.3, 2.6), 1: (0.9, 2.0)}
#: Velocity dispersion per component (thin, thick, halo), km/s.
VELOCITY_DISPERSION = (30.0, 60.0, 150.0)
KAPPA_MAS_YR = 4.740470463533348
BRIGHT_LIMIT_G = 5.0
#: Random fraction of stars without astrometry (two-parameter solutions).
NO_ASTROMETRY_FRACTION = 0.02
#: Label errors: relative (teff, age) or absolute (dex), before a U(0.7, 1.3) factor per star.
LABEL_ERRORS = {"teff": 0.012, "logg": 0.06, "fe_h": 0.03, "alpha": 0.03, "age": 0.22}
_DIST_GRID = np.geomspace(0.005, 40.0, 120)


def pretrain_columns() -> list[str]:
    """Fields of the simulated pretraining datasets: id, features (with RA, DEC), errors."""
    feats = feature_names(include_radec=True)
    errs = [e for e in (error_column(f) for f in feats) if e is not None]
    return [SOURCE_ID, *feats, *errs]


def finetune_columns() -> list[str]:
    """Columns of the simulated fine-tuning table."""
    labels = [c for lab in LABELS for c in (lab, f"e_{lab}")]
    truth = [f"true_{lab}" for lab in LABELS]
    extra = ["true_parallax", "true_distance", "true_ebv", "true_mass", "stage", "component"]
    return [SOURCE_ID, *labels, *pretrain_columns()[1:], *truth, *extra]


def _density(comp: int, lon: np.ndarray, lat: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Relative density of component ``comp`` (0 thin, 1 thick, 2 halo) at (l, b, d).

    ``lon``, ``lat`` (deg) and ``d`` (kpc) broadcast together.
    """
    cb = np.cos(np.radians(lat))
    x = R0_KPC - d * (cb * np.cos(np.radians(lon)))
    y = d * (cb * np.sin(np.radians(lon)))
    z = d * np.sin(np.radians(lat))
    big_r = np.hypot(x, y)
    if comp == 2:
        return (np.maximum(np.sqrt(big_r**2 + z**2), 1.0) / R0_KPC) ** -3
    hz, hr = DISC_SCALES[comp]
    return np.exp(-np.abs(z) / hz - (big_r - R0_KPC) / hr)


def _draw_positions(
    comp: np.ndarray, d_max: np.ndarray, rng: np.random.Generator, n_dirs: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Galactic l, b (deg) and distance (kpc) from rho(x) inside each star's d_max.

    ``n_dirs`` isotropic candidate directions per star are weighted by the number
    of stars they hold, int_0^d_max d^2 rho dd (sampling-importance resampling);
    the distance is then drawn from d^2 rho(d) along the chosen direction
    (inverse CDF on a log grid). Distant (luminous) stars therefore crowd towards
    the Galactic plane and centre, nearby ones are isotropic.
    """
    n = len(comp)
    if n > 256:  # bounded temporaries: (256, n_dirs, n_grid) per step
        parts = []
        for a in range(0, n, 256):
            parts.append(_draw_positions(comp[a : a + 256], d_max[a : a + 256], rng, n_dirs))
        return tuple(np.concatenate(v) for v in zip(*parts, strict=True))
    lon = rng.uniform(0.0, 360.0, (n, n_dirs))
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, (n, n_dirs))))
    grid = _DIST_GRID
    w = grid**2 * np.gradient(grid) * (grid[None, :] <= d_max[:, None])  # (n, g)
    w[:, 0] += 1e-300
    rho = np.empty((n, n_dirs, grid.size))
    for c in range(3):
        m = comp == c
        rho[m] = _density(c, lon[m][..., None], lat[m][..., None], grid[None, None, :])
    cdf = np.cumsum(rho * w[:, None, :], axis=2)  # (n, k, g)
    total = cdf[:, :, -1]
    u = rng.random(n)[:, None] * total.sum(axis=1, keepdims=True)
    k = np.minimum((np.cumsum(total, axis=1) < u).sum(axis=1), n_dirs - 1)
    rows = np.arange(n)
    cdf = cdf[rows, k] / total[rows, k][:, None]
    i = np.minimum((cdf < rng.random(n)[:, None]).sum(axis=1), grid.size - 1)
    lo = np.where(i > 0, grid[np.maximum(i - 1, 0)], grid[0] / 2)
    d = np.exp(rng.uniform(np.log(lo), np.log(grid[i])))
    return lon[rows, k], lat[rows, k], np.minimum(d, d_max)


def _galactic_to_icrs(lon, lat, d_kpc, v_l, v_b):
    """RA, Dec (deg) and pmra, pmdec (mas/yr) from Galactic positions and velocities (km/s)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    c = SkyCoord(
        l=lon * u.deg,
        b=lat * u.deg,
        pm_l_cosb=v_l / (KAPPA_MAS_YR * d_kpc) * u.mas / u.yr,
        pm_b=v_b / (KAPPA_MAS_YR * d_kpc) * u.mas / u.yr,
        frame="galactic",
    ).icrs
    return (
        c.ra.deg,
        c.dec.deg,
        c.pm_ra_cosdec.to_value(u.mas / u.yr),
        c.pm_dec.to_value(u.mas / u.yr),
    )


def draw_stars(
    n: int, g_limit: float, rng: np.random.Generator, batch_rows: int = 2000
) -> dict[str, np.ndarray]:
    """Draw ``n`` noise-free stars with 5 < G < ``g_limit`` (see the module docstring).

    Parameters
    ----------
    n : int
        Number of stars.
    g_limit : float
        Faint Gaia G limit, Vega mag.
    rng : numpy.random.Generator
    batch_rows : int
        Stars per internal batch (memory: ~batch_rows x 950 x 8 bytes per spectrum array).

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
        Labels (``teff`` K, ``logg`` dex, ``fe_h`` dex, ``alpha`` dex, ``age``
        Gyr), ``mass`` (Msun), ``radius`` (Rsun), ``stage``, ``component``,
        ``l``, ``b``, ``RA``, ``DEC`` (deg), ``distance`` (kpc), ``ebv_star``,
        ``ebv_los`` (mag), ``pmra``, ``pmdec`` (mas/yr), every band of
        :data:`~.physics.BAND_NAMES` (mag) and ``bp_coef``, ``rp_coef``
        (n, 55) noise-free XP coefficients.
    """
    out: dict[str, list[np.ndarray]] = {}
    have = 0
    ccm = P.ccm_grid()
    while have < n:
        m = min(batch_rows, max(2 * (n - have), 64))
        stars = P.stellar_parameters(P.sample_population(m, rng), rng)
        flux10 = P.model_spectrum(stars)
        abs_g = P.synthetic_magnitudes(flux10)["G"]
        d_max = 0.01 * 10 ** ((g_limit - abs_g) / 5.0)  # kpc, no extinction
        lon, lat, d = _draw_positions(stars["component"], d_max, rng)
        patch = 10 ** rng.normal(0.0, P.DUST_PATCHINESS_DEX, m)
        ebv_star, ebv_los = P.dust_ebv(d, lat, patch)
        flux = flux10 * (0.01 / d[:, None]) ** 2 * 10 ** (-0.4 * P.R_V * ebv_star[:, None] * ccm)
        mags = P.synthetic_magnitudes(flux)
        keep = (mags["G"] < g_limit) & (mags["G"] > BRIGHT_LIMIT_G)
        keep &= np.cumsum(keep) <= n - have
        idx = np.flatnonzero(keep)
        if not len(idx):
            continue
        sigma_v = np.asarray(VELOCITY_DISPERSION)[stars["component"][idx]]
        v_l, v_b = rng.normal(0.0, sigma_v), rng.normal(0.0, sigma_v)
        ra, dec, pmra, pmdec = _galactic_to_icrs(lon[idx], lat[idx], d[idx], v_l, v_b)
        cols = {k: v[idx] for k, v in stars.items()}
        cols.update({b: v[idx] for b, v in mags.items()})
        cols.update(
            l=lon[idx], b=lat[idx], RA=ra, DEC=dec, distance=d[idx], pmra=pmra, pmdec=pmdec,
            ebv_star=ebv_star[idx], ebv_los=ebv_los[idx],
            bp_coef=P.xp_coefficients(flux[idx], mags["BP"][idx], "bp"),
            rp_coef=P.xp_coefficients(flux[idx], mags["RP"][idx], "rp"),
        )  # fmt: skip
        for k, v in cols.items():
            out.setdefault(k, []).append(v)
        have += len(idx)
    return {k: np.concatenate(v) for k, v in out.items()}


def observe(
    stars: dict[str, np.ndarray],
    rng: np.random.Generator,
    no_xp_fraction: float = 0.03,
    missing_band_fraction: float = 0.01,
) -> dict[str, np.ndarray]:
    """Noisy catalogue columns (features and their errors) of noise-free stars.

    Parameters
    ----------
    stars : dict
        Output of :func:`draw_stars`.
    rng : numpy.random.Generator
    no_xp_fraction : float
        Fraction of stars without any XP spectrum (all coefficients NaN).
    missing_band_fraction : float
        Fraction without BP coefficients, and (independently) without RP.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,), float64
        Every feature of :func:`~.columns.feature_names` (with ``RA``,
        ``DEC``) and every error column; NaN where missing.
    """
    n = len(stars["G"])
    cols: dict[str, np.ndarray] = {}
    for band, (floor, m5) in P.GAIA_ERRORS.items():
        sig = P.magnitude_error(stars[band], floor, m5)
        obs = stars[band] + rng.normal(0.0, 1.0, n) * sig
        lost = rng.random(n) < (0.003 if band != "G" else 0.0)
        cols[band] = np.where(lost, np.nan, obs)
        cols[f"e_{band}"] = np.where(lost, np.nan, sig)
    # XP
    no_xp = rng.random(n) < no_xp_fraction
    for band, val_cols, err_cols in (("bp", BP_COLS, BPE_COLS), ("rp", RP_COLS, RPE_COLS)):
        coef = stars[f"{band}_coef"]
        err = P.xp_errors(coef[:, 0], band, rng)
        obs = coef + rng.normal(0.0, 1.0, coef.shape) * err
        lost = no_xp | (rng.random(n) < missing_band_fraction)
        obs[lost] = np.nan
        err[lost] = np.nan
        for j, (c, e) in enumerate(zip(val_cols, err_cols, strict=True)):
            cols[c], cols[e] = obs[:, j], err[:, j]
    # ground-based and infrared surveys
    for name, survey in P.SURVEYS.items():
        inside = P.in_footprint(name, stars["RA"], stars["DEC"], stars["b"])
        for band, m5 in zip(survey.bands, survey.m5, strict=True):
            sig = P.magnitude_error(stars[band], survey.floor, m5)
            obs = stars[band] + rng.normal(0.0, 1.0, n) * sig
            drop = survey.dropout
            if name == "wise":  # blending near the plane
                drop = drop + 0.1 * np.exp(-np.abs(stars["b"]) / 5.0)
            lost = ~inside | (obs > m5) | (obs < survey.saturation) | (rng.random(n) < drop)
            cols[band] = np.where(lost, np.nan, obs)
            cols[error_column(band)] = np.where(lost, np.nan, sig)
    # astrometry
    sig_plx = P.parallax_error(stars["G"])
    no_ast = rng.random(n) < NO_ASTROMETRY_FRACTION
    plx = 1.0 / stars["distance"] + P.PARALLAX_ZERO_POINT + rng.normal(0.0, 1.0, n) * sig_plx
    cols["PARALLAX"] = np.where(no_ast, np.nan, plx)
    cols["e_parallax"] = np.where(no_ast, np.nan, sig_plx)
    for k in ("pmra", "pmdec"):
        sig = 1.1 * sig_plx
        cols[k] = np.where(no_ast, np.nan, stars[k] + rng.normal(0.0, 1.0, n) * sig)
        cols[f"e_{k}"] = np.where(no_ast, np.nan, sig)
    cols["EBV"] = stars["ebv_los"] * 10 ** rng.normal(0.0, 0.04, n)  # SFD map: ~10 % error
    cols["RA"], cols["DEC"] = stars["RA"], stars["DEC"]
    missing = [c for c in pretrain_columns()[1:] if c not in cols]
    assert not missing, missing  # every feature and error column is produced
    return cols


def observe_labels(stars: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Noisy labels and errors as a spectroscopic survey would give them.

    Errors: Teff 1.2 %, log g 0.06 dex, [Fe/H] 0.03 dex, [alpha/Fe] 0.03 dex,
    age 22 %, each times U(0.7, 1.3) per star; the label is the truth plus
    Gaussian noise of that error. Missing (NaN, with its error): ``age`` for
    cool dwarfs (Teff < 5000 K, log g > 4.3; ages not measurable) and 5 % at
    random, ``alpha`` 3 % at random, other labels 1 % at random.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
        ``<label>`` and ``e_<label>`` for :data:`~.columns.LABELS`.
    """
    n = len(stars["teff"])
    out = {}
    for lab in LABELS:
        truth = stars[lab]
        rel = lab in ("teff", "age")
        err = LABEL_ERRORS[lab] * (truth if rel else 1.0) * rng.uniform(0.7, 1.3, n)
        val = truth + rng.normal(0.0, 1.0, n) * err
        if lab == "age":
            val = np.maximum(val, 0.1)
            lost = ((stars["teff"] < 5000) & (stars["logg"] > 4.3)) | (rng.random(n) < 0.05)
        else:
            lost = rng.random(n) < (0.03 if lab == "alpha" else 0.01)
        out[lab] = np.where(lost, np.nan, val)
        out[f"e_{lab}"] = np.where(lost, np.nan, err)
    return out


def _units() -> dict[str, str]:
    """FITS units (TUNITn) of the fine-tuning table.

    Columns in dex and the XP coefficients (e-/s in the basis normalisation)
    carry no unit: neither is expressible in the FITS unit standard.
    """
    units = {c: "mag" for c in MAG_COLS}
    units.update({error_column(c): "mag" for c in MAG_COLS})
    units.update(PARALLAX="mas", e_parallax="mas", EBV="mag", RA="deg", DEC="deg")
    units.update(pmra="mas/yr", pmdec="mas/yr", e_pmra="mas/yr", e_pmdec="mas/yr")
    for lab, unit in (("teff", "K"), ("age", "Gyr")):
        units.update({lab: unit, f"e_{lab}": unit, f"true_{lab}": unit})
    units.update(true_parallax="mas", true_distance="kpc", true_ebv="mag", true_mass="solMass")
    return units


def simulate_to_files(
    p: StellarXPSimulate,
    pretrain_out: str | Path,
    finetune_out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Simulate the pretraining HDF5 file and the fine-tuning FITS table.

    Parameters
    ----------
    p : StellarXPSimulate
        Sizes, seed, magnitude limits and missing fractions.
    pretrain_out : str or pathlib.Path
        HDF5 file of ``sslset0_part<k>`` compound datasets (<= ``p.rows_per_part``
        rows each); no labels.
    finetune_out : str or pathlib.Path
        FITS table with labels, errors, features and truth columns.
    progress : callable, optional
        ``progress(done, total)`` over stars written.

    Returns
    -------
    dict
        Summary: ``n_pretrain``, ``n_finetune``, ``keys``, ``seconds``, the
        median G of each file and the missing fraction of some columns.

    Notes
    -----
    Both files are written atomically (temporary file, then rename); the same
    ``p`` gives byte-identical data. ``numpy.random.default_rng(p.seed)``
    spawns one generator for the pretraining stars and one for the
    fine-tuning stars, so changing ``n_finetune`` does not change the
    pretraining file.
    """
    t0 = time.perf_counter()
    rng_pre, rng_fine = np.random.default_rng(p.seed).spawn(2)
    total = p.n_pretrain + p.n_finetune
    done = 0
    cols = pretrain_columns()
    summary: dict = {"missing_fraction": {}}
    g_pre = []
    with CompoundH5Writer(pretrain_out, cols, rows_per_part=p.rows_per_part) as w:
        while done < p.n_pretrain:
            m = min(p.batch_rows, p.n_pretrain - done)
            stars = draw_stars(m, p.g_limit, rng_pre, p.batch_rows)
            obs = observe(stars, rng_pre, p.no_xp_fraction, p.missing_band_fraction)
            obs[SOURCE_ID] = SIM_ID_BASE + done + np.arange(m, dtype=np.int64)
            w.append(obs)
            g_pre.append(np.nanmedian(obs["G"]))
            done += m
            if progress:
                progress(done, total)
        keys = list(w.keys)
    stars = draw_stars(p.n_finetune, p.finetune_g_limit, rng_fine, p.batch_rows)
    obs = observe(stars, rng_fine, p.no_xp_fraction, p.missing_band_fraction)
    labels = observe_labels(stars, rng_fine)
    table = {SOURCE_ID: SIM_ID_BASE + FINETUNE_ID_OFFSET + np.arange(p.n_finetune)}
    table.update(labels)
    table.update({c: obs[c] for c in cols[1:]})
    table.update({f"true_{lab}": stars[lab] for lab in LABELS})
    table.update(
        true_parallax=1.0 / stars["distance"], true_distance=stars["distance"],
        true_ebv=stars["ebv_star"], true_mass=stars["mass"],
        stage=stars["stage"].astype(np.int16), component=stars["component"].astype(np.int16),
    )  # fmt: skip
    write_fits_table(
        finetune_out,
        {c: table[c] for c in finetune_columns()},
        units=_units(),
        meta={"ORIGIN": "astrobatch stellar_xp simulator", "SIMSEED": p.seed},
    )
    if progress:
        progress(total, total)
    summary.update(
        n_pretrain=p.n_pretrain,
        n_finetune=p.n_finetune,
        keys=keys,
        seconds=round(time.perf_counter() - t0, 2),
        median_g_pretrain=float(np.median(g_pre)) if g_pre else float("nan"),
        median_g_finetune=float(np.nanmedian(obs["G"])),
    )
    for c in ("bp_1", "rp_1", "W1", "U_SMSS", "G_SDSS", "G_PS1", "J", "PARALLAX", "age"):
        v = table[c]
        summary["missing_fraction"][c] = round(float(np.mean(np.isnan(v))), 4)
    return summary
