"""The science of the synthetic cluster_finder sky: cluster members, red sequence, field, noise.

Pure functions (NumPy, plus ``astropy.cosmology`` for distances) used by
:mod:`astrobatch.studies.cluster_finder.simulate`. Every relation is approximate and says
where it comes from and where it simplifies the real SDSS / redMaPPer sky.

Units and conventions
---------------------
- Cosmology: flat ΛCDM, ``H0 = 70 km/s/Mpc``, ``Om0 = 0.3`` by default
  (:func:`flat_lcdm`). redMaPPer radii are in h^-1 Mpc (``h = H0 / 100``); they are
  converted to physical (proper) Mpc by dividing by ``h`` explicitly
  (:func:`angular_radius_arcmin`).
- Magnitudes are SDSS AB ``ugriz`` model magnitudes; arrays of magnitudes have shape
  ``(N, 5)`` in the order of :data:`BANDS`.
- Fluxes follow ``flux = 10**(-0.4 (m - zero_point))``; with the SDSS zero point 22.5 the
  unit is the nanomaggy.

What is simulated (:mod:`.simulate` puts it together)
-----------------------------------------------------
Members
    A cluster of richness λ at redshift z has a BCG at its centre and
    ``1 + Poisson(λ - 1)`` true red-sequence members brighter than 0.2 L* inside the
    richness radius ``R_λ = (λ / 100)**0.2 h^-1 Mpc`` (Rykoff et al. 2014, ApJ 785, 104,
    arXiv:1303.3562), so that λ is the mean number of bright red members, as redMaPPer
    defines it. They are drawn with membership probabilities (:func:`draw_candidates`),
    at projected NFW radii (:func:`sample_nfw_radii`), with Schechter luminosities
    (:func:`schechter_luminosities`) about ``m*(z)`` (:func:`mstar_i`) and red-sequence
    colours (:func:`red_sequence_colours`).
Field
    Magnitudes bootstrapped (whole ugriz rows with their errors) from the real SDSS DR8
    galaxy table (:func:`valid_magnitude_rows`, :func:`bootstrap_rows`); positions
    uniform (drawn by the simulator).
Errors and noise
    Catalogue magnitude errors from a two-term SDSS depth model fitted to the real DR8
    galaxy table (:func:`magnitude_errors`); image sky noise per pixel from the SDSS
    point-source depths (:func:`sky_sigma_per_pixel`).

Simplifications versus the real redMaPPer sky: no blue cluster members, no members fainter
than 0.2 L* (they are not in the redMaPPer member catalogues either), no miscentring (the
BCG sits at the catalogue position), membership probabilities are drawn (not computed by
the redMaPPer likelihood) but calibrated by construction, no Galactic extinction, no stars.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from astrobatch.errors import InputError

__all__ = [
    "BANDS",
    "BCG_DELTA_MAG",
    "GALAXY_DEPTH",
    "LUMINOSITY_CUT",
    "MSTAR_I_ABS",
    "POINT_SOURCE_DEPTH",
    "RED_SEQUENCE_COLOURS",
    "RED_SEQUENCE_Z",
    "angular_radius_arcmin",
    "bcg_luminosity",
    "bootstrap_rows",
    "draw_candidates",
    "early_type_probability",
    "field_half_light_arcsec",
    "flat_lcdm",
    "fluxes",
    "k_correction_i",
    "magnitude_errors",
    "member_half_light_arcsec",
    "member_magnitudes",
    "mstar_i",
    "nfw_projected_mass",
    "observe_magnitudes",
    "red_sequence_colours",
    "richness_error",
    "sample_nfw_radii",
    "schechter_luminosities",
    "sky_sigma_per_pixel",
    "spherical_offset",
    "theta_i",
    "theta_r",
    "uniform_disc_radii",
    "valid_magnitude_rows",
    "velocity_dispersion_kms",
    "z_lambda_error",
]

#: SDSS bands, the order of every (N, 5) magnitude array.
BANDS = ("u", "g", "r", "i", "z")
#: Speed of light, km/s.
C_KMS = 299_792.458
#: redMaPPer luminosity cut of the members, in L* (Rykoff et al. 2014: 0.2 L*).
LUMINOSITY_CUT = 0.2

# ----------------------------------------------------------------------------- cosmology


@lru_cache(maxsize=8)
def flat_lcdm(h0: float = 70.0, om0: float = 0.3):
    """The flat ΛCDM cosmology of the simulation (cached).

    Parameters
    ----------
    h0 : float
        Hubble constant, km/s/Mpc (> 0).
    om0 : float
        Matter density today, in units of the critical density (0 < om0 <= 1).

    Returns
    -------
    astropy.cosmology.FlatLambdaCDM
        Without radiation (``Tcmb0 = 0``), astropy's analytic distance path.

    Raises
    ------
    InputError
        A non-positive ``h0`` or ``om0`` outside (0, 1].
    """
    from astropy.cosmology import FlatLambdaCDM

    if not (np.isfinite(h0) and h0 > 0):
        raise InputError(f"expected H0 > 0 km/s/Mpc, got {h0}", key="h0")
    if not (0 < om0 <= 1):
        raise InputError(f"expected 0 < Om0 <= 1, got {om0}", key="om0")
    return FlatLambdaCDM(H0=float(h0), Om0=float(om0))


def _redshifts(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if not np.all(np.isfinite(z) & (z > 0)):
        raise InputError("expected finite redshifts > 0", key="z")
    return z


def angular_radius_arcmin(radius_hinv_mpc, z, h0: float = 70.0, om0: float = 0.3) -> np.ndarray:
    """Angle subtended by a physical radius given in h^-1 Mpc at redshift z.

    ``theta = (R / h) / D_A(z)`` with ``h = H0 / 100`` and ``D_A`` the angular-diameter
    distance of :func:`flat_lcdm` (``astropy.cosmology``); R is a proper (physical) radius,
    as redMaPPer's ``R_λ`` is.

    Parameters
    ----------
    radius_hinv_mpc : array_like, float, shape (...)
        Radius, h^-1 Mpc (e.g. ``R_λ = (λ / 100)**0.2``).
    z : array_like, float, shape (...)
        Redshift (> 0), broadcast with the radius.
    h0, om0 : float
        Cosmology (:func:`flat_lcdm`).

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        Arcmin.

    Raises
    ------
    InputError
        A redshift that is not finite and > 0.

    Examples
    --------
    >>> round(float(angular_radius_arcmin(1.0, 0.1)), 2)  # 1 h^-1 Mpc = 1.43 Mpc at z 0.1
    12.91
    """
    import astropy.units as u

    z = _redshifts(z)
    cosmo = flat_lcdm(h0, om0)
    d_a = np.asarray(cosmo.angular_diameter_distance(z).to_value(u.Mpc), dtype=np.float64)
    r_mpc = np.asarray(radius_hinv_mpc, dtype=np.float64) / (h0 / 100.0)
    return np.degrees(r_mpc / d_a) * 60.0


def spherical_offset(ra, dec, position_angle_deg, separation_deg) -> tuple[np.ndarray, np.ndarray]:
    """Positions at a given separation and position angle from (ra, dec), on the sphere.

    The destination on a great circle (the direct geodesic problem on the unit sphere):
    ``sin d2 = sin d cos s + cos d sin s cos pa``, ``ra2 = ra + atan2(sin pa sin s cos d,
    cos s - sin d sin d2)``; the position angle is measured from north through east.

    Parameters
    ----------
    ra, dec : array_like, float, shape (...)
        Start positions, deg.
    position_angle_deg : array_like, float, shape (...)
        Position angle east of north, deg.
    separation_deg : array_like, float, shape (...)
        Angular separation, deg.

    Returns
    -------
    ra, dec : numpy.ndarray, float64, shape (...)
        Deg, ``ra`` in [0, 360).

    Examples
    --------
    >>> ra, dec = spherical_offset(10.0, 0.0, 90.0, 1.0)  # 1 deg due east on the equator
    >>> round(float(ra), 9), round(float(dec), 9)
    (11.0, 0.0)
    """
    r0, d0 = np.radians(ra), np.radians(dec)
    pa, s = np.radians(position_angle_deg), np.radians(separation_deg)
    sin_d = np.sin(d0) * np.cos(s) + np.cos(d0) * np.sin(s) * np.cos(pa)
    d2 = np.arcsin(np.clip(sin_d, -1.0, 1.0))
    dra = np.arctan2(np.sin(pa) * np.sin(s) * np.cos(d0), np.cos(s) - np.sin(d0) * sin_d)
    return np.mod(np.degrees(r0 + dra), 360.0), np.degrees(d2)


# ----------------------------------------------------------------------------------- NFW


def nfw_projected_mass(x) -> np.ndarray:
    """Projected NFW mass inside ``x = R / r_s``, in units of ``4 π ρ_s r_s^3``.

    ``g(x) = ln(x / 2) + arccosh(1 / x) / sqrt(1 - x^2)`` for ``x < 1``,
    ``ln(x / 2) + arccos(1 / x) / sqrt(x^2 - 1)`` for ``x > 1`` and ``1 - ln 2`` at
    ``x = 1`` (Bartelmann 1996, A&A 313, 697, arXiv:astro-ph/9602053; Golse & Kneib 2002,
    A&A 390, 821, arXiv:astro-ph/0112138); below ``x = 1e-3`` the series
    ``(x^2 / 2) (ln(2 / x) - 1 / 2)`` avoids the cancellation of the two logarithms.

    Parameters
    ----------
    x : array_like, float, shape (...)
        Projected radius over the scale radius (>= 0).

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        ``g(x)``, increasing from ``g(0) = 0``.

    Examples
    --------
    >>> [round(float(v), 6) for v in nfw_projected_mass([0.0, 1.0, 3.0])]
    [0.0, 0.306853, 0.840675]
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    tiny = (x > 0) & (x < 1e-3)
    lo = (x >= 1e-3) & (x < 1.0 - 1e-6)
    hi = x > 1.0 + 1e-6
    one = ~tiny & ~lo & ~hi & (x > 0)
    xt = x[tiny]
    out[tiny] = 0.5 * xt**2 * (np.log(2.0 / xt) - 0.5)
    xl = x[lo]
    out[lo] = np.log(xl / 2.0) + np.arccosh(1.0 / xl) / np.sqrt(1.0 - xl**2)
    xh = x[hi]
    out[hi] = np.log(xh / 2.0) + np.arccos(1.0 / xh) / np.sqrt(xh**2 - 1.0)
    out[one] = 1.0 - np.log(2.0)
    return out


def sample_nfw_radii(
    n: int, r_max, concentration: float = 3.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Projected radii drawn from an NFW profile truncated at ``r_max`` (inverse CDF).

    The scale radius is ``r_s = r_max / concentration`` and the cumulative distribution of
    the projected radius is ``g(R / r_s) / g(c)`` (:func:`nfw_projected_mass`), inverted by
    interpolation on 4097 radii (geometric below 1e-6 r_max). Projection is along the line
    of sight of an untruncated NFW cylinder, cut at ``r_max`` on the sky (redMaPPer counts
    members inside ``R_λ`` in projection). redMaPPer's own radial filter is a projected
    NFW with ``r_s = 0.15 h^-1 Mpc`` (Rykoff et al. 2014), i.e. c ≈ 6-7 at λ ≈ 20-100;
    the default c = 3 is a less concentrated choice.

    Parameters
    ----------
    n : int
        Number of radii (>= 0).
    r_max : float or array_like, shape (n,)
        Truncation radius (any unit; the result is in the same unit), > 0.
    concentration : float
        ``r_max / r_s`` (> 0).
    rng : numpy.random.Generator, optional
        Random generator (a fresh default one when None).

    Returns
    -------
    numpy.ndarray, float64, shape (n,)
        Radii in ``[0, r_max]``.

    Raises
    ------
    InputError
        ``n < 0``, a non-positive concentration or ``r_max``.

    Examples
    --------
    >>> r = sample_nfw_radii(1000, 2.0, rng=np.random.default_rng(0))
    >>> bool(r.min() >= 0 and r.max() <= 2.0)
    True
    """
    if n < 0:
        raise InputError(f"expected n >= 0, got {n}", key="n")
    if not (np.isfinite(concentration) and concentration > 0):
        raise InputError(f"expected concentration > 0, got {concentration}", key="concentration")
    r_max = np.asarray(r_max, dtype=np.float64)
    if not np.all(np.isfinite(r_max) & (r_max > 0)):
        raise InputError("expected r_max > 0", key="r_max")
    rng = np.random.default_rng() if rng is None else rng
    t = np.concatenate([[0.0], np.geomspace(1e-6, 1.0, 4096)])
    cdf = nfw_projected_mass(concentration * t) / nfw_projected_mass(concentration)
    return np.interp(rng.random(n), cdf, t) * r_max


def uniform_disc_radii(n: int, r_max, rng: np.random.Generator) -> np.ndarray:
    """Radii of points uniform in a disc of radius ``r_max`` (``r = r_max sqrt(u)``).

    Parameters
    ----------
    n : int
        Number of radii.
    r_max : float or array_like, shape (n,)
        Disc radius (any unit).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, float64, shape (n,)
        Radii in ``[0, r_max]``, same unit.
    """
    return np.asarray(r_max, dtype=np.float64) * np.sqrt(rng.random(n))


# ---------------------------------------------------------------------------- membership

#: Beta(a, b) distribution of the membership probabilities P of redMaPPer candidates
#: (mean a / (a + b) = 0.8; approximate, U-shaped towards P = 1 as the real catalogues).
P_BETA = (2.0, 0.5)


def draw_candidates(
    richness: float, rng: np.random.Generator, p_beta: tuple[float, float] = P_BETA
) -> tuple[np.ndarray, np.ndarray]:
    """Membership probabilities of a cluster's candidates and which ones are true members.

    Candidate 0 is the BCG (``P = 1``, a member). The others number
    ``Poisson((λ - 1) / <P>)``; each has ``P ~ Beta(a, b)`` (``<P> = a / (a + b)``) and is
    a true member with probability P. Thinning a Poisson count by independent Bernoulli
    draws keeps it Poisson, so the number of true members is ``1 + Poisson(λ - 1)`` (mean
    λ: redMaPPer's richness is the expected number of red members brighter than 0.2 L*
    inside ``R_λ``), the probabilities are calibrated by construction, and the expected
    sum of P is λ (redMaPPer's ``λ = Σ P``). The non-members are projected interlopers
    (red-sequence-like galaxies at other redshifts).

    Parameters
    ----------
    richness : float
        λ (>= 1; smaller values are treated as 1: a BCG alone).
    rng : numpy.random.Generator
    p_beta : tuple of float
        ``(a, b)`` of the Beta distribution of P (both > 0).

    Returns
    -------
    p : numpy.ndarray, float64, shape (n,)
        Membership probabilities in [0, 1]; ``p[0] = 1`` (the BCG).
    is_member : numpy.ndarray, bool, shape (n,)
        Truth; ``is_member[0]`` is True.

    Examples
    --------
    >>> p, m = draw_candidates(30.0, np.random.default_rng(1))
    >>> bool(p[0] == 1.0 and m[0]), p.shape == m.shape
    (True, True)
    """
    a, b = p_beta
    mean = a / (a + b)
    n = int(rng.poisson(max(float(richness) - 1.0, 0.0) / mean))
    p = rng.beta(a, b, n)
    member = rng.random(n) < p
    return np.concatenate([[1.0], p]), np.concatenate([[True], member])


def theta_r(r, r_lambda, width: float = 0.05) -> np.ndarray:
    """redMaPPer-like radial weight: a smoothed top hat at ``R_λ``.

    ``θ_R = 0.5 erfc((R - R_λ) / (sqrt(2) w R_λ))`` (the redMaPPer weight is a top hat
    smoothed by the radius uncertainty; here a fixed fractional width ``w``).

    Parameters
    ----------
    r : array_like, float, shape (N,)
        Projected radius (same unit as ``r_lambda``).
    r_lambda : float or array_like, shape (N,)
        Cut radius.
    width : float
        Smoothing width in units of ``R_λ``.

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
        In [0, 1]; 0.5 at ``R = R_λ``.
    """
    arg = (np.asarray(r, np.float64) - r_lambda) / (math.sqrt(2.0) * width * np.asarray(r_lambda))
    return 0.5 * _erfc(arg)


def theta_i(imag, imag_err, imag_limit) -> np.ndarray:
    """redMaPPer-like luminosity weight: the chance of being brighter than 0.2 L*.

    ``θ_i = 0.5 erfc((m_i - m_lim) / (sqrt(2) σ_i))`` with ``m_lim = m* + 2.5 log10(5)``
    the 0.2 L* limit and ``σ_i`` the magnitude error (the smoothed luminosity filter of
    Rykoff et al. 2014).

    Parameters
    ----------
    imag, imag_err : array_like, float, shape (N,)
        Observed i-band magnitude and error (mag, error > 0).
    imag_limit : float or array_like, shape (N,)
        The limit (mag).

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
        In [0, 1].
    """
    err = np.maximum(np.asarray(imag_err, np.float64), 1e-3)
    return 0.5 * _erfc((np.asarray(imag, np.float64) - imag_limit) / (math.sqrt(2.0) * err))


_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _erfc(x) -> np.ndarray:
    return np.asarray(_ERFC(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def velocity_dispersion_kms(richness) -> np.ndarray:
    """Line-of-sight velocity dispersion of members, ``σ_v = 600 km/s (λ / 30)**(1/3)``.

    Approximate: of the size of the velocity dispersions of SDSS redMaPPer clusters (a few
    hundred km/s at λ ≈ 20 to ~1000 km/s at λ ≈ 150), with the σ_v ∝ M^(1/3) scaling of
    virial equilibrium and M ∝ λ; only used to scatter the members' spectroscopic
    redshifts.

    Parameters
    ----------
    richness : array_like, float, shape (...)
        λ (> 0).

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        km/s.
    """
    return 600.0 * (np.asarray(richness, dtype=np.float64) / 30.0) ** (1.0 / 3.0)


def z_lambda_error(z) -> np.ndarray:
    """Catalogue photometric-redshift error, ``σ_z = (1 + z) (0.0032 + 0.06 max(z - 0.3, 0))``.

    Approximate: the 0.0032 (1 + z) of the real DR8 fixture clusters at z < 0.25
    (``redmapper_test_zlamcal_cat.fit``), growing to ~0.015 (1 + z) at z = 0.5 as in
    Rykoff et al. 2014, where the 4000 Å break leaves g - r.

    Parameters
    ----------
    z : array_like, float, shape (...)

    Returns
    -------
    numpy.ndarray, float64, shape (...)
    """
    z = np.asarray(z, dtype=np.float64)
    return (1.0 + z) * (0.0032 + 0.06 * np.maximum(z - 0.3, 0.0))


def richness_error(richness) -> np.ndarray:
    """Catalogue richness error, ``σ_λ = 0.61 λ**0.40``.

    A power-law fit to the real DR8 fixture clusters (``redmapper_test_zlamcal_cat.fit``,
    412 clusters: ``LAMBDA_E`` vs ``LAMBDA``); below the Poisson ``sqrt(λ)`` because
    redMaPPer's λ is a sum of probabilities.

    Parameters
    ----------
    richness : array_like, float, shape (...)

    Returns
    -------
    numpy.ndarray, float64, shape (...)
    """
    return 0.61 * np.asarray(richness, dtype=np.float64) ** 0.40


# ------------------------------------------------------------------ red sequence, m*(z)

#: Redshift knots of the red sequence (:func:`red_sequence_colours`).
RED_SEQUENCE_Z = np.array(
    [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7]
)
#: Red-sequence colours at ``m*`` at the knots, columns u-g, g-r, r-i, i-z (AB mag).
RED_SEQUENCE_COLOURS = np.array(
    [
        [1.80, 0.77, 0.36, 0.28],
        [1.78, 0.88, 0.38, 0.29],
        [1.76, 1.00, 0.40, 0.30],
        [1.73, 1.12, 0.43, 0.31],
        [1.70, 1.24, 0.46, 0.33],
        [1.68, 1.38, 0.50, 0.35],
        [1.65, 1.55, 0.55, 0.37],
        [1.64, 1.70, 0.61, 0.39],
        [1.62, 1.80, 0.68, 0.41],
        [1.61, 1.85, 0.77, 0.43],
        [1.60, 1.88, 0.88, 0.46],
        [1.60, 1.90, 0.98, 0.50],
        [1.60, 1.92, 1.06, 0.55],
        [1.60, 1.95, 1.15, 0.62],
    ]
)
#: Intrinsic scatter of the red sequence (u-g, g-r, r-i, i-z), mag.
RED_SEQUENCE_SCATTER = np.array([0.15, 0.05, 0.03, 0.03])
#: Slope of the colours with magnitude, d(colour) / d(m_i - m*) (brighter is redder).
RED_SEQUENCE_SLOPE = np.array([-0.03, -0.025, -0.01, -0.005])


def _pchip(xk: np.ndarray, yk: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic Hermite interpolation (Fritsch & Carlson 1980), clamped."""
    x = np.clip(x, xk[0], xk[-1])
    h = np.diff(xk)
    delta = np.diff(yk) / h
    d = np.zeros_like(yk)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        hm = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    d[1:-1] = np.where(same, hm, 0.0)
    d[0], d[-1] = delta[0], delta[-1]
    k = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, len(xk) - 2)
    t = (x - xk[k]) / h[k]
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * yk[k] + h10 * h[k] * d[k] + h01 * yk[k + 1] + h11 * h[k] * d[k + 1]


def red_sequence_colours(z) -> np.ndarray:
    """Colours of the red sequence at ``m*`` as smooth functions of redshift.

    Monotone cubic interpolation (clamped beyond 0-0.7) of :data:`RED_SEQUENCE_COLOURS`.
    Approximate, tuned to SDSS red-sequence colours of a passively evolving old population:
    g - r ≈ 1.0 at z = 0.1 rising to ≈ 1.8 at z = 0.4 as the 4000 Å break crosses the g
    band, then r - i rising; at z = 0.228 the knots give g - r 1.32, r - i 0.48, i - z 0.34,
    the medians of the P > 0.5 members of the real redMaPPer test cluster
    (``redmapper_test_cluster_members.fit``: 1.31, 0.49, 0.34). u - g (1.6-1.8) is poorly
    constrained (the real u photometry of red galaxies is noise dominated).

    Parameters
    ----------
    z : array_like, float, shape (...)
        Redshift.

    Returns
    -------
    numpy.ndarray, float64, shape (..., 4)
        u - g, g - r, r - i, i - z (AB mag).

    Examples
    --------
    >>> [round(float(c), 2) for c in red_sequence_colours(0.1)]
    [1.76, 1.0, 0.4, 0.3]
    """
    z = np.asarray(z, dtype=np.float64)
    flat = z.reshape(-1)
    cols = [_pchip(RED_SEQUENCE_Z, RED_SEQUENCE_COLOURS[:, j], flat) for j in range(4)]
    return np.stack(cols, axis=-1).reshape(*z.shape, 4)


#: i-band absolute magnitude of L* at z = 0 (H0 = 70), calibrated so that m*(0.228) =
#: 18.14, the 0.2 L* limit (THETA_I = 0.5 at i ≈ 19.89) of the real redMaPPer test cluster;
#: close to the SDSS M*_i - 5 log h = -21.35 of Blanton et al. 2003 (ApJ 592, 819) at
#: h = 0.7 and z = 0.1 (-22.1).
MSTAR_I_ABS = -22.035
#: Passive evolution of L*, mag per unit redshift (brighter in the past).
PASSIVE_EVOLUTION = 1.5
#: BCG magnitude relative to m*, mag (brighter by ~1.5 mag, scatter in :func:`bcg_luminosity`).
BCG_DELTA_MAG = -1.5


def k_correction_i(z) -> np.ndarray:
    """i-band K-correction of an old (elliptical) population, ``K_i = 0.9 z + 0.7 z^2``.

    Approximate fit to the elliptical-galaxy K-corrections in SDSS i of Fukugita et al.
    1995 (PASP 107, 945) and Chilingarian et al. 2010 (MNRAS 405, 1409): 0.10 at z = 0.1,
    0.33 at z = 0.3, 0.63 at z = 0.5.

    Parameters
    ----------
    z : array_like, float, shape (...)

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        Mag.
    """
    z = np.asarray(z, dtype=np.float64)
    return 0.9 * z + 0.7 * z**2


def mstar_i(z, h0: float = 70.0, om0: float = 0.3) -> np.ndarray:
    """Apparent i-band magnitude of L* at redshift z.

    ``m*(z) = M*_i + DM(z) + K_i(z) - Q z`` with ``M*_i`` = :data:`MSTAR_I_ABS`, ``DM``
    the distance modulus of :func:`flat_lcdm`, ``K_i`` of :func:`k_correction_i` and
    passive evolution ``Q`` = :data:`PASSIVE_EVOLUTION` mag per unit z. Gives 16.23 at
    z = 0.1, 18.80 at 0.3 and 20.10 at 0.5, within ~0.1 mag of the redMaPPer DR8 m*(z)
    (Rykoff et al. 2014) below z = 0.4.

    Parameters
    ----------
    z : array_like, float, shape (...)
        Redshift (> 0).
    h0, om0 : float
        Cosmology.

    Returns
    -------
    numpy.ndarray, float64, shape (...)
        AB mag.

    Examples
    --------
    >>> round(float(mstar_i(0.228)), 2)
    18.14
    """
    z = _redshifts(z)
    dm = np.asarray(flat_lcdm(h0, om0).distmod(z).value, dtype=np.float64)
    return MSTAR_I_ABS + dm + k_correction_i(z) - PASSIVE_EVOLUTION * z


def schechter_luminosities(
    n: int,
    rng: np.random.Generator,
    alpha: float = -1.0,
    l_min: float = LUMINOSITY_CUT,
    l_max: float = 10.0,
) -> np.ndarray:
    """Luminosities drawn from a Schechter function between ``l_min`` and ``l_max`` L*.

    ``dN/dL ∝ (L / L*)**α exp(-L / L*)`` (Schechter 1976, ApJ 203, 297); α = -1 is the
    faint-end slope of the redMaPPer luminosity filter (Rykoff et al. 2012, ApJ 746, 178).
    Inverse CDF tabulated on 4096 log-spaced luminosities.

    Parameters
    ----------
    n : int
        Number of draws (>= 0).
    rng : numpy.random.Generator
    alpha : float
        Faint-end slope.
    l_min, l_max : float
        Luminosity range in L* (0 < l_min < l_max).

    Returns
    -------
    numpy.ndarray, float64, shape (n,)
        L / L*.

    Raises
    ------
    InputError
        An empty or non-positive luminosity range.
    """
    if not (0 < l_min < l_max):
        raise InputError(f"expected 0 < l_min < l_max, got {l_min}, {l_max}", key="l_min")
    lnx = np.linspace(np.log(l_min), np.log(l_max), 4096)
    x = np.exp(lnx)
    pdf = x ** (alpha + 1.0) * np.exp(-x)  # per ln L
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(lnx))])
    cdf /= cdf[-1]
    return np.exp(np.interp(rng.random(n), cdf, lnx))


def bcg_luminosity(rng: np.random.Generator, scatter_mag: float = 0.25) -> float:
    """Luminosity of a BCG, ``m_BCG = m* + BCG_DELTA_MAG + N(0, scatter)``, in L*.

    BCGs are ~1.5 mag brighter than m* (about 4 L*, e.g. Hansen et al. 2009, ApJ 699,
    1333 for maxBCG clusters; the richness dependence is neglected).

    Parameters
    ----------
    rng : numpy.random.Generator
    scatter_mag : float
        Scatter, mag.

    Returns
    -------
    float
        L / L*.
    """
    return float(10.0 ** (-0.4 * (BCG_DELTA_MAG + scatter_mag * rng.standard_normal())))


def member_magnitudes(
    z: float,
    luminosity,
    rng: np.random.Generator,
    scatter_factor=1.0,
    h0: float = 70.0,
    om0: float = 0.3,
    m_star: float | None = None,
) -> np.ndarray:
    """True ugriz magnitudes of red-sequence galaxies at redshift z.

    ``i = m*(z) - 2.5 log10(L / L*)``; colours from :func:`red_sequence_colours` plus a
    slope with magnitude (:data:`RED_SEQUENCE_SLOPE`, brighter is redder) and Gaussian
    intrinsic scatter (:data:`RED_SEQUENCE_SCATTER` times ``scatter_factor``); then
    ``r = i + (r - i)``, ``g = r + (g - r)``, ``u = g + (u - g)``, ``z = i - (i - z)``.

    Parameters
    ----------
    z : float
        Redshift (> 0).
    luminosity : array_like, float, shape (N,)
        L / L* (> 0).
    rng : numpy.random.Generator
    scatter_factor : float or array_like, shape (N,)
        Multiplies the intrinsic scatter (e.g. 2 for interlopers that only resemble the
        red sequence).
    h0, om0 : float
        Cosmology.
    m_star : float, optional
        ``mstar_i(z, h0, om0)`` when the caller has it already.

    Returns
    -------
    numpy.ndarray, float64, shape (N, 5)
        u, g, r, i, z (AB mag).
    """
    lum = np.asarray(luminosity, dtype=np.float64)
    m_star = float(mstar_i(z, h0, om0)) if m_star is None else float(m_star)
    i = m_star - 2.5 * np.log10(lum)
    factor = np.asarray(scatter_factor, dtype=np.float64).reshape(-1, 1)
    colours = (
        red_sequence_colours(z)[None, :]
        + RED_SEQUENCE_SLOPE[None, :] * (i - m_star)[:, None]
        + RED_SEQUENCE_SCATTER[None, :] * factor * rng.standard_normal((lum.size, 4))
    )
    ug, gr, ri, iz = colours.T
    r = i + ri
    g = r + gr
    return np.stack([g + ug, g, r, i, i - iz], axis=1)


# ---------------------------------------------------------------------------------- sizes


def member_half_light_arcsec(
    luminosity,
    z: float,
    rng: np.random.Generator,
    h0: float = 70.0,
    om0: float = 0.3,
    arcsec_per_kpc: float | None = None,
) -> np.ndarray:
    """Half-light radii of early-type members, ``R_e = 4 kpc (L / L*)**0.65``, in arcsec.

    The size-luminosity relation of SDSS early types (Shen et al. 2003, MNRAS 343, 978:
    R_50 ∝ L^~0.65, ~4 kpc at L*; approximate), log-normal scatter 0.12 dex, converted
    with the proper angular scale of :func:`flat_lcdm` (shrinking with distance).

    Parameters
    ----------
    luminosity : array_like, float, shape (N,)
        L / L*.
    z : float
        Redshift (> 0).
    rng : numpy.random.Generator
    h0, om0 : float
        Cosmology.
    arcsec_per_kpc : float, optional
        The proper angular scale at z when the caller has it already.

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
        Arcsec.
    """
    import astropy.units as u

    lum = np.asarray(luminosity, dtype=np.float64)
    r_kpc = 4.0 * lum**0.65 * 10.0 ** (0.12 * rng.standard_normal(lum.size))
    if arcsec_per_kpc is None:
        cosmo = flat_lcdm(h0, om0)
        arcsec_per_kpc = cosmo.arcsec_per_kpc_proper(_redshifts(z)).to_value(u.arcsec / u.kpc)
    return r_kpc * float(arcsec_per_kpc)


def field_half_light_arcsec(mag_r, rng: np.random.Generator) -> np.ndarray:
    """Half-light radii of field galaxies from their r magnitude, in arcsec.

    ``R_e = 2.2" 10**(-0.12 (r - 17.5))`` with 0.2 dex log-normal scatter, at least 0.2":
    approximate, of the size of SDSS r-band half-light radii (~2-3" at the spectroscopic
    limit r = 17.7, ~1" at r = 21).

    Parameters
    ----------
    mag_r : array_like, float, shape (N,)
        r magnitude.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
        Arcsec.
    """
    r = np.asarray(mag_r, dtype=np.float64)
    re = 2.2 * 10.0 ** (-0.12 * (r - 17.5) + 0.2 * rng.standard_normal(r.size))
    return np.maximum(re, 0.2)


def early_type_probability(g_minus_r) -> np.ndarray:
    """Probability that a field galaxy is bulge dominated (de Vaucouleurs), from g - r.

    0.8 for g - r > 1.0 (red), 0.15 otherwise (an approximate colour-morphology relation,
    e.g. Strateva et al. 2001, AJ 122, 1861: u - r = 2.22 separates early and late types).

    Parameters
    ----------
    g_minus_r : array_like, float, shape (N,)

    Returns
    -------
    numpy.ndarray, float64, shape (N,)
    """
    return np.where(np.asarray(g_minus_r, dtype=np.float64) > 1.0, 0.8, 0.15)


# ------------------------------------------------------------------------- errors, noise

#: Galaxy model-magnitude depth model per band (u, g, r, i, z): ``(m_5, c)`` of
#: :func:`magnitude_errors`, least-squares fits to the median MODEL_MAGERR of the real DR8
#: galaxy table ``redmapper_test_dr8_gals_with_zred.fit`` (u fitted below 23.2 mag).
GALAXY_DEPTH = np.array(
    [[21.32, 1.12], [22.47, 0.154], [22.02, 0.10], [21.58, 0.089], [20.18, 0.20]]
)
#: SDSS point-source depths (95 % completeness; used as 5σ), AB mag, u g r i z
#: (Abazajian et al. 2004, AJ 128, 502; sdss.org imaging summary).
POINT_SOURCE_DEPTH = np.array([22.0, 22.2, 22.2, 21.3, 20.5])


def magnitude_errors(mags, depth: np.ndarray = GALAXY_DEPTH) -> np.ndarray:
    """Magnitude errors of SDSS-like photometry: sky plus source noise.

    ``σ_m = 0.2171 sqrt(t^2 + c t)``, ``t = 10**(0.4 (m - m_5))``: the sky term alone gives
    S/N = 5 (σ = 2.5 / ln 10 / 5 = 0.2171) at ``m_5``, and ``c`` weighs the source's own
    Poisson noise (σ ∝ 10**(0.2 m), dominant for bright galaxies). Fitted per band to the
    real DR8 galaxy table (:data:`GALAXY_DEPTH`): e.g. σ_i = 0.023 at i = 18.7 and 0.11 at
    i = 20.7 (0.024 and 0.098 in the table).

    Parameters
    ----------
    mags : array_like, float, shape (N, B)
        Magnitudes, bands as the rows of ``depth`` (default ugriz).
    depth : numpy.ndarray, shape (B, 2)
        ``(m_5, c)`` per band.

    Returns
    -------
    numpy.ndarray, float64, shape (N, B)
        Mag.

    Examples
    --------
    >>> [round(float(e), 3) for e in magnitude_errors([[20.0, 20.0, 20.0, 20.0, 20.0]])[0]]
    [0.141, 0.035, 0.043, 0.06, 0.204]
    """
    m = np.asarray(mags, dtype=np.float64)
    t = 10.0 ** (0.4 * (m - depth[:, 0]))
    return 0.2171 * np.sqrt(t * t + depth[:, 1] * t)


def observe_magnitudes(
    true_mags, rng: np.random.Generator, depth: np.ndarray = GALAXY_DEPTH
) -> tuple[np.ndarray, np.ndarray]:
    """Observed magnitudes and their errors: true + N(0, σ(true)), σ reported at the observed.

    Parameters
    ----------
    true_mags : array_like, float, shape (N, B)
    rng : numpy.random.Generator
    depth : numpy.ndarray, shape (B, 2)
        See :func:`magnitude_errors`.

    Returns
    -------
    mags, errs : numpy.ndarray, float64, shape (N, B)
        Observed magnitude and its error (mag), as a catalogue reports them.
    """
    true_mags = np.asarray(true_mags, dtype=np.float64)
    obs = true_mags + magnitude_errors(true_mags, depth) * rng.standard_normal(true_mags.shape)
    return obs, magnitude_errors(obs, depth)


def valid_magnitude_rows(mags, errs, mag_range=(10.0, 35.0)) -> np.ndarray:
    """Rows of a galaxy table whose every magnitude and error is usable.

    Valid: finite, magnitude inside ``mag_range`` (SDSS writes -9999 / 99 for missing
    photometry), error finite and > 0.

    Parameters
    ----------
    mags, errs : array_like, float, shape (N, B)
    mag_range : tuple of float
        Accepted magnitudes (exclusive).

    Returns
    -------
    numpy.ndarray, bool, shape (N,)
    """
    m = np.asarray(mags, dtype=np.float64)
    e = np.asarray(errs, dtype=np.float64)
    ok = np.isfinite(m) & (m > mag_range[0]) & (m < mag_range[1]) & np.isfinite(e) & (e > 0)
    return ok.all(axis=1)


def bootstrap_rows(n_rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` rows drawn with replacement from a table of ``n_rows`` rows.

    Field galaxies take whole rows (ugriz magnitudes with their errors) of the real DR8
    galaxy table, so their colours and errors are those of real SDSS galaxies; the table
    (i ≲ 21, around one cluster) is the magnitude distribution, not the positions.

    Parameters
    ----------
    n_rows : int
        Rows available (> 0).
    n : int
        Draws.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, int64, shape (n,)

    Raises
    ------
    InputError
        An empty table.
    """
    if n_rows <= 0:
        raise InputError("the galaxy table has no valid row to draw field galaxies from")
    return rng.integers(0, n_rows, n).astype(np.int64)


def fluxes(mags, zero_point: float = 22.5) -> np.ndarray:
    """Fluxes of magnitudes, ``10**(-0.4 (m - zero_point))`` (nanomaggies for 22.5).

    Parameters
    ----------
    mags : array_like, float, shape (...)
    zero_point : float
        Magnitude of unit flux.

    Returns
    -------
    numpy.ndarray, float64, shape (...)
    """
    return 10.0 ** (-0.4 * (np.asarray(mags, dtype=np.float64) - zero_point))


def sky_sigma_per_pixel(
    depth_5sigma,
    psf_fwhm_arcsec: float,
    pixel_scale_arcsec: float,
    zero_point: float = 22.5,
) -> np.ndarray:
    """Gaussian sky noise per pixel that gives a point source S/N = 5 at the depth.

    A sky-limited point source measured with its optimal (PSF) weight has
    ``S/N = F / (σ_pix sqrt(A_eff) / s)`` with the noise-equivalent area of a Gaussian PSF
    ``A_eff = 4 π σ_psf^2 = 2.266 FWHM^2`` (King 1983, PASP 95, 163) and pixel scale ``s``,
    so ``σ_pix = (F_5 / 5) s / sqrt(A_eff)``. With the SDSS depths
    (:data:`POINT_SOURCE_DEPTH`), a 1.4" PSF and 0.396" pixels: g 0.050, r 0.050,
    i 0.113 nanomaggies per pixel.

    Parameters
    ----------
    depth_5sigma : array_like, float, shape (B,)
        5σ point-source magnitudes.
    psf_fwhm_arcsec : float
        PSF FWHM, arcsec.
    pixel_scale_arcsec : float
        Pixel scale, arcsec / pixel.
    zero_point : float
        Magnitude of unit flux.

    Returns
    -------
    numpy.ndarray, float64, shape (B,)
        Noise sd per pixel, flux units of ``zero_point`` (nanomaggies for 22.5).

    Examples
    --------
    >>> [round(float(s), 3) for s in sky_sigma_per_pixel([22.2, 22.2, 21.3], 1.4, 0.396)]
    [0.05, 0.05, 0.113]
    """
    a_eff = math.pi / (2.0 * math.log(2.0)) * psf_fwhm_arcsec**2
    f5 = fluxes(depth_5sigma, zero_point)
    return f5 / 5.0 * pixel_scale_arcsec / math.sqrt(a_eff)
