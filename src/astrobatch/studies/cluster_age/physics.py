"""Physics of the cluster_age simulator: stars, IMF, extinction, HST filters, cluster profiles.

Pure functions on NumPy arrays. Units: masses Msun, ages yr, luminosities
Lsun, temperatures K, lengths pc (on the sky: pixels), wavelengths Angstrom,
magnitudes Vega (zero points :data:`~.photometry.ZEROPOINTS_VEGA`).

Stars
    Main-sequence lifetimes, mid-main-sequence luminosities and effective
    temperatures of solar-metallicity stars from 0.8 to 120 Msun are tabulated
    (:data:`TRACK_TABLE`: rounded values of the non-rotating Geneva tracks,
    Schaller et al. 1992, A&AS 96, 269; compare Ekström et al. 2012, A&A 537,
    A146) and interpolated in log-log. During the main sequence (fraction
    ``tau = age / t_MS`` in [0, 1]) the star brightens by 0.3 dex and cools by
    0.06 dex. Post-main-sequence phases last ``POST_MS_FRACTION = 0.1`` of
    the main-sequence lifetime (core helium burning, e.g. Maeder & Meynet
    1989, A&A 210, 155); then the star is a dark remnant. Post-main-sequence
    stars are schematic by initial mass (:func:`stellar_properties`):
    Wolf-Rayet / blue supergiants above 40 Msun, blue or red supergiants for
    25-40 Msun, red supergiants (3500-4200 K; 25 % on the blue loop) for
    9-25 Msun, core-He-burning giants and AGB stars for 2.2-9 Msun, red
    giants below. So the brightest stars of a cluster are blue main-sequence
    stars below ~5 Myr, red supergiants at ~10-50 Myr (M_F814W -7 to -9), AGB
    stars at 0.1-1 Gyr (M_F814W -4 to -6) and faint giants when older.
IMF
    Kroupa (2001, MNRAS 322, 231): xi(m) ∝ m^-1.3 (0.08-0.5 Msun),
    m^-2.3 (0.5-120 Msun); numbers per Msun formed from its integrals
    (:func:`kroupa_number_per_msun`), masses by inverse CDF
    (:func:`astrobatch.studies.star_sets.physics.kroupa_inverse_cdf`).
Photometry of stars
    Blackbody spectra (Planck) of the star's L and Teff, reddened with the
    Calzetti et al. (2000, ApJ 533, 682) starburst law (the law of the LEGUS
    SED fits, R'_V = 4.05), integrated through the real HST total-throughput
    curves shipped with sedpy (WFC3/UVIS F275W, F336W; ACS/WFC F435W for the
    F438W channel, F555W, F814W: the instruments of the LEGUS NGC 628
    catalogue), converted from AB to Vega with sedpy's Vega spectrum
    (:func:`band_tables`). Blackbodies miss the Balmer jump and molecular
    bands: colours of real stars differ by up to a few tenths of a magnitude.
Cluster profile
    EFF profile (Elson, Fall & Freeman 1987, ApJ 323, 54), surface brightness
    ∝ (1 + r^2 / a^2)^(-gamma / 2), with R_eff = a sqrt(2^(2 / (gamma - 2)) - 1)
    (:func:`eff_core_radius`); sizes follow a shallow mass-radius relation
    that grows with age (:func:`effective_radius_pc`, after Ryon et al. 2017,
    ApJ 841, 92).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from astrobatch.errors import InputError
from astrobatch.studies.cluster_age.params import CLUSTER_AGE_BANDS
from astrobatch.studies.cluster_age.photometry import ZEROPOINTS_VEGA
from astrobatch.studies.star_sets.physics import kroupa_inverse_cdf

#: sedpy filter-curve names of the five channels (F438W channel = ACS/WFC F435W for NGC 628).
FILTER_CURVES: dict[str, str] = {
    "F275W": "wfc3_uvis_f275w",
    "F336W": "wfc3_uvis_f336w",
    "F438W": "acs_wfc_f435w",
    "F555W": "acs_wfc_f555w",
    "F814W": "acs_wfc_f814w",
}
#: Distance modulus of NGC 628 used by the LEGUS catalogue, mag (9.9 Mpc; Calzetti et al. 2015).
DISTANCE_MODULUS_NGC628 = 29.98
#: IMF mass limits, Msun.
IMF_M_MIN, IMF_M_MAX = 0.08, 120.0
#: Post-main-sequence lifetime as a fraction of the main-sequence lifetime.
POST_MS_FRACTION = 0.1
#: Nominal solar luminosity, erg/s (IAU 2015 Resolution B3), and the parsec, cm.
L_SUN_ERG_S = 3.828e33
PC_CM = 3.0856775814913673e18
#: Calzetti et al. (2000) R'_V.
CALZETTI_RV = 4.05
#: HST collecting area, cm^2 (STScI synphot value).
HST_AREA_CM2 = 45238.93

#: Columns: initial mass (Msun), log10 main-sequence lifetime (yr), log10 L/Lsun and log10 Teff/K
#: at mid main sequence; solar metallicity, rounded from the Geneva tracks (Schaller et al. 1992).
TRACK_TABLE = np.array(
    [
        [0.8, 10.40, -0.45, 3.70],
        [1.0, 10.00, 0.00, 3.76],
        [1.25, 9.65, 0.45, 3.81],
        [1.5, 9.40, 0.80, 3.86],
        [1.7, 9.25, 1.00, 3.90],
        [2.0, 9.05, 1.25, 3.95],
        [2.5, 8.78, 1.60, 4.02],
        [3.0, 8.55, 1.95, 4.08],
        [4.0, 8.22, 2.45, 4.16],
        [5.0, 7.98, 2.80, 4.22],
        [7.0, 7.64, 3.35, 4.30],
        [9.0, 7.42, 3.70, 4.36],
        [12.0, 7.21, 4.10, 4.42],
        [15.0, 7.07, 4.40, 4.46],
        [20.0, 6.92, 4.75, 4.52],
        [25.0, 6.83, 5.00, 4.55],
        [40.0, 6.66, 5.45, 4.62],
        [60.0, 6.56, 5.75, 4.66],
        [85.0, 6.49, 6.00, 4.68],
        [120.0, 6.44, 6.20, 4.70],
    ]
)
_LOG_M = np.log10(TRACK_TABLE[:, 0])

# Kroupa (2001) segments: edges (Msun) and slopes alpha of xi ∝ m^-alpha, continuous at 0.5.
_KROUPA_EDGES = np.array([IMF_M_MIN, 0.5, IMF_M_MAX])
_KROUPA_ALPHA = np.array([1.3, 2.3])
_KROUPA_K = np.array([0.5 ** (1.3 - 2.3), 1.0])


def _positive(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError("expected positive finite values", key=name)
    return arr


def ms_lifetime_yr(mass) -> np.ndarray:
    """Main-sequence (hydrogen-burning) lifetime.

    Log-log interpolation of :data:`TRACK_TABLE` (Schaller et al. 1992,
    solar metallicity), extrapolated linearly in log-log outside 0.8-120 Msun.

    Parameters
    ----------
    mass : array_like, float
        Initial stellar masses, Msun (> 0).

    Returns
    -------
    numpy.ndarray, same shape, float64
        Lifetime, yr.

    Raises
    ------
    InputError
        If a mass is not positive and finite.
    """
    lm = np.log10(_positive(mass, "mass"))
    y = np.interp(lm, _LOG_M, TRACK_TABLE[:, 1])
    lo = (TRACK_TABLE[1, 1] - TRACK_TABLE[0, 1]) / (_LOG_M[1] - _LOG_M[0])
    hi = (TRACK_TABLE[-1, 1] - TRACK_TABLE[-2, 1]) / (_LOG_M[-1] - _LOG_M[-2])
    y = np.where(lm < _LOG_M[0], TRACK_TABLE[0, 1] + lo * (lm - _LOG_M[0]), y)
    y = np.where(lm > _LOG_M[-1], TRACK_TABLE[-1, 1] + hi * (lm - _LOG_M[-1]), y)
    return 10.0**y


def turnoff_mass(age_yr) -> np.ndarray:
    """Main-sequence turnoff mass: the mass whose lifetime (:func:`ms_lifetime_yr`) is the age.

    Parameters
    ----------
    age_yr : array_like, float
        Ages, yr (> 0).

    Returns
    -------
    numpy.ndarray, same shape, float64
        Turnoff mass, Msun, clipped to the IMF range [0.08, 120]: 120 Msun
        (no star has left the main sequence) below 2.75 Myr.

    Raises
    ------
    InputError
        If an age is not positive and finite.

    Examples
    --------
    >>> turnoff_mass([1e6, 1e7, 1e8, 1e9]).round(1).tolist()
    [120.0, 17.2, 4.9, 2.1]
    """
    la = np.log10(_positive(age_yr, "age_yr"))
    # lifetimes decrease with mass: interpolate the inverse on the reversed table
    lm = np.interp(la, TRACK_TABLE[::-1, 1], _LOG_M[::-1])
    below = la > TRACK_TABLE[0, 1]
    slope = (_LOG_M[1] - _LOG_M[0]) / (TRACK_TABLE[1, 1] - TRACK_TABLE[0, 1])
    lm = np.where(below, _LOG_M[0] + slope * (la - TRACK_TABLE[0, 1]), lm)
    lm = np.where(la < TRACK_TABLE[-1, 1], np.log10(IMF_M_MAX), lm)
    return np.clip(10.0**lm, IMF_M_MIN, IMF_M_MAX)


def death_mass(age_yr) -> np.ndarray:
    """Largest initial mass still shining at ``age_yr`` (end of the post-main-sequence phase).

    A star of lifetime t_MS shines until ``(1 + POST_MS_FRACTION) t_MS``.

    Parameters
    ----------
    age_yr : array_like, float
        Ages, yr (> 0).

    Returns
    -------
    numpy.ndarray, same shape, float64
        Msun, clipped to [0.08, 120]; >= :func:`turnoff_mass`.
    """
    return turnoff_mass(np.asarray(age_yr, dtype=np.float64) / (1.0 + POST_MS_FRACTION))


def _kroupa_moment(m_lo: float, m_hi: float, power: int) -> float:
    """Integral of m^power xi(m) over [m_lo, m_hi] (xi unnormalised, continuous Kroupa)."""
    total = 0.0
    for i in range(2):
        a, b = max(m_lo, _KROUPA_EDGES[i]), min(m_hi, _KROUPA_EDGES[i + 1])
        if b <= a:
            continue
        p = power + 1.0 - _KROUPA_ALPHA[i]
        total += _KROUPA_K[i] * (np.log(b / a) if abs(p) < 1e-12 else (b**p - a**p) / p)
    return float(total)


def kroupa_number_per_msun(m_lo: float, m_hi: float) -> float:
    """Expected number of stars with initial mass in [m_lo, m_hi] per Msun of stars formed.

    ``N = int_{m_lo}^{m_hi} xi dm / int_{0.08}^{120} m xi dm`` for the Kroupa
    (2001) IMF on 0.08-120 Msun (0.0109 stars above 8 Msun per Msun).

    Parameters
    ----------
    m_lo, m_hi : float
        Mass range, Msun (clipped to the IMF range; empty range -> 0).

    Returns
    -------
    float
        Stars per Msun.

    Examples
    --------
    >>> round(kroupa_number_per_msun(8.0, 120.0), 4)
    0.0109
    """
    m_lo, m_hi = max(float(m_lo), IMF_M_MIN), min(float(m_hi), IMF_M_MAX)
    if m_hi <= m_lo:
        return 0.0
    return _kroupa_moment(m_lo, m_hi, 0) / _kroupa_moment(IMF_M_MIN, IMF_M_MAX, 1)


def kroupa_density(mass) -> np.ndarray:
    """Kroupa IMF as stars per Msun formed per unit mass (Msun^-1 Msun^-1), 0 outside 0.08-120."""
    m = np.asarray(mass, dtype=np.float64)
    xi = np.where(m < 0.5, _KROUPA_K[0] * m**-1.3, _KROUPA_K[1] * m**-2.3)
    xi = np.where((m >= IMF_M_MIN) & (m <= IMF_M_MAX), xi, 0.0)
    return xi / _kroupa_moment(IMF_M_MIN, IMF_M_MAX, 1)


def sample_imf(n: int, m_lo: float, m_hi: float, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` initial masses from the Kroupa IMF truncated to [m_lo, m_hi].

    Parameters
    ----------
    n : int
        Number of stars.
    m_lo, m_hi : float
        Mass range, Msun (within 0.08-120, m_lo < m_hi).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        Msun.
    """
    if n <= 0:
        return np.zeros(0)
    return kroupa_inverse_cdf(rng.random(n), max(m_lo, IMF_M_MIN), min(m_hi, IMF_M_MAX))


def stellar_properties(
    mass, age_yr, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Luminosity and effective temperature of stars of given initial mass and age.

    Main sequence (``tau = age / t_MS <= 1``): ``log L = log L_mid + 0.3 (tau - 0.5)``,
    ``log Teff = log Teff_mid - 0.06 (tau - 0.5)`` (:data:`TRACK_TABLE`).
    Post main sequence (``1 < tau <= 1 + POST_MS_FRACTION``), with
    ``log L_end = log L_mid + 0.15`` and u uniform deviates (schematic phases
    after the Geneva tracks, Schaller et al. 1992; Ekström et al. 2012):

    - m >= 40: WR / blue supergiant, log Teff = 4.3 + 0.4 u, log L = log L_end + 0.1;
    - 25 <= m < 40: half blue (log Teff 4.0-4.4), half yellow/red (3.56-3.86) supergiants,
      log L = log L_end + 0.3;
    - 9 <= m < 25: red supergiants, log Teff 3.54-3.62 (75 %) or blue loop 3.8-4.2,
      log L = log L_end + 0.25 + 0.25 u (brightening during core He burning);
    - 2.2 <= m < 9: core-He-burning giants / AGB, log Teff 3.55-3.70 (blue loop 3.75-4.0
      for 20 % of m > 4), log L = log L_end + 0.2 + 0.8 u^3;
    - m < 2.2: red giants, log L = 1.5 + 1.9 u^2 (most near the base), log Teff =
      3.68 - 0.12 (log L - 1.5) / 1.9.

    Parameters
    ----------
    mass : array_like, shape (n,), float
        Initial masses, Msun (> 0).
    age_yr : array_like, shape (n,) or scalar, float
        Ages, yr (> 0).
    rng : numpy.random.Generator
        For the phase details of post-main-sequence stars.

    Returns
    -------
    log_l : numpy.ndarray, shape (n,), float64
        log10 L / Lsun (-inf for remnants).
    log_teff : numpy.ndarray, shape (n,), float64
        log10 Teff / K.
    alive : numpy.ndarray, shape (n,), bool
        False for stars past their post-main-sequence phase (dark remnants).
    """
    m = _positive(mass, "mass").reshape(-1)
    age = np.broadcast_to(_positive(age_yr, "age_yr"), m.shape)
    tau = age / ms_lifetime_yr(m)
    lm = np.log10(m)
    log_l_mid = np.interp(lm, _LOG_M, TRACK_TABLE[:, 2])
    log_t_mid = np.interp(lm, _LOG_M, TRACK_TABLE[:, 3])
    alive = tau <= 1.0 + POST_MS_FRACTION
    ms = tau <= 1.0
    t = np.minimum(tau, 1.0) - 0.5
    log_l = log_l_mid + 0.3 * t
    log_t = log_t_mid - 0.06 * t
    u1, u2, u3 = rng.random((3, m.size))
    end = log_l_mid + 0.15
    post_l = np.select(
        [m >= 40.0, m >= 25.0, m >= 9.0, m >= 2.2],
        [end + 0.1, end + 0.3, end + 0.25 + 0.25 * u3, end + 0.2 + 0.8 * u3**3],
        default=1.5 + 1.9 * u3**2,
    )
    post_t = np.select(
        [
            m >= 40.0,
            m >= 25.0,
            m >= 9.0,
            (m >= 4.0) & (u2 < 0.2),
            m >= 2.2,
        ],
        [
            4.3 + 0.4 * u1,
            np.where(u2 < 0.5, 4.0 + 0.4 * u1, 3.56 + 0.3 * u1),
            np.where(u2 < 0.75, 3.54 + 0.08 * u1, 3.8 + 0.4 * u1),
            3.75 + 0.25 * u1,
            3.55 + 0.15 * u1,
        ],
        default=3.68 - 0.12 * (post_l - 1.5) / 1.9,
    )
    log_l = np.where(ms, log_l, post_l)
    log_t = np.where(ms, log_t, post_t)
    log_l = np.where(alive, log_l, -np.inf)
    return log_l, log_t, alive


def calzetti_k(wavelength_aa) -> np.ndarray:
    """Calzetti et al. (2000, ApJ 533, 682, eq. 4) starburst attenuation curve k'(lambda).

    ``A_lambda = k'(lambda) E(B-V)``; k' = 2.659 (-2.156 + 1.509/x - 0.198/x^2 +
    0.011/x^3) + R'_V for 0.12 <= x < 0.63 um, 2.659 (-1.857 + 1.040/x) + R'_V
    for 0.63-2.2 um, R'_V = 4.05; extrapolated with the same formulae outside
    and clipped at 0.

    Parameters
    ----------
    wavelength_aa : array_like, float
        Wavelengths, Angstrom (> 0).

    Returns
    -------
    numpy.ndarray, same shape, float64
        k'(lambda), mag per mag of E(B-V).
    """
    x = _positive(wavelength_aa, "wavelength_aa") / 1.0e4
    blue = 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + CALZETTI_RV
    red = 2.659 * (-1.857 + 1.040 / x) + CALZETTI_RV
    return np.clip(np.where(x < 0.63, blue, red), 0.0, None)


def planck_lambda(wavelength_aa, teff) -> np.ndarray:
    """Planck function B_lambda, erg s^-1 cm^-2 Angstrom^-1 sr^-1.

    Parameters
    ----------
    wavelength_aa : array_like, shape (L,), float
        Wavelengths, Angstrom.
    teff : array_like, shape (T,), float
        Temperatures, K.

    Returns
    -------
    numpy.ndarray, shape (T, L), float64
    """
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    lam = np.asarray(wavelength_aa, dtype=np.float64)[None, :] * 1e-8
    t = np.asarray(teff, dtype=np.float64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        return 2 * h * c**2 / lam**5 / np.expm1(h * c / (lam * k * t)) * 1e-8


@lru_cache(maxsize=1)
def band_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute Vega magnitudes and extinction coefficients of blackbody stars in the 5 bands.

    A blackbody of luminosity 1 Lsun at 10 pc has ``f_lambda = L B_lambda /
    (4 sigma T^4 d^2)``; it is integrated through the sedpy curves
    (:data:`FILTER_CURVES`) with :func:`sedpy.observate.getSED` (AB) and
    converted to Vega with each filter's ``ab_to_vega``. The extinction
    coefficient is the magnitude change for E(B-V) = 1 with the Calzetti law
    (:func:`calzetti_k`), per temperature (broad bands: it depends on the SED).

    Returns
    -------
    log_teff : numpy.ndarray, shape (T,), float64
        Grid, log10 K, 3.4 to 4.8 step 0.01.
    abs_mag : numpy.ndarray, shape (T, 5), float64
        Absolute Vega magnitude of a 1 Lsun blackbody (band order of
        :data:`~astrobatch.studies.cluster_age.params.CLUSTER_AGE_BANDS`).
    k_band : numpy.ndarray, shape (T, 5), float64
        A_band / E(B-V), mag.
    """
    from sedpy import observate

    filters = observate.load_filters([FILTER_CURVES[b] for b in CLUSTER_AGE_BANDS])
    wave = np.arange(1500.0, 11000.0, 5.0)
    log_teff = np.round(np.arange(3.4, 4.8 + 1e-9, 0.01), 2)
    teff = 10.0**log_teff
    sigma = 5.670374419e-5
    d = 10.0 * PC_CM
    f_lam = planck_lambda(wave, teff) * (L_SUN_ERG_S / (4.0 * sigma * teff[:, None] ** 4 * d**2))
    ab_to_vega = np.array([f.ab_to_vega for f in filters])
    mag0 = observate.getSED(wave, f_lam, filterlist=filters) + ab_to_vega
    red = f_lam * 10.0 ** (-0.4 * calzetti_k(wave))[None, :]
    mag1 = observate.getSED(wave, red, filterlist=filters) + ab_to_vega
    abs_mag, k_band = np.asarray(mag0), np.asarray(mag1 - mag0)
    for arr in (log_teff, abs_mag, k_band):
        arr.flags.writeable = False
    return log_teff, abs_mag, k_band


def star_magnitudes(log_l, log_teff, ebv, distance_modulus) -> np.ndarray:
    """Apparent Vega magnitudes of reddened blackbody stars in the five bands.

    ``m_b = M_b(Teff) - 2.5 log10(L / Lsun) + k_b(Teff) E(B-V) + mu``
    (:func:`band_tables`, linear interpolation in log Teff, clipped to the grid).

    Parameters
    ----------
    log_l, log_teff : array_like, shape (n,), float
        log10 L / Lsun and log10 Teff / K.
    ebv : array_like, shape (n,) or scalar, float
        E(B-V), mag (Calzetti law).
    distance_modulus : float
        mu = 5 log10(d / 10 pc), mag.

    Returns
    -------
    numpy.ndarray, shape (n, 5), float64
        Vega magnitudes (``inf`` where L = 0).
    """
    grid, abs_mag, k_band = band_tables()
    lt = np.clip(np.asarray(log_teff, dtype=np.float64).reshape(-1), grid[0], grid[-1])
    pos = (lt - grid[0]) / (grid[1] - grid[0])
    i = np.clip(np.floor(pos).astype(np.int64), 0, len(grid) - 2)
    w = (pos - i)[:, None]
    m_abs = abs_mag[i] * (1 - w) + abs_mag[i + 1] * w
    k = k_band[i] * (1 - w) + k_band[i + 1] * w
    ebv = np.broadcast_to(np.asarray(ebv, dtype=np.float64), lt.shape)[:, None]
    with np.errstate(invalid="ignore"):
        return (
            m_abs
            - 2.5 * np.asarray(log_l, dtype=np.float64).reshape(-1, 1)
            + k * ebv
            + float(distance_modulus)
        )


def star_counts(log_l, log_teff, ebv, distance_modulus) -> np.ndarray:
    """Count rates (e-/s) of stars in the five bands (:func:`star_magnitudes`, ZEROPOINTS_VEGA).

    Parameters
    ----------
    log_l, log_teff, ebv, distance_modulus
        As in :func:`star_magnitudes`.

    Returns
    -------
    numpy.ndarray, shape (n, 5), float64
        e-/s (0 for remnants).
    """
    mags = star_magnitudes(log_l, log_teff, ebv, distance_modulus)
    with np.errstate(over="ignore"):
        return np.nan_to_num(10.0 ** (-0.4 * (mags - ZEROPOINTS_VEGA[None, :])), nan=0.0)


def diffuse_extinction_coefficients() -> np.ndarray:
    """A_band / E(B-V) for diffuse light (the value for a 6000 K blackbody), shape (5,)."""
    grid, _, k_band = band_tables()
    return k_band[int(np.argmin(np.abs(grid - np.log10(6000.0))))].copy()


def eff_core_radius(r_eff, gamma) -> np.ndarray:
    """EFF core radius a from the projected half-light radius (Elson, Fall & Freeman 1987).

    ``R_eff = a sqrt(2^(2 / (gamma - 2)) - 1)`` for the surface brightness
    ``(1 + r^2 / a^2)^(-gamma / 2)`` (gamma > 2; e.g. Larsen 1999, A&AS 139, 393).

    Parameters
    ----------
    r_eff : array_like, float
        Half-light radius (any length unit).
    gamma : array_like, float
        EFF power-law index (> 2).

    Returns
    -------
    numpy.ndarray, float64
        Core radius a, same unit.

    Examples
    --------
    >>> float(eff_core_radius(np.sqrt(15.0), 2.5))
    1.0
    """
    g = np.asarray(gamma, dtype=np.float64)
    if np.any(g <= 2):
        raise InputError("expected EFF gamma > 2 (finite total light)", key="gamma")
    return np.asarray(r_eff, dtype=np.float64) / np.sqrt(2.0 ** (2.0 / (g - 2.0)) - 1.0)


def eff_enclosed_fraction(r, a, gamma) -> np.ndarray:
    """Light fraction of an EFF profile inside projected radius r: 1 - (1 + r^2/a^2)^(1 - gamma/2).

    Parameters
    ----------
    r : array_like, float
        Radii (unit of ``a``).
    a, gamma : float
        Core radius and index (> 2).

    Returns
    -------
    numpy.ndarray, float64
        Fractions in [0, 1).
    """
    r = np.asarray(r, dtype=np.float64)
    return 1.0 - (1.0 + (r / a) ** 2) ** (1.0 - 0.5 * gamma)


def eff_sample_radius(u, a, gamma) -> np.ndarray:
    """Projected radii drawn from an EFF profile by inverting :func:`eff_enclosed_fraction`.

    Parameters
    ----------
    u : array_like, float
        Uniform deviates in [0, 1).
    a, gamma : float
        Core radius (any unit) and index (> 2).

    Returns
    -------
    numpy.ndarray, float64
        Radii, unit of ``a``.
    """
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0 - 1e-12)
    return a * np.sqrt((1.0 - u) ** (1.0 / (1.0 - 0.5 * gamma)) - 1.0)


def effective_radius_pc(mass, age_yr, rng: np.random.Generator) -> np.ndarray:
    """Half-light radii of clusters: shallow mass-radius relation growing with age.

    ``log10 R_eff = log10 2.5 + 0.24 log10(M / 1e4) + 0.1 log10(t / 10 Myr) + N(0, 0.2)``,
    clipped to 0.5-20 pc: median ~3 pc, slope ~0.24 and larger older
    clusters, after the LEGUS size measurements of Ryon et al. (2017, ApJ 841,
    92; NGC 628 and NGC 1313).

    Parameters
    ----------
    mass : array_like, float
        Cluster masses, Msun.
    age_yr : array_like, float
        Ages, yr.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, float64
        R_eff, pc.
    """
    m = _positive(mass, "mass")
    t = _positive(age_yr, "age_yr")
    log_r = np.log10(2.5) + 0.24 * np.log10(m / 1e4) + 0.1 * np.log10(t / 1e7)
    log_r = log_r + rng.normal(0.0, 0.2, size=np.shape(log_r))
    return np.clip(10.0**log_r, 0.5, 20.0)


class FieldPopulation:
    """Bright stars alive today in a disc forming stars at a constant rate (for host backgrounds).

    With a constant star-formation rate over ``t_disc_yr``, the stars of
    initial mass m alive today number ``SFR xi(m) min((1 + f) t_MS(m), t_disc)``
    per unit mass (f = :data:`POST_MS_FRACTION`). Only the stars that can
    stand out individually are drawn: main-sequence stars above
    ``m_ms_min`` and post-main-sequence stars above ``m_post_min``; fainter
    ones belong to the smooth disc light.

    Parameters
    ----------
    t_disc_yr : float
        Duration of star formation, yr.
    m_ms_min, m_post_min : float
        Smallest drawn masses on and after the main sequence, Msun.
    """

    def __init__(self, t_disc_yr: float = 1.0e10, m_ms_min: float = 5.0, m_post_min: float = 1.5):
        self.t_disc = float(t_disc_yr)
        m = np.geomspace(min(m_ms_min, m_post_min), IMF_M_MAX, 2048)
        t_ms = ms_lifetime_yr(m)
        xi = kroupa_density(m)
        w_ms = xi * np.minimum(t_ms, self.t_disc) * (m >= m_ms_min)
        w_post = xi * np.clip(self.t_disc - t_ms, 0.0, POST_MS_FRACTION * t_ms) * (m >= m_post_min)
        self._m = m
        self._cdf = []
        self._per_sfr = []  # stars per (Msun / yr)
        for w in (w_ms, w_post):
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(m))])
            self._per_sfr.append(float(cdf[-1]))
            self._cdf.append(cdf / cdf[-1])

    def expected_number(self, sfr_msun_yr: float) -> tuple[float, float]:
        """Expected numbers of (main-sequence, post-main-sequence) drawn stars at SFR (Msun/yr)."""
        return self._per_sfr[0] * sfr_msun_yr, self._per_sfr[1] * sfr_msun_yr

    def sample(self, sfr_msun_yr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Poisson-draw the bright stars of a patch with star-formation rate ``sfr_msun_yr``.

        Returns
        -------
        mass : numpy.ndarray, shape (n,), float64
            Initial masses, Msun.
        age_yr : numpy.ndarray, shape (n,), float64
            Ages, yr (main sequence: uniform over the lifetime; post: within
            the post-main-sequence phase).
        """
        n_ms, n_post = (int(rng.poisson(x)) for x in self.expected_number(sfr_msun_yr))
        m_ms = np.interp(rng.random(n_ms), self._cdf[0], self._m)
        m_post = np.interp(rng.random(n_post), self._cdf[1], self._m)
        t_ms = ms_lifetime_yr(np.concatenate([m_ms, m_post])) if n_ms + n_post else np.zeros(0)
        age_ms = rng.random(n_ms) * np.minimum(t_ms[:n_ms], self.t_disc)
        tp = t_ms[n_ms:]
        age_post = tp * (1.0 + rng.random(n_post) * POST_MS_FRACTION * (1 - 1e-9))
        age = np.maximum(np.concatenate([age_ms, age_post]), 1.0)
        return np.concatenate([m_ms, m_post]), age
