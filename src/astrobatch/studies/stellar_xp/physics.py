"""Physics of the stellar_xp simulator: labels -> spectrum -> XP coefficients and photometry.

A deliberately simple, documented forward model; every relation is smooth in
the labels so that a network can learn the inverse, and every approximation is
listed here.

Stellar populations (:func:`sample_population`)
    Three components (fractions 0.78 / 0.17 / 0.05): thin disc (age U(0.3, 10)
    Gyr, [Fe/H] ~ N(-0.025 (age - 5), 0.2), low-alpha sequence [alpha/Fe] =
    0.02 - 0.12 [Fe/H]), thick disc (age U(8, 12.5), [Fe/H] ~ N(-0.5, 0.25),
    high-alpha [alpha/Fe] = 0.25 - 0.2 clip([Fe/H] + 0.7, 0, 0.75)) and halo
    (age U(10.5, 13.5), [Fe/H] ~ N(-1.5, 0.45), [alpha/Fe] = 0.32), each with
    N(0, 0.03) scatter in [alpha/Fe]. Evolutionary stages (weights 0.50 / 0.12 /
    0.28 / 0.10, a magnitude-limited mix): main sequence, subgiant, red giant
    branch, red clump (horizontal branch, hot, for [Fe/H] < -0.9).
Stellar structure, roughly along isochrones (:func:`stellar_parameters`)
    Turnoff mass M_TO = (age / 10 Gyr)^-0.4 (1 + 0.06 [Fe/H]) Msun (main-sequence
    lifetime 10 Gyr M^-2.5). Main sequence: M from a Salpeter-like IMF
    (dN/dM ∝ M^-2.3) in [0.45, M_TO]; ZAMS L = 0.7 M^4 10^(-0.15 [Fe/H]),
    R = 0.89 M^0.8 (1 + 0.07 [Fe/H]); with the fractional age tau = age / t_MS,
    L -> L (1 + 0.9 tau), R -> R (1 + 0.5 tau^1.5); Teff = 5772 K (L / R^2)^(1/4).
    Giant branch: M = M_TO, log g from p(log g) ∝ 10^(0.3 log g) in [0.8, 3.6],
    Teff = 4700 + 280 (log g - 2.5) - 60 (log g - 2.5)^2 - 230 [Fe/H] + 150 log10 M K.
    Subgiants interpolate from the turnoff to the RGB base (log g 3.6). Red
    clump: log g ~ N(2.45, 0.08), Teff = 4750 - 250 [Fe/H] K; blue horizontal
    branch for [Fe/H] < -0.9: Teff U(5500, 9000) K. Radius R = sqrt(G M / g).
Spectrum (:func:`model_spectrum`)
    F_lambda at 10 pc = pi B_lambda(Teff) (R / 10 pc)^2 exp(-tau(lambda)), with
    tau the optical depth of broadened absorption features whose strength
    depends on (Teff, log g, [Fe/H], [alpha/Fe]): blue metal-line blanketing,
    the Balmer jump and lines (peaking near 9500 K, pressure-broadened with
    log g), Ca II H&K, the G band, Mg b (stronger in dwarfs), Na D, the Ca II
    triplet (stronger in giants) and TiO band heads below 4300 K.
Extinction (:func:`ccm89`)
    Cardelli, Clayton & Mathis 1989 (ApJ 345, 245), R_V = 3.1, its infrared
    power law x^1.61 continued beyond 3.3 um. Dust in an exponential slab
    (0.30 mag E(B-V) per kpc in the plane, scale height 0.1 kpc, to 20 kpc),
    times a log-normal patchiness per line of sight (0.15 dex); the feature
    ``EBV`` is the whole line of sight (as SFD), the star sees the part in front of it.
Gaia XP coefficients (:func:`xp_projection`)
    Photon spectrum x band response (smooth windows 330-680 nm for BP,
    635-1050 nm for RP) expressed in a pseudo-wavelength x (prism-like
    dispersion: x linear in lambda^-2 for BP, lambda^-0.5 for RP, band edges
    at x = -6, +6) and projected on 55 orthonormal functions: Hermite functions
    rotated (an SVD of a fixed library of model spectra, as Gaia optimises its
    basis, Carrasco et al. 2021, A&A 652, A86) so that coefficient 1 carries the
    flux and the next ones the main shape variations. The scale is calibrated
    on ``gaia_dr3_xp_continuous_chunk0.fits`` (median bp_1 and rp_1 of a
    G < 17.65 sample match the real ones). Not the Gaia basis: coefficients of
    real and simulated stars share scales and statistics, not meaning.
Photometry (:data:`BANDPASSES`)
    Photon-counting synthetic photometry through top-hat passbands with
    logistic edges (centre and width of each filter from the SVO Filter Profile
    Service; no filter curves are shipped or downloaded). Each band's zero point
    makes the solar model (5772 K, log g 4.438, 1 Rsun at 10 pc) reproduce the
    Sun's absolute magnitude in the survey's native system (Vega for Gaia,
    2MASS, WISE; AB otherwise; Willmer 2018, ApJS 236, 47).
Noise and missingness (:func:`magnitude_error`, :func:`xp_errors`, :data:`SURVEYS`)
    Magnitude errors sqrt(floor^2 + (0.2 10^(0.4 (m - m5)))^2) (5 sigma at m5);
    a band is missing when the noisy magnitude is fainter than m5 or brighter
    than saturation, outside the survey footprint (SkyMapper Dec < +2 deg,
    SDSS Galactic caps, Pan-STARRS1 Dec > -30 deg) or by random dropout.
    XP coefficient errors log10 sigma_n = a_n + b_n (log10 c_1 - 2.6) + N(0,
    0.13) fitted on the real chunk file. Parallax error: the Gaia science
    performance formula (Gaia Collaboration 2016, A&A 595, A1), zero point
    -0.017 mas (Lindegren et al. 2021, A&A 649, A4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import expit

from astrobatch.studies.stellar_xp.columns import N_XP

# ----------------------------------------------------------------------------------------------
# constants (cgs unless stated)
# ----------------------------------------------------------------------------------------------

H_PLANCK = 6.62607015e-27
C_LIGHT = 2.99792458e10
K_BOLTZMANN = 1.380649e-16
R_SUN_CM = 6.957e10
PC_CM = 3.0856775814913673e18
LOGG_SUN = 4.438
TEFF_SUN = 5772.0
#: AB zero point, erg/s/cm^2/Hz (3631 Jy).
F0_AB = 3.631e-20
#: Gaia DR3 Vega zero points for fluxes in e-/s (Riello et al. 2021, Table 3).
GAIA_ZP_VEGA = {"G": 25.6874, "BP": 25.3385, "RP": 24.7479}

#: Wavelength grid, nm: 1 nm steps over the Gaia range, log steps in the infrared.
WAVE_NM = np.concatenate([np.arange(300.0, 1100.0, 1.0), np.geomspace(1100.0, 5600.0, 150)])
DWAVE_NM = np.gradient(WAVE_NM)

COMPONENTS = ("thin", "thick", "halo")
COMPONENT_WEIGHTS = (0.78, 0.17, 0.05)
STAGES = ("ms", "subgiant", "rgb", "clump")
STAGE_WEIGHTS = (0.50, 0.12, 0.28, 0.10)
#: Galactic dust slab: E(B-V) per kpc in the plane, scale height (kpc), path length (kpc).
DUST_EBV_PER_KPC = 0.30
DUST_SCALE_HEIGHT_KPC = 0.10
DUST_PATH_KPC = 20.0
DUST_PATCHINESS_DEX = 0.15
R_V = 3.1
#: Parallax zero point of Gaia DR3, mas (Lindegren et al. 2021).
PARALLAX_ZERO_POINT = -0.017


# ----------------------------------------------------------------------------------------------
# populations and stellar parameters
# ----------------------------------------------------------------------------------------------


def turnoff_mass(age_gyr: np.ndarray, fe_h: np.ndarray) -> np.ndarray:
    """Main-sequence turnoff mass, Msun: (age / 10 Gyr)^-0.4 (1 + 0.06 [Fe/H]).

    Examples
    --------
    >>> round(float(turnoff_mass(10.0, 0.0)), 3)
    1.0
    """
    return np.asarray(age_gyr / 10.0) ** -0.4 * (1.0 + 0.06 * np.asarray(fe_h))


def sample_population(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw population memberships, ages and abundances (see the module docstring).

    Parameters
    ----------
    n : int
        Number of stars.
    rng : numpy.random.Generator

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
        ``component`` (int: 0 thin, 1 thick, 2 halo), ``age`` (Gyr), ``fe_h``
        (dex), ``alpha`` ([alpha/Fe], dex), ``stage`` (int: 0 main sequence,
        1 subgiant, 2 RGB, 3 red clump / horizontal branch).
    """
    comp = rng.choice(3, size=n, p=COMPONENT_WEIGHTS)
    age = np.empty(n)
    fe_h = np.empty(n)
    alpha = np.empty(n)
    t = comp == 0
    age[t] = rng.uniform(0.3, 10.0, t.sum())
    fe_h[t] = np.clip(rng.normal(-0.025 * (age[t] - 5.0), 0.2), -1.2, 0.5)
    alpha[t] = np.clip(0.02 - 0.12 * fe_h[t], -0.05, 0.2)
    k = comp == 1
    age[k] = rng.uniform(8.0, 12.5, k.sum())
    fe_h[k] = np.clip(rng.normal(-0.5, 0.25, k.sum()), -1.5, 0.2)
    alpha[k] = 0.25 - 0.2 * np.clip(fe_h[k] + 0.7, 0.0, 0.75)
    h = comp == 2
    age[h] = rng.uniform(10.5, 13.5, h.sum())
    fe_h[h] = np.clip(rng.normal(-1.5, 0.45, h.sum()), -2.8, -0.6)
    alpha[h] = 0.32
    alpha = alpha + rng.normal(0.0, 0.03, n)
    stage = rng.choice(4, size=n, p=STAGE_WEIGHTS)
    return {"component": comp, "age": age, "fe_h": fe_h, "alpha": alpha, "stage": stage}


def _zams(mass: np.ndarray, fe_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lum = 0.7 * mass**4 * 10 ** (-0.15 * fe_h)
    rad = 0.89 * mass**0.8 * (1.0 + 0.07 * fe_h)
    return lum, rad


def _teff(lum: np.ndarray, rad: np.ndarray) -> np.ndarray:
    return TEFF_SUN * (lum / rad**2) ** 0.25


def _logg(mass: np.ndarray, rad: np.ndarray) -> np.ndarray:
    return LOGG_SUN + np.log10(mass) - 2.0 * np.log10(rad)


def rgb_teff(logg: np.ndarray, fe_h: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Teff of the red giant branch, K (see the module docstring)."""
    x = logg - 2.5
    return 4700.0 + 280.0 * x - 60.0 * x**2 - 230.0 * fe_h + 150.0 * np.log10(mass)


def stellar_parameters(pop: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Mass, Teff, log g and radius of each star from its population draw.

    Parameters
    ----------
    pop : dict
        Output of :func:`sample_population`.
    rng : numpy.random.Generator

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
        ``pop``'s entries plus ``mass`` (Msun), ``teff`` (K), ``logg`` (dex,
        cgs) and ``radius`` (Rsun, = sqrt(G M / g)).
    """
    age, fe_h, stage = pop["age"], pop["fe_h"], pop["stage"]
    n = len(age)
    m_to = np.maximum(turnoff_mass(age, fe_h), 0.5)
    mass = np.empty(n)
    teff = np.empty(n)
    logg = np.empty(n)

    ms = stage == 0
    lo, hi = 0.45, m_to[ms]
    u = rng.random(ms.sum())
    a = -1.3  # inverse CDF of dN/dM ∝ M^-2.3 between lo and hi
    mass[ms] = (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)
    t_ms = 10.0 * (mass[ms] / (1.0 + 0.06 * fe_h[ms])) ** -2.5
    tau = np.clip(age[ms] / t_ms, 0.0, 1.0)
    lum, rad = _zams(mass[ms], fe_h[ms])
    lum, rad = lum * (1.0 + 0.9 * tau), rad * (1.0 + 0.5 * tau**1.5)
    teff[ms], logg[ms] = _teff(lum, rad), _logg(mass[ms], rad)

    sg = stage == 1
    mass[sg] = m_to[sg]
    lum, rad = _zams(mass[sg], fe_h[sg])
    t_to, g_to = _teff(1.9 * lum, 1.5 * rad), _logg(mass[sg], 1.5 * rad)
    s = rng.random(sg.sum())
    logg[sg] = g_to + s * (3.6 - g_to)
    teff[sg] = t_to + s * (rgb_teff(np.full(sg.sum(), 3.6), fe_h[sg], mass[sg]) - t_to)

    rg = stage == 2
    mass[rg] = m_to[rg]
    # p(log g) ∝ 10^(0.3 log g) on [0.8, 3.6] by inverse CDF
    k = 0.3 * np.log(10.0)
    u = rng.random(rg.sum())
    logg[rg] = np.log(np.exp(k * 0.8) + u * (np.exp(k * 3.6) - np.exp(k * 0.8))) / k
    teff[rg] = rgb_teff(logg[rg], fe_h[rg], mass[rg])

    rc = stage == 3
    mass[rc] = np.maximum(0.9 * m_to[rc], 0.55)
    logg[rc] = rng.normal(2.45, 0.08, rc.sum()) + 0.2 * np.log10(mass[rc])
    teff[rc] = 4750.0 - 250.0 * fe_h[rc] + rng.normal(0.0, 60.0, rc.sum())
    bhb = rc & (fe_h < -0.9)
    teff[bhb] = rng.uniform(5500.0, 9000.0, bhb.sum())
    logg[bhb] = 2.4 + 0.8 * (teff[bhb] - 5500.0) / 3500.0

    radius = np.sqrt(mass / 10 ** (logg - LOGG_SUN))
    return {**pop, "mass": mass, "teff": teff, "logg": logg, "radius": radius}


# ----------------------------------------------------------------------------------------------
# spectra
# ----------------------------------------------------------------------------------------------


def planck_flambda(wave_nm: np.ndarray, teff: np.ndarray) -> np.ndarray:
    """Black-body surface flux pi B_lambda, erg/s/cm^2/nm, shape (n, n_wave)."""
    lam = wave_nm[None, :] * 1e-7  # cm
    x = H_PLANCK * C_LIGHT / (lam * K_BOLTZMANN * np.asarray(teff)[:, None])
    return np.pi * 2.0 * H_PLANCK * C_LIGHT**2 / lam**5 / np.expm1(np.minimum(x, 700.0)) * 1e-7


def _add_line(
    tau: np.ndarray,
    wave_nm: np.ndarray,
    centre: float,
    sigma: np.ndarray | float,
    strength: np.ndarray,
) -> None:
    """tau += strength x exp(-(lambda - centre)^2 / (2 sigma^2)), in place, within 6 sigma.

    ``tau`` (n, n_wave); ``sigma`` scalar or (n, 1); ``strength`` (n, 1).
    """
    half = 6.0 * float(np.max(sigma))
    lo, hi = np.searchsorted(wave_nm, [centre - half, centre + half])
    if hi > lo:
        w = wave_nm[None, lo:hi]
        tau[:, lo:hi] += strength * np.exp(-0.5 * ((w - centre) / sigma) ** 2)


#: TiO band heads, nm (degrading to the red).
TIO_HEADS_NM = (516.7, 615.9, 705.4, 758.9, 843.2)
BALMER_NM = (656.3, 486.1, 434.0, 410.2, 397.0)


def absorption_depth(
    wave_nm: np.ndarray, teff: np.ndarray, logg: np.ndarray, fe_h: np.ndarray, alpha: np.ndarray
) -> np.ndarray:
    """Optical depth tau(lambda) of the model's absorption features, shape (n, n_wave).

    Strengths (documented approximations, not a model atmosphere): metal lines
    scale with 10^([Fe/H]) (alpha elements with 10^([Fe/H] + [alpha/Fe])) and
    strengthen in cool stars; hydrogen peaks near 9500 K; Mg b and Na D grow
    with log g, the Ca II triplet falls with it; TiO appears below 4300 K.
    Lines are Gaussian in optical depth, already broadened to about the XP
    resolution (sigma 1.5-4 nm). ``wave_nm`` must be increasing.
    """
    w = wave_nm[None, :]
    t, g, m, a = (np.asarray(v, dtype=np.float64)[:, None] for v in (teff, logg, fe_h, alpha))
    cool = np.clip((7500.0 - t) / 2500.0, 0.0, 1.6)
    hot_h = np.exp(-(((t - 9500.0) / 3000.0) ** 2))
    z_met = 10 ** (0.7 * (m + 0.4 * a))
    tau = 0.35 * z_met * cool * np.exp(-(w - 300.0) / 110.0)  # blue line blanketing
    tau += 0.5 * hot_h * (1.0 + 0.25 * (4.0 - g)) * expit(-(w - 364.6) / 3.0)  # Balmer jump
    sigma_h = 1.5 + 2.5 * hot_h * np.clip(g, 0.5, 5.0) / 4.0
    for strength, centre in zip((1.0, 0.9, 0.8, 0.7, 0.6), BALMER_NM, strict=True):
        _add_line(tau, wave_nm, centre, sigma_h, strength * (0.6 * hot_h + 0.08))
    za_half = 10 ** (0.5 * (m + a))
    for centre in (393.4, 396.8):  # Ca II H and K
        _add_line(tau, wave_nm, centre, 2.5, 1.2 * za_half * cool)
    _add_line(tau, wave_nm, 430.5, 2.0, 0.3 * 10 ** (0.7 * m) * cool)  # G band (CH)
    _add_line(tau, wave_nm, 517.5, 2.5, 0.35 * 10 ** (0.6 * (m + a)) * cool * (1 + 0.25 * (g - 3)))
    _add_line(tau, wave_nm, 589.3, 1.5, 0.25 * 10 ** (0.6 * m) * cool * (1 + 0.3 * (g - 3)))
    cat = 0.3 * za_half * (0.4 + 0.6 * cool) * np.clip(1 + 0.25 * (3 - g), 0.3, None)
    for centre in (849.8, 854.2, 866.2):  # Ca II triplet
        _add_line(tau, wave_nm, centre, 1.5, cat)
    tio = np.clip((4300.0 - t) / 700.0, 0.0, None) ** 1.5 * 10 ** (0.3 * m)
    if np.any(tio > 0):
        for head in TIO_HEADS_NM:
            lo, hi = np.searchsorted(wave_nm, [head - 10.0, head + 200.0])
            ws = wave_nm[None, lo:hi]
            edge = expit(ws - head) * np.exp(-np.clip(ws - head, 0, None) / 25.0)
            tau[:, lo:hi] += 0.6 * tio * edge
    return np.clip(tau, 0.0, None, out=tau)


def model_spectrum(stars: dict[str, np.ndarray], wave_nm: np.ndarray = WAVE_NM) -> np.ndarray:
    """Unreddened flux F_lambda at 10 pc, erg/s/cm^2/nm, shape (n, n_wave), float64.

    Parameters
    ----------
    stars : dict
        ``teff`` (K), ``logg`` (dex), ``fe_h``, ``alpha`` (dex), ``radius`` (Rsun),
        each shape (n,).
    wave_nm : numpy.ndarray, shape (n_wave,)
    """
    surf = planck_flambda(wave_nm, stars["teff"])
    tau = absorption_depth(wave_nm, stars["teff"], stars["logg"], stars["fe_h"], stars["alpha"])
    dilution = (np.asarray(stars["radius"]) * R_SUN_CM / (10.0 * PC_CM)) ** 2
    return surf * np.exp(-tau) * dilution[:, None]


# ----------------------------------------------------------------------------------------------
# extinction
# ----------------------------------------------------------------------------------------------


def ccm89(wave_nm: np.ndarray, r_v: float = R_V) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis 1989 (ApJ 345, 245).

    Infrared (x < 1.1 um^-1) a = 0.574 x^1.61, b = -0.527 x^1.61 (continued
    below x = 0.3); optical 1.1-3.3 and ultraviolet 3.3-8 um^-1 polynomials.

    Parameters
    ----------
    wave_nm : numpy.ndarray, shape (n_wave,)
        Wavelengths, nm (125 nm to 50 um).
    r_v : float

    Returns
    -------
    numpy.ndarray, shape (n_wave,)

    Examples
    --------
    >>> round(float(ccm89(np.array([549.0]))[0]), 2)
    1.0
    """
    x = 1000.0 / np.asarray(wave_nm, dtype=np.float64)  # um^-1
    a = np.empty_like(x)
    b = np.empty_like(x)
    ir = x < 1.1
    a[ir], b[ir] = 0.574 * x[ir] ** 1.61, -0.527 * x[ir] ** 1.61
    op = (x >= 1.1) & (x < 3.3)
    y = x[op] - 1.82
    a[op] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1], y)
    b[op] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0], y)
    uv = x >= 3.3
    xu = x[uv]
    a[uv] = 1.752 - 0.316 * xu - 0.104 / ((xu - 4.67) ** 2 + 0.341)
    b[uv] = -3.090 + 1.825 * xu + 1.206 / ((xu - 4.62) ** 2 + 0.263)
    return a + b / r_v


@lru_cache(maxsize=1)
def ccm_grid() -> np.ndarray:
    """:func:`ccm89` (R_V = 3.1) on :data:`WAVE_NM`, cached; shape (n_wave,)."""
    return ccm89(WAVE_NM)


def dust_ebv(
    distance_kpc: np.ndarray, b_deg: np.ndarray, patch: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """E(B-V) in front of a star and along the whole line of sight (exponential dust slab).

    E(d) = k h / |sin b| (1 - exp(-d |sin b| / h)), k = 0.30 mag/kpc, h = 0.1
    kpc; the line of sight ends at 20 kpc. Both are multiplied by ``patch``.

    Returns
    -------
    ebv_star, ebv_los : numpy.ndarray, each shape (n,), mag
    """
    s = np.maximum(np.abs(np.sin(np.radians(b_deg))), 1e-4)
    h = DUST_SCALE_HEIGHT_KPC

    def column(d):
        return DUST_EBV_PER_KPC * h / s * -np.expm1(-d * s / h)

    return column(distance_kpc) * patch, column(DUST_PATH_KPC) * patch


# ----------------------------------------------------------------------------------------------
# photometry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bandpass:
    """A top-hat passband with logistic edges.

    Attributes
    ----------
    lo, hi : float
        Half-transmission edges, nm.
    edge : float
        Logistic edge width, nm.
    qe_red : bool
        Multiply by a CCD quantum efficiency falling linearly from 1 at 650 nm
        to 0.4 at 1050 nm (Gaia bands).
    """

    lo: float
    hi: float
    edge: float
    qe_red: bool = False

    def transmission(self, wave_nm: np.ndarray) -> np.ndarray:
        """Transmission on ``wave_nm``, shape (n_wave,), in [0, 1]."""
        t = expit((wave_nm - self.lo) / self.edge) * expit((self.hi - wave_nm) / self.edge)
        if self.qe_red:
            t = t * (1.0 - 0.6 * np.clip((wave_nm - 650.0) / 400.0, 0.0, 1.0))
        return t


def _tophat(centre: float, width: float) -> Bandpass:
    return Bandpass(centre - width / 2, centre + width / 2, 0.04 * width)


#: Passbands of every magnitude feature: centre / effective width (nm) from the SVO Filter
#: Profile Service; Gaia windows from the XP wavelength ranges.
BANDPASSES: dict[str, Bandpass] = {
    "W1": _tophat(3353.0, 663.0),
    "W2": _tophat(4603.0, 1042.0),
    "G": Bandpass(335.0, 1045.0, 8.0, True),
    "BP": Bandpass(330.0, 680.0, 6.0, True),
    "RP": Bandpass(635.0, 1050.0, 8.0, True),
    "U_SMSS": _tophat(349.0, 42.0),
    "V_SMSS": _tophat(384.0, 31.0),
    "G_SMSS": _tophat(501.0, 156.0),
    "R_SMSS": _tophat(607.0, 160.0),
    "I_SMSS": _tophat(773.0, 139.0),
    "Z_SMSS": _tophat(913.0, 84.0),
    "U_SDSS": _tophat(355.0, 57.0),
    "G_SDSS": _tophat(469.0, 128.0),
    "R_SDSS": _tophat(617.0, 115.0),
    "I_SDSS": _tophat(748.0, 123.0),
    "Z_SDSS": _tophat(893.0, 94.0),
    "G_PS1": _tophat(481.0, 115.0),
    "R_PS1": _tophat(617.0, 139.0),
    "I_PS1": _tophat(752.0, 129.0),
    "Z_PS1": _tophat(866.0, 104.0),
    "Y_PS1": _tophat(962.0, 83.0),
    "J": _tophat(1235.0, 162.0),
    "H": _tophat(1662.0, 251.0),
    "KS": _tophat(2159.0, 262.0),
}
BAND_NAMES: tuple[str, ...] = tuple(BANDPASSES)

#: Absolute magnitudes of the Sun in each band's native system (Vega: Gaia, 2MASS, WISE; AB:
#: SkyMapper, SDSS, PS1). Willmer 2018 (ApJS 236, 47) for SDSS, PS1, 2MASS, WISE; Casagrande
#: & VandenBerg 2018 (MNRAS 479, L102) for Gaia; SkyMapper interpolated from the SDSS/PS1
#: values at the SkyMapper wavelengths (u, v from Willmer's u and the Sun's 380 nm flux).
SUN_ABS_MAG: dict[str, float] = {
    "W1": 3.26, "W2": 3.28,
    "G": 4.67, "BP": 4.98, "RP": 4.16,
    "U_SMSS": 6.25, "V_SMSS": 5.95, "G_SMSS": 4.95, "R_SMSS": 4.63, "I_SMSS": 4.52,
    "Z_SMSS": 4.51,
    "U_SDSS": 6.39, "G_SDSS": 5.11, "R_SDSS": 4.65, "I_SDSS": 4.53, "Z_SDSS": 4.50,
    "G_PS1": 5.03, "R_PS1": 4.64, "I_PS1": 4.52, "Z_PS1": 4.51, "Y_PS1": 4.50,
    "J": 3.67, "H": 3.32, "KS": 3.27,
}  # fmt: skip
#: The solar model that fixes the zero points (1 Rsun, at 10 pc).
SUN = {"teff": 5772.0, "logg": LOGG_SUN, "fe_h": 0.0, "alpha": 0.0, "radius": 1.0}


@lru_cache(maxsize=1)
def photometry_weights() -> np.ndarray:
    """Photon-counting weights, shape (n_wave, n_bands): ``flux @ W`` = flux ratio to AB.

    For F_lambda in erg/s/cm^2/nm, m_AB = -2.5 log10(sum_j F_j T_j lambda_j dlambda_j /
    sum_j F_AB,j T_j lambda_j dlambda_j), F_AB = 3631 Jy c / lambda^2.
    """
    lam_cm = WAVE_NM * 1e-7
    f_ab = F0_AB * C_LIGHT / lam_cm**2 * 1e-7  # erg/s/cm^2/nm
    cols = []
    for bp in BANDPASSES.values():
        w = bp.transmission(WAVE_NM) * WAVE_NM * DWAVE_NM
        cols.append(w / np.sum(f_ab * w))
    return np.stack(cols, axis=1)


def _ab_magnitudes(flux: np.ndarray) -> np.ndarray:
    return -2.5 * np.log10(np.maximum(flux @ photometry_weights(), 1e-300))


@lru_cache(maxsize=1)
def band_zero_points() -> np.ndarray:
    """m_AB(solar model) - M_sun per band, shape (n_bands,): subtracted from synthetic AB mags.

    Fixing each band on the Sun absorbs the AB - Vega offsets and, to first
    order, the differences between these approximate passbands and the real ones.
    """
    sun = {k: np.array([v]) for k, v in SUN.items()}
    m_ab = _ab_magnitudes(model_spectrum(sun))[0]
    return m_ab - np.array([SUN_ABS_MAG[b] for b in BAND_NAMES])


def synthetic_magnitudes(flux: np.ndarray) -> dict[str, np.ndarray]:
    """Native-system magnitudes of spectra (Vega for Gaia, 2MASS, WISE; AB otherwise).

    Parameters
    ----------
    flux : numpy.ndarray, shape (n, n_wave)
        F_lambda, erg/s/cm^2/nm, on :data:`WAVE_NM`.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n,)
        One entry per :data:`BAND_NAMES`; the solar model at 10 pc gives
        :data:`SUN_ABS_MAG`.
    """
    m = _ab_magnitudes(flux) - band_zero_points()[None, :]
    return {b: m[:, i] for i, b in enumerate(BAND_NAMES)}


# ----------------------------------------------------------------------------------------------
# XP basis
# ----------------------------------------------------------------------------------------------

XP_EDGE = 6.0
XP_RANGES_NM = {"bp": (330.0, 680.0), "rp": (635.0, 1050.0)}
XP_DISPERSION_POWER = {"bp": 2.0, "rp": 0.5}
#: Scale of the coefficients, calibrated on gaia_dr3_xp_continuous_chunk0.fits (see
#: :func:`xp_coefficients`); dimensionless, multiplies the band flux in e-/s.
XP_SCALE = {"bp": 0.447, "rp": 0.441}
#: Coefficients (0-based) whose sign is flipped so that their median has the sign of the real
#: median in gaia_dr3_xp_continuous_chunk0.fits (bp_2, bp_3, rp_2; the others are noise-like).
XP_SIGN_FLIPS = {"bp": (1, 2), "rp": (1,)}


def pseudo_wavelength(wave_nm: np.ndarray, band: str) -> np.ndarray:
    """Pseudo-wavelength x(lambda) of a band: A - B lambda^-p, band edges at x = -6, +6."""
    lo, hi = XP_RANGES_NM[band]
    p = XP_DISPERSION_POWER[band]
    b = 2 * XP_EDGE / (lo**-p - hi**-p)
    a = -XP_EDGE + b * lo**-p
    return a - b * np.asarray(wave_nm, dtype=np.float64) ** -p


def hermite_functions(x: np.ndarray, n: int = N_XP) -> np.ndarray:
    """Orthonormal Hermite functions phi_0..phi_{n-1} at ``x``, shape (len(x), n).

    phi_0 = pi^-1/4 exp(-x^2/2), phi_1 = sqrt(2) x phi_0,
    phi_{k+1} = sqrt(2/(k+1)) x phi_k - sqrt(k/(k+1)) phi_{k-1}.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((len(x), n))
    out[:, 0] = np.pi**-0.25 * np.exp(-0.5 * x**2)
    if n > 1:
        out[:, 1] = np.sqrt(2.0) * x * out[:, 0]
    for k in range(1, n - 1):
        out[:, k + 1] = (
            np.sqrt(2.0 / (k + 1)) * x * out[:, k] - np.sqrt(k / (k + 1)) * out[:, k - 1]
        )
    return out


def _band_weights(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Hermite projection (n_wave, 55) and photon-count weights (n_wave,) of one band."""
    resp = BANDPASSES[band.upper()].transmission(WAVE_NM)  # the BP / RP passband
    photon = resp * WAVE_NM * DWAVE_NM  # photons ∝ F_lambda lambda
    herm = hermite_functions(pseudo_wavelength(WAVE_NM, band)) * photon[:, None]
    return herm, photon


@lru_cache(maxsize=1)
def _library_flux(n: int = 1500, seed: int = 20240) -> np.ndarray:
    """Spectra of a fixed library of stars (E(B-V) up to ~1.8) defining the XP basis rotation."""
    rng = np.random.default_rng(seed)
    stars = stellar_parameters(sample_population(n, rng), rng)
    ebv = rng.uniform(0.0, 1.5, n) ** 1.5
    return model_spectrum(stars) * 10 ** (-0.4 * R_V * ebv[:, None] * ccm_grid()[None, :])


@lru_cache(maxsize=2)
def xp_projection(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Projection of F_lambda spectra onto the simulator's XP basis of one band.

    The basis is the 55 Hermite functions in pseudo-wavelength, rotated by the
    right singular vectors of the flux-normalised Hermite coefficients of a
    fixed library of reddened model spectra (:func:`_library_flux`); the sign of
    each rotated function makes its library-mean coefficient non-negative, except
    for :data:`XP_SIGN_FLIPS` (negative, as the real median of those coefficients).

    Parameters
    ----------
    band : {"bp", "rp"}

    Returns
    -------
    proj : numpy.ndarray, shape (n_wave, 55)
        ``flux @ proj`` are the unscaled coefficients.
    photon : numpy.ndarray, shape (n_wave,)
        ``flux @ photon`` is the band's photon flux (same units).
    """
    herm, photon = _band_weights(band)
    flux = _library_flux()
    h = (flux @ herm) / (flux @ photon)[:, None]
    # right singular vectors of h = eigenvectors of h^T h, by decreasing eigenvalue
    _, vecs = np.linalg.eigh(h.T @ h)
    rot = vecs[:, ::-1]
    sign = np.sign(np.mean(h @ rot, axis=0))
    sign[sign == 0] = 1.0
    sign[list(XP_SIGN_FLIPS[band])] *= -1.0
    rot = rot * sign[None, :]
    return herm @ rot, photon


def xp_coefficients(flux: np.ndarray, band_mag_vega: np.ndarray, band: str) -> np.ndarray:
    """XP coefficients of observed spectra, e-/s in the basis normalisation.

    c = XP_SCALE[band] x F_e x (flux @ proj) / (flux @ photon), with F_e =
    10^(-0.4 (m - ZP)) the band flux in e-/s from the Vega magnitude and the
    Gaia DR3 zero point (Riello et al. 2021).

    Parameters
    ----------
    flux : numpy.ndarray, shape (n, n_wave)
        Observed F_lambda (reddened, at the star's distance).
    band_mag_vega : numpy.ndarray, shape (n,)
        Noise-free BP or RP magnitude of the same spectra.
    band : {"bp", "rp"}

    Returns
    -------
    numpy.ndarray, shape (n, 55), float64
    """
    proj, photon = xp_projection(band)
    f_e = 10 ** (-0.4 * (band_mag_vega - GAIA_ZP_VEGA[band.upper()]))
    shape = (flux @ proj) / (flux @ photon)[:, None]
    return XP_SCALE[band] * f_e[:, None] * shape


#: Knots (coefficient index 0..54) of the XP error model log10 sigma_n = a_n + b_n (log10 c_1
#: - 2.6), read off least-squares fits per coefficient on gaia_dr3_xp_continuous_chunk0.fits.
XP_ERROR_KNOTS = {
    "bp": ((0, 15, 30, 45, 50, 54), (0.05, -0.05, -0.28, -0.45, -0.66, -1.36),
           (0, 25, 30, 54), (0.59, 0.59, 0.52, 0.42)),
    "rp": ((0, 20, 30, 40, 50, 54), (-0.12, -0.14, -0.22, -0.42, -0.62, -1.32),
           (0, 30, 40, 54), (0.54, 0.54, 0.46, 0.40)),
}  # fmt: skip
XP_ERROR_SCATTER_DEX = 0.13


def xp_errors(c1: np.ndarray, band: str, rng: np.random.Generator) -> np.ndarray:
    """Coefficient errors of stars with first coefficient ``c1`` (see the module docstring).

    Parameters
    ----------
    c1 : numpy.ndarray, shape (n,)
        First coefficient (> 0), e-/s.
    band : {"bp", "rp"}
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (n, 55), float64, > 0
    """
    ka, va, kb, vb = XP_ERROR_KNOTS[band]
    idx = np.arange(N_XP)
    a = np.interp(idx, ka, va)
    b = np.interp(idx, kb, vb)
    logc = np.log10(np.maximum(c1, 1.0))[:, None]
    scatter = rng.normal(0.0, XP_ERROR_SCATTER_DEX, (len(c1), 1))  # per star, all coefficients
    return 10 ** (a[None, :] + b[None, :] * (logc - 2.6) + scatter)


# ----------------------------------------------------------------------------------------------
# noise, footprints
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Survey:
    """Depth, saturation and error floor of one survey's bands.

    Attributes
    ----------
    bands : tuple of str
    m5 : tuple of float
        5-sigma limiting magnitude per band (native system).
    saturation : float
        Brighter magnitudes are missing.
    floor : float
        Systematic error floor, mag.
    dropout : float
        Random missing fraction.
    """

    bands: tuple[str, ...]
    m5: tuple[float, ...]
    saturation: float
    floor: float
    dropout: float = 0.01


SURVEYS: dict[str, Survey] = {
    "wise": Survey(("W1", "W2"), (17.4, 16.5), 8.0, 0.015, 0.03),
    "smss": Survey(tuple(f"{b}_SMSS" for b in "UVGRIZ"), (19.0, 19.3, 21.5, 21.3, 20.8, 20.0),
                   9.0, 0.01),
    "sdss": Survey(tuple(f"{b}_SDSS" for b in "UGRIZ"), (22.0, 22.2, 22.2, 21.3, 20.5), 14.0,
                   0.01),
    "ps1": Survey(tuple(f"{b}_PS1" for b in "GRIZY"), (22.0, 21.8, 21.5, 20.9, 19.7), 13.5,
                  0.008),
    "2mass": Survey(("J", "H", "KS"), (16.5, 15.8, 15.3), 4.0, 0.02),
}  # fmt: skip
#: Gaia mean photometry: (floor, m5) so that sigma(G=17) ~ 2 mmag, sigma(BP=17) ~ 10 mmag.
GAIA_ERRORS = {"G": (0.0003, 22.0), "BP": (0.001, 20.25), "RP": (0.001, 20.5)}


def magnitude_error(mag: np.ndarray, floor: float, m5: float) -> np.ndarray:
    """sigma(m) = sqrt(floor^2 + (0.2 x 10^(0.4 (m - m5)))^2), mag (0.2 at m5, i.e. S/N 5).

    Examples
    --------
    >>> round(float(magnitude_error(np.array(20.0), 0.0, 20.0)), 3)
    0.2
    """
    return np.sqrt(floor**2 + (0.2 * 10 ** (0.4 * (np.asarray(mag) - m5))) ** 2)


def in_footprint(survey: str, ra: np.ndarray, dec: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each position is inside a survey's (approximate) footprint.

    SkyMapper: Dec < +2 deg; SDSS: b > 20 deg and -10 < Dec < 70 deg (north
    Galactic cap), b < -25 deg and -10 < Dec < 35 deg (south cap) or |Dec| < 1.25
    deg (Stripe 82); Pan-STARRS1: Dec > -30 deg; 2MASS and WISE: all sky.
    """
    if survey == "smss":
        return dec < 2.0
    if survey == "sdss":
        north = (b > 20.0) & (dec > -10.0) & (dec < 70.0)
        south = (b < -25.0) & (dec > -10.0) & (dec < 35.0)
        return north | south | (np.abs(dec) < 1.25)
    if survey == "ps1":
        return dec > -30.0
    return np.ones(np.shape(ra), dtype=bool)


def parallax_error(g_mag: np.ndarray) -> np.ndarray:
    """Gaia parallax error, mas: sqrt(40 + 800 z + 30 z^2) uas, z = 10^(0.4 (max(G, 13) - 15)).

    Gaia Collaboration 2016 (A&A 595, A1), science performance; close to DR3 values.

    Examples
    --------
    >>> round(float(parallax_error(np.array(15.0))), 4)
    0.0295
    """
    z = 10 ** (0.4 * (np.maximum(np.asarray(g_mag), 13.0) - 15.0))
    return np.sqrt(40.0 + 800.0 * z + 30.0 * z**2) / 1000.0
