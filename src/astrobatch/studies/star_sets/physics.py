"""Physics of the star_sets study: IMF, stellar evolution, tides, centres, targets.

Pure functions on numpy arrays (plus galpy for the Galactic tide). Units
throughout: masses in Msun, lengths in pc, velocities in km/s, times in Myr.

:func:`snapshot_targets` is *the* definition of the per-snapshot targets; both
the simulator (:mod:`astrobatch.studies.star_sets.simulate`) and the reader of
real NBODY6++ snapshots (:mod:`astrobatch.studies.star_sets.prepare`) call it,
so simulated and real targets mean the same thing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from astrobatch.errors import InputError

#: Gravitational constant in pc (km/s)^2 / Msun.
G_PC_KMS2_MSUN = 4.30091e-3
#: galpy's natural-unit scales used for the Galactic potential (kpc, km/s).
GALPY_RO_KPC = 8.0
GALPY_VO_KMS = 220.0

# Kroupa (2001) slopes: xi(m) ∝ m^-alpha, alpha = 1.3 below 0.5 Msun, 2.3 above.
_KROUPA_BREAK = 0.5
_KROUPA_ALPHA_LOW = 1.3
_KROUPA_ALPHA_HIGH = 2.3


def _as_float_array(values, name: str, allow_zero: bool = True) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError("expected finite values, got non-finite entries", key=name)
    bad = arr < 0 if allow_zero else arr <= 0
    if np.any(bad):
        what = "non-negative" if allow_zero else "positive"
        raise InputError(f"expected {what} values, got min {arr.min():g}", key=name)
    return arr


def _imf_segments(m_min: float, m_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments (edges, slopes, normalised number fractions) of the Kroupa IMF on [m_min, m_max]."""
    if not (np.isfinite(m_min) and np.isfinite(m_max) and 0 < m_min < m_max):
        raise InputError(
            f"expected 0 < m_min < m_max (Msun), got m_min={m_min}, m_max={m_max}", key="m_min"
        )
    if m_min < _KROUPA_BREAK < m_max:
        edges = np.array([m_min, _KROUPA_BREAK, m_max])
        alphas = np.array([_KROUPA_ALPHA_LOW, _KROUPA_ALPHA_HIGH])
    else:
        edges = np.array([m_min, m_max])
        alphas = np.array([_KROUPA_ALPHA_LOW if m_max <= _KROUPA_BREAK else _KROUPA_ALPHA_HIGH])
    # continuity at the break: xi = k_i m^-alpha_i with k_low = k_high * 0.5^(a_low - a_high)
    k = np.ones(len(alphas))
    if len(alphas) == 2:
        k[0] = _KROUPA_BREAK ** (alphas[0] - alphas[1])
    p = 1.0 - alphas  # never 0 for the Kroupa slopes
    numbers = k / p * (edges[1:] ** p - edges[:-1] ** p)
    return edges, alphas, numbers / numbers.sum()


def kroupa_inverse_cdf(u, m_min: float = 0.08, m_max: float = 50.0) -> np.ndarray:
    """Masses at cumulative number fractions ``u`` of the Kroupa (2001) IMF.

    The IMF is the broken power law xi(m) ∝ m^-1.3 for m < 0.5 Msun and
    m^-2.3 above, continuous at 0.5 Msun, truncated to [m_min, m_max]
    (Kroupa 2001, MNRAS 322, 231, arXiv:astro-ph/0009005).

    Parameters
    ----------
    u : array_like, shape (N,), float
        Uniform deviates in [0, 1].
    m_min, m_max : float
        IMF limits, Msun (0 < m_min < m_max).

    Returns
    -------
    numpy.ndarray, shape (N,), float64
        Stellar masses, Msun, in [m_min, m_max].

    Raises
    ------
    InputError
        If the limits are not 0 < m_min < m_max or ``u`` is outside [0, 1].
    """
    u = np.asarray(u, dtype=np.float64)
    if np.any(~np.isfinite(u)) or np.any((u < 0) | (u > 1)):
        raise InputError("expected uniform deviates in [0, 1]", key="u")
    edges, alphas, frac = _imf_segments(m_min, m_max)
    cum = np.concatenate([[0.0], np.cumsum(frac)])
    seg = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(frac) - 1)
    # fraction inside the segment, then invert the power-law CDF of that segment
    w = np.clip((u - cum[seg]) / frac[seg], 0.0, 1.0)
    p = 1.0 - alphas[seg]
    lo, hi = edges[seg] ** p, edges[seg + 1] ** p
    return np.clip((lo + w * (hi - lo)) ** (1.0 / p), m_min, m_max)


def sample_kroupa_imf(
    total_mass: float, rng: np.random.Generator, m_min: float = 0.08, m_max: float = 50.0
) -> np.ndarray:
    """Draw stellar masses from the Kroupa (2001) IMF until they sum to ``total_mass``.

    Masses are drawn in vectorised batches by inverse-CDF sampling
    (:func:`kroupa_inverse_cdf`; Kroupa 2001, arXiv:astro-ph/0009005) and
    accumulated until the running total reaches ``total_mass``; the last star
    is kept only if that brings the sum closer to the target ("stop-nearest",
    Haas & Anders 2010, A&A 512, A79), so ``|sum - total_mass| <= m_max / 2``.

    Parameters
    ----------
    total_mass : float
        Target total mass, Msun (> 0).
    rng : numpy.random.Generator
        Source of randomness.
    m_min, m_max : float
        IMF limits, Msun.

    Returns
    -------
    numpy.ndarray, shape (N,), float64
        Stellar masses, Msun, in random order (at least one star).

    Raises
    ------
    InputError
        If ``total_mass`` is not positive and finite, or the limits are invalid.
    """
    if not (np.isfinite(total_mass) and total_mass > 0):
        raise InputError(f"expected a positive finite mass (Msun), got {total_mass}", key="mass")
    edges, alphas, frac = _imf_segments(m_min, m_max)
    # mean mass of the truncated IMF, to size the batches
    p2 = 2.0 - alphas
    with np.errstate(divide="ignore", invalid="ignore"):
        seg_mass = np.where(
            np.abs(p2) < 1e-12,
            np.log(edges[1:] / edges[:-1]),
            (edges[1:] ** p2 - edges[:-1] ** p2) / p2,
        )
    p1 = 1.0 - alphas
    seg_num = (edges[1:] ** p1 - edges[:-1] ** p1) / p1
    mean_mass = float(np.sum(frac * seg_mass / seg_num))
    parts: list[np.ndarray] = []
    total = 0.0
    while total < total_mass:
        n = int(np.ceil(1.1 * (total_mass - total) / mean_mass)) + 16
        batch = kroupa_inverse_cdf(rng.random(n), m_min, m_max)
        parts.append(batch)
        total += float(batch.sum())
    masses = np.concatenate(parts)
    cum = np.cumsum(masses)
    i = int(np.searchsorted(cum, total_mass))  # first index with cum >= total_mass
    keep = i + 1
    if i > 0 and abs(cum[i - 1] - total_mass) < abs(cum[i] - total_mass):
        keep = i
    return masses[:keep]


def mass_luminosity(m) -> np.ndarray:
    """Main-sequence luminosity from mass (piecewise power law).

    ``L/Lsun = 0.23 m^2.3`` (m < 0.43), ``m^4`` (0.43 <= m < 2),
    ``1.4 m^3.5`` (2 <= m < 55), ``32000 m`` (m >= 55), with m in Msun
    (Duric 2004, *Advanced Astrophysics*, Cambridge University Press; compare
    the main-sequence models in Salaris & Cassisi 2005, *Evolution of Stars and
    Stellar Populations*). The pieces join only approximately (a few per cent).

    Parameters
    ----------
    m : array_like, shape (N,) or scalar, float
        Stellar masses, Msun (>= 0).

    Returns
    -------
    numpy.ndarray, same shape as ``m``, float64
        Luminosities, Lsun (0 for m = 0).

    Raises
    ------
    InputError
        If a mass is negative or not finite.
    """
    m = _as_float_array(m, "mass")
    return np.select(
        [m < 0.43, m < 2.0, m < 55.0],
        [0.23 * m**2.3, m**4.0, 1.4 * m**3.5],
        default=32000.0 * m,
    )


def turnoff_mass(t_myr, metallicity=0.02) -> np.ndarray:
    """Main-sequence turnoff mass at age ``t_myr``.

    Main-sequence lifetime ``t_MS = 10 Gyr (m/Msun)^-2.5 (Z/0.02)^0.1``; the
    first factor is the textbook scaling t_MS ∝ M/L with L ∝ m^3.5 (e.g.
    Carroll & Ostlie, *An Introduction to Modern Astrophysics*; Hansen,
    Kawaler & Trimble 2004, *Stellar Interiors*); the mild
    metallicity factor is an illustrative approximation of the sense and rough
    size of the trend in the Hurley, Pols & Tout (2000, arXiv:astro-ph/0001295)
    lifetimes (metal-poor stars leave the main sequence earlier), not a fit.
    Inverting gives ``m_TO = (t / t_MS(1 Msun, Z))^(-1/2.5)``.

    Parameters
    ----------
    t_myr : array_like or float
        Age, Myr (>= 0).
    metallicity : array_like or float
        Metal mass fraction Z (> 0), e.g. 0.02 (solar).

    Returns
    -------
    numpy.ndarray (0-d for scalar input), float64
        Turnoff mass, Msun; ``inf`` at t = 0 (no star has evolved yet).

    Raises
    ------
    InputError
        If ``t_myr`` is negative or ``metallicity`` is not positive.
    """
    t = _as_float_array(t_myr, "t_myr")
    z = _as_float_array(metallicity, "metallicity", allow_zero=False)
    t_sun = 1.0e4 * (z / 0.02) ** 0.1  # Myr, lifetime of a 1 Msun star
    with np.errstate(divide="ignore"):
        return (t / t_sun) ** (-1.0 / 2.5)


@lru_cache(maxsize=64)
def _jacobi_radius_unit_mass_pc(r_gc_kpc: float) -> float:
    import astropy.units as u
    from galpy.potential import MWPotential2014, rtide

    rt = rtide(
        MWPotential2014,
        r_gc_kpc * u.kpc,
        0.0 * u.kpc,
        M=1.0 * u.Msun,
        ro=GALPY_RO_KPC,
        vo=GALPY_VO_KMS,
        quantity=True,
    )
    return float(rt.to_value(u.pc))


def jacobi_radius_pc(mass_msun, r_gc_kpc: float = 8.0):
    """Jacobi (tidal) radius of a cluster on a circular orbit in MWPotential2014.

    ``r_t^3 = G M / (Omega^2 - d^2 Phi / dr^2)`` evaluated at galactocentric
    radius ``r_gc_kpc`` in the plane (King 1962, AJ 67, 471; the form
    implemented by galpy), computed with :func:`galpy.potential.rtide` in
    ``MWPotential2014`` (Bovy 2015, arXiv:1412.3451) with ro = 8 kpc and
    vo = 220 km/s. galpy is evaluated once per ``r_gc_kpc`` for M = 1 Msun
    (cached) and the result is scaled as ``M^(1/3)``, which is exact for this
    formula, so the function is vectorised over masses.

    Parameters
    ----------
    mass_msun : array_like or float
        Cluster mass(es), Msun (>= 0).
    r_gc_kpc : float
        Galactocentric radius of the circular orbit, kpc (> 0).

    Returns
    -------
    float or numpy.ndarray (same shape as ``mass_msun``), float64
        Jacobi radius, pc (0 for zero mass).

    Raises
    ------
    InputError
        If a mass is negative or not finite, or ``r_gc_kpc`` is not positive.
    """
    m = _as_float_array(mass_msun, "mass")
    if not (np.isfinite(r_gc_kpc) and r_gc_kpc > 0):
        raise InputError(f"expected a positive radius (kpc), got {r_gc_kpc}", key="r_gc_kpc")
    r = _jacobi_radius_unit_mass_pc(float(r_gc_kpc)) * np.cbrt(m)
    return float(r) if r.ndim == 0 else r


def _check_pos(pos, name: str = "pos") -> np.ndarray:
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise InputError(f"expected shape (N, 3), got {pos.shape}", key=name)
    if not np.all(np.isfinite(pos)):
        raise InputError("expected finite values", key=name)
    return pos


def density_centre(pos, mass, k: int = 6) -> np.ndarray:
    """Density-weighted centre of a set of stars (Casertano & Hut 1985).

    Each star's local density is ``rho_j = 3 sum_{i<k} m_i / (4 pi r_{j,k}^3)``
    from its k-th nearest neighbour distance ``r_{j,k}`` and the masses of its
    k-1 nearest neighbours; the centre is ``sum rho_j x_j / sum rho_j``
    (Casertano & Hut 1985, ApJ 298, 80; the convention of NBODY6, Aarseth
    2003, *Gravitational N-Body Simulations*).
    Neighbours come from a :class:`scipy.spatial.cKDTree`: O(N log N).
    Sparse stars (tails, field) get negligible weight.

    Parameters
    ----------
    pos : array_like, shape (N, 3), float
        Positions, pc.
    mass : array_like, shape (N,), float
        Masses, Msun (>= 0).
    k : int
        Neighbour rank defining the density (>= 2; 6 as in NBODY6). With
        fewer than ``k + 1`` stars ``k = N - 1`` is used; with fewer than 3
        stars the mass-weighted mean position is returned.

    Returns
    -------
    numpy.ndarray, shape (3,), float64
        Density centre, pc.

    Raises
    ------
    InputError
        Empty input, mismatched shapes, negative masses or ``k < 2``.
    """
    pos = _check_pos(pos)
    mass = _as_float_array(mass, "mass")
    if mass.shape != (len(pos),):
        raise InputError(f"expected shape ({len(pos)},), got {mass.shape}", key="mass")
    if len(pos) == 0:
        raise InputError("expected at least one star", key="pos")
    if k < 2:
        raise InputError(f"expected k >= 2, got {k}", key="k")
    n = len(pos)
    if n < 3 or mass.sum() == 0:
        w = mass if mass.sum() > 0 else np.ones(n)
        return np.average(pos, axis=0, weights=w)
    k_eff = min(k, n - 1)
    dist, idx = cKDTree(pos).query(pos, k=k_eff + 1)  # column 0 is the star itself
    r_k = np.maximum(dist[:, k_eff], 1e-12)
    m_inner = mass[idx[:, 1:k_eff]].sum(axis=1)
    rho = 3.0 * m_inner / (4.0 * np.pi * r_k**3)
    if not np.any(rho > 0):  # all neighbours massless: fall back to the mass-weighted mean
        return np.average(pos, axis=0, weights=mass)
    return np.average(pos, axis=0, weights=rho)


def snapshot_targets(
    pos,
    vel,
    mass,
    r_gc_kpc: float = 8.0,
    is_member=None,
    k: int = 6,
    rtol: float = 1e-4,
    max_iter: int = 200,
) -> dict:
    """Targets of one snapshot: the single definition for simulated and real data.

    1. Centre: :func:`density_centre` of the members (Casertano & Hut 1985).
    2. Tidal radius: fixed-point iteration ``r_t <- jacobi_radius_pc(M(< r_t))``
       starting from the total member mass, where ``M(< r)`` is the member
       mass strictly inside ``r`` of the centre and the Jacobi radius is that
       of a circular orbit at ``r_gc_kpc`` in MWPotential2014
       (:func:`jacobi_radius_pc`). The map is monotone, so the iteration
       decreases to the largest fixed point; it stops at a relative change
       below ``rtol`` or after ``max_iter`` steps.
    3. ``total_mass_within_2x_r_tidal``: member mass strictly inside
       ``2 r_t``; ``n_stars_within_2x_r_tidal``: number of member rows
       there (a row is a star, or an unresolved binary system).
    4. ``r_half_mass``: radius enclosing half the member mass inside
       ``r_t`` (the radius of the star at which the cumulative mass reaches
       one half).
    5. Centre velocity: mass-weighted mean velocity of members inside ``r_t``.

    Non-members (``is_member`` False: field stars) are ignored everywhere.

    Parameters
    ----------
    pos : array_like, shape (N, 3), float
        Positions, pc (any origin).
    vel : array_like, shape (N, 3), float
        Velocities, km/s (any frame).
    mass : array_like, shape (N,), float
        Masses, Msun (>= 0).
    r_gc_kpc : float
        Galactocentric radius of the assumed circular orbit, kpc.
    is_member : array_like of bool, shape (N,), optional
        Which rows are cluster members; None means all.
    k : int
        Neighbour rank of the density estimate.
    rtol : float
        Relative convergence tolerance of r_t.
    max_iter : int
        Maximum number of fixed-point iterations.

    Returns
    -------
    dict
        ``centre_pos`` (3,) pc, ``centre_vel`` (3,) km/s, ``r_tidal`` pc,
        ``r_half_mass`` pc, ``total_mass_within_2x_r_tidal`` Msun,
        ``n_stars_within_2x_r_tidal`` (int), ``mass_within_r_tidal`` Msun,
        ``n_iterations`` (int), ``converged`` (bool).

    Raises
    ------
    InputError
        Mismatched shapes, non-finite values, negative masses, or no members.
    """
    pos = _check_pos(pos)
    vel = _check_pos(vel, "vel")
    mass = _as_float_array(mass, "mass")
    n = len(pos)
    if vel.shape != (n, 3) or mass.shape != (n,):
        raise InputError(
            f"expected vel (N, 3) and mass (N,) with N = {n}, got {vel.shape} and {mass.shape}",
            key="vel/mass",
        )
    if is_member is None:
        member = np.ones(n, dtype=bool)
    else:
        member = np.asarray(is_member, dtype=bool)
        if member.shape != (n,):
            raise InputError(f"expected shape ({n},), got {member.shape}", key="is_member")
    if not member.any():
        raise InputError("no member stars in the snapshot", key="is_member")
    p, v, m = pos[member], vel[member], mass[member]
    centre = density_centre(p, m, k=k)
    r = np.linalg.norm(p - centre, axis=1)
    order = np.argsort(r, kind="stable")
    r_sorted, cum = r[order], np.cumsum(m[order])

    def mass_inside(radius: float) -> float:
        i = int(np.searchsorted(r_sorted, radius, side="left"))  # strictly inside
        return float(cum[i - 1]) if i > 0 else 0.0

    r_t = jacobi_radius_pc(float(cum[-1]), r_gc_kpc)
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported
        r_new = jacobi_radius_pc(mass_inside(r_t), r_gc_kpc)
        change = abs(r_new - r_t)
        r_t = r_new
        if r_t == 0 or change <= rtol * r_t:
            converged = True
            break
    inside_t = r < r_t
    inside_2t = r < 2.0 * r_t
    m_t = float(m[inside_t].sum())
    if m_t > 0:
        ri, mi = r[inside_t], m[inside_t]
        o = np.argsort(ri, kind="stable")
        j = int(np.searchsorted(np.cumsum(mi[o]), 0.5 * m_t, side="left"))
        r_half = float(ri[o][min(j, len(o) - 1)])
        centre_vel = np.average(v[inside_t], axis=0, weights=mi)
    else:
        r_half = 0.0
        centre_vel = np.average(v, axis=0, weights=m if m.sum() > 0 else None)
    return {
        "centre_pos": centre,
        "centre_vel": centre_vel,
        "r_tidal": float(r_t),
        "r_half_mass": r_half,
        "total_mass_within_2x_r_tidal": float(m[inside_2t].sum()),
        "n_stars_within_2x_r_tidal": int(inside_2t.sum()),
        "mass_within_r_tidal": m_t,
        "n_iterations": it,
        "converged": converged,
    }
