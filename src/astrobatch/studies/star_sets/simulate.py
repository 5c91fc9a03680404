"""star_sets simulator (the embedded default): King-model clusters sampled with galpy.

Physically motivated snapshots of star clusters without running NBODY6. Units:
Msun, pc, km/s, Myr; sky coordinates in deg and mas/yr.

Runs
    Initial conditions cycle over the grid ``w0_levels x metallicities x mass
    level (1, 2, 3)`` (mass level fastest) for ``n_runs`` runs. The three mass
    levels split ``log10_mass_range`` into equal bins; the initial mass M0 is
    log-uniform inside its bin. Run ids: ``Rad05-zmet0002-M1-0003`` (W0 as two
    digits, the metallicity's digits after the decimal point, mass level, run
    index).
Stars
    Primaries from the Kroupa (2001) IMF (:func:`~.physics.sample_kroupa_imf`);
    a fraction ``binary_fraction`` of the systems are binaries with a flat mass
    ratio q in [m_min / m1, 1]; systems are kept until their total reaches M0.
    Snapshots at ``linspace(0, max_time_myr, snapshots_per_run)``.
Evolution
    Components above the turnoff mass (:func:`~.physics.turnoff_mass`) are
    removed (stellar-evolution mass loss; remnants are dropped). A nested,
    growing subset of the initial systems has escaped at time t: the first
    ``floor(escaper_fraction_max * t / max_time_myr * N0)`` in a fixed random
    order biased to low masses (weights m^-1/2, Efraimidis & Spirakis 2006).
Bound systems
    King (1966, AJ 71, 64) model with the run's W0 (:class:`galpy.df.kingdf`),
    truncated at r_K = f r_t, with r_t the Jacobi radius of the bound mass M_b
    (:func:`~.physics.jacobi_radius_pc`). The filling factor f is drawn per run,
    log-uniform in ``filling_factor_range`` (under- and over-filling clusters,
    so that size alone does not give the mass), and grows with the
    stellar-evolution mass loss as adiabatic expansion, r ∝ 1/M (Hills 1980,
    ApJ 235, 986): f(t) = f0 M0 / M_alive(t), capped at 1.5.
    King models are self-similar at fixed W0, so one pool per W0 is sampled in
    natural units (G = M = r_K = 1, cached) and each snapshot draws a subset,
    applies a random rotation and scales positions by r_K and velocities by
    sqrt(G M_b / r_K), G = 4.30091e-3 pc (km/s)^2 / Msun. No mass segregation.
Escapers
    Leading (+y, slightly +x, towards the Galactic centre) and trailing (-y,
    slightly -x) tidal tails: distance r_t (1 + Exp(1)/2) + drift speed x time
    since escape, drift speed sigma (1/2 + Exp(1)) with sigma the bound stars'
    1-D velocity dispersion; velocity = drift along the tail + N(0, sigma/2).
Field stars
    ``field_star_fraction`` x the number of systems, single, IMF masses,
    uniform in a sphere of radius 3 r_t, velocities N(0, 20 km/s) per
    component; ``is_member = 0``, excluded from the targets.
Targets
    :func:`~.physics.snapshot_targets` on the sampled systems (the same
    definition as for real snapshots); x, y, z, vx, vy, vz are relative to the
    density centre and the centre velocity it returns. Axes are parallel to
    the Galactic Cartesian axes (x to the Galactic centre, y along rotation).
Pseudo-observation
    Per snapshot the centre is put at distance d in {50, ..., 550 by 50} U
    {600, ..., 1200 by 100} pc, Galactic l uniform, b uniform on the sphere
    with |b| < 30 deg, bulk velocity N(0, 20 km/s) per component relative to
    the Sun; ``astropy.coordinates.Galactic`` gives ``lon_deg, lat_deg``
    and ``pm_lon_coslat_mas_yr, pm_lat_mas_yr`` (no solar motion, no
    extinction). Unresolved binaries (circular orbits, separations log-uniform
    in 10-1000 AU, random orientation and phase) appear as one light-weighted
    photocentre, with ``log_L_L_sol = log10(L1 + L2)``
    (:func:`~.physics.mass_luminosity`).

Each output row is one system (single star or unresolved binary); element
columns are float32 ``STAR_COLUMNS`` plus ``is_member`` and ``is_binary``
(1.0 / 0.0), in shuffled order within a snapshot.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from astrobatch.errors import InputError
from astrobatch.io.sets import CSRSets, write_csr_h5
from astrobatch.studies.star_sets.params import STAR_COLUMNS, StarSetsSimulate
from astrobatch.studies.star_sets.physics import (
    G_PC_KMS2_MSUN,
    jacobi_radius_pc,
    kroupa_inverse_cdf,
    mass_luminosity,
    sample_kroupa_imf,
    snapshot_targets,
    turnoff_mass,
)

#: Distances of the pseudo-observation, pc.
DISTANCES_PC = np.concatenate([np.arange(50, 551, 50), np.arange(600, 1201, 100)]).astype(float)
#: Maximum |b| of the pseudo-observed cluster centres, deg.
MAX_ABS_LAT_DEG = 30.0
#: Dispersion of the bulk velocity relative to the Sun, and of field stars, km/s per component.
BULK_SIGMA_KMS = 20.0
FIELD_SIGMA_KMS = 20.0
#: Range of binary separations (log-uniform), AU.
BINARY_SEPARATION_AU = (10.0, 1000.0)
AU_PC = 4.84813681109536e-6
#: Largest King truncation radius, in Jacobi radii (over-filling clusters lose stars fast).
MAX_FILLING = 1.5
KMS_PC_PER_MYR = 1.0227121650537077
#: Size of the natural-unit King pool drawn per W0 (grown when a cluster needs more).
KING_POOL_SIZE = 2**17

UNITS = {
    "x": "pc", "y": "pc", "z": "pc",
    "vx": "km/s", "vy": "km/s", "vz": "km/s",
    "mass": "Msun",
    "lon_deg": "deg", "lat_deg": "deg",
    "pm_lon_coslat_mas_yr": "mas/yr", "pm_lat_mas_yr": "mas/yr",
    "log_L_L_sol": "dex(Lsun)",
    "is_member": "1/0", "is_binary": "1/0",
    "time": "Myr",
    "total_mass_within_2x_r_tidal": "Msun", "n_stars_within_2x_r_tidal": "count",
    "r_half_mass": "pc", "r_tidal": "pc",
    "distance_pc": "pc", "centre_lon_deg": "deg", "centre_lat_deg": "deg",
    "ic_w0": "1", "ic_metallicity": "Z", "ic_mass_level": "1", "ic_mass": "Msun",
    "ic_filling_factor": "1", "r_king": "pc",
}  # fmt: skip

ELEMENT_COLUMNS: tuple[str, ...] = (*STAR_COLUMNS, "is_member", "is_binary")
SET_COLUMNS: tuple[str, ...] = (
    "run_id",
    "snapshot_id",
    "time",
    "total_mass_within_2x_r_tidal",
    "n_stars_within_2x_r_tidal",
    "r_half_mass",
    "r_tidal",
    "distance_pc",
    "centre_lon_deg",
    "centre_lat_deg",
    "ic_w0",
    "ic_metallicity",
    "ic_mass_level",
    "ic_mass",
    "ic_filling_factor",
    "r_king",
)


# ----------------------------------------------------------------------------------------------
# King model pool (natural units)
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def king_df(w0: float):
    """The King (1966) distribution function in galpy natural units, cached per W0.

    Parameters
    ----------
    w0 : float
        Dimensionless central potential W0 (> 0).

    Returns
    -------
    galpy.df.kingdf
        With total mass 1, truncation (tidal) radius 1 and G = 1.

    Raises
    ------
    InputError
        If ``w0`` is not positive.
    """
    if not (np.isfinite(w0) and w0 > 0):
        raise InputError(f"expected W0 > 0, got {w0}", key="w0_levels")
    from galpy.df import kingdf

    return kingdf(W0=float(w0), M=1.0, rt=1.0)


@contextmanager
def seeded_legacy_random(seed: int) -> Iterator[None]:
    """Seed NumPy's global legacy generator inside the block, then restore its state.

    galpy's samplers draw from ``numpy.random`` (the global ``RandomState``);
    this makes them deterministic without leaking into the caller's random
    state (not thread-safe).

    Parameters
    ----------
    seed : int
        Seed, 0 <= seed < 2**32.
    """
    state = np.random.get_state()  # noqa: NPY002 - galpy samples from the global generator
    try:
        np.random.seed(seed)  # noqa: NPY002
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


@lru_cache(maxsize=8)
def king_pool(w0: float, seed: int, n: int = KING_POOL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Phase-space samples of a King model in natural units (G = M = r_t = 1), cached.

    galpy samples with NumPy's global legacy generator; it is seeded with
    ``seed`` for the call and restored afterwards (:func:`seeded_legacy_random`),
    so the pool is a deterministic function of ``(w0, seed, n)`` and the
    caller's global random state is untouched.

    Parameters
    ----------
    w0 : float
        King W0.
    seed : int
        Seed of the pool (0 <= seed < 2**32).
    n : int
        Number of samples.

    Returns
    -------
    pos, vel : numpy.ndarray, each shape (n, 3), float64, read-only
        Positions (units of r_t, all within 1) and velocities (units of
        sqrt(G M / r_t)).
    """
    df = king_df(w0)
    with seeded_legacy_random(seed):
        big_r, v_r, v_t, z, vz, phi = df.sample(n=n, return_orbit=False)
    cos, sin = np.cos(phi), np.sin(phi)
    pos = np.stack([big_r * cos, big_r * sin, z], axis=1)
    vel = np.stack([v_r * cos - v_t * sin, v_r * sin + v_t * cos, vz], axis=1)
    pos.flags.writeable = False
    vel.flags.writeable = False
    return pos, vel


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def run_id(w0: float, metallicity: float, mass_level: int, index: int) -> str:
    """Run identifier such as ``Rad05-zmet0002-M1-0003``.

    Parameters
    ----------
    w0 : float
        King W0 (written rounded to two digits).
    metallicity : float
        Z; written as its digits after the decimal point (0.0002 -> ``0002``).
    mass_level : int
        Mass level (1, 2, 3).
    index : int
        Run sequence number (written with four digits).

    Returns
    -------
    str
    """
    z = f"{metallicity:.10f}".rstrip("0").split(".")[1] or "0"
    return f"Rad{round(w0):02d}-zmet{z}-M{mass_level}-{index:04d}"


def initial_conditions(params: StarSetsSimulate) -> list[tuple[float, float, int]]:
    """``(w0, metallicity, mass_level)`` of each run, cycling over the grid.

    Parameters
    ----------
    params : StarSetsSimulate

    Returns
    -------
    list of tuple (float, float, int), length ``params.n_runs``
        Mass level varies fastest, then metallicity, then W0.
    """
    grid = list(itertools.product(params.w0_levels, params.metallicities, (1, 2, 3)))
    return [grid[i % len(grid)] for i in range(params.n_runs)]


def _mass_bin(params: StarSetsSimulate, level: int) -> tuple[float, float]:
    lo, hi = params.log10_mass_range
    width = (hi - lo) / 3.0
    return lo + (level - 1) * width, lo + level * width


def _stop_nearest(values: np.ndarray, total: float) -> int:
    """Number of leading entries whose sum is nearest to ``total`` (at least 1)."""
    cum = np.cumsum(values)
    i = min(int(np.searchsorted(cum, total)), len(cum) - 1)
    if i > 0 and abs(cum[i - 1] - total) < abs(cum[i] - total):
        return i
    return i + 1


class _Run:
    """The systems of one run (fixed over its snapshots)."""

    def __init__(self, params: StarSetsSimulate, index: int, rng: np.random.Generator):
        self.index = index
        self.w0, self.metallicity, self.mass_level = initial_conditions(params)[index]
        self.run_id = run_id(self.w0, self.metallicity, self.mass_level, index)
        lo, hi = _mass_bin(params, self.mass_level)
        m0 = 10.0 ** rng.uniform(lo, hi)
        m_min, m_max = params.imf_mass_range
        m1 = sample_kroupa_imf(m0, rng, m_min, m_max)
        binary = rng.random(len(m1)) < params.binary_fraction
        q = rng.uniform(np.minimum(m_min / m1, 1.0), 1.0)
        m2 = np.where(binary, q * m1, 0.0)
        keep = _stop_nearest(m1 + m2, m0)
        self.m1, self.m2, self.binary = m1[:keep], m2[:keep], binary[:keep]
        self.l1, self.l2 = mass_luminosity(self.m1), mass_luminosity(self.m2)
        self.initial_mass = float(np.sum(self.m1 + self.m2))
        n = len(self.m1)
        # nested escape order: weighted random permutation, low masses first
        # (Efraimidis & Spirakis 2006: key = log(u) / w, sorted descending)
        w = (self.m1 + self.m2) ** -0.5
        keys = np.log(rng.random(n)) / w
        self.escape_rank = np.empty(n, dtype=np.int64)
        self.escape_rank[np.argsort(-keys, kind="stable")] = np.arange(n)
        lo_f, hi_f = params.filling_factor_range
        self.filling = float(np.exp(rng.uniform(np.log(lo_f), np.log(hi_f))))


def _binary_photocentre(
    m1: np.ndarray, m2: np.ndarray, l1: np.ndarray, l2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Photocentre offsets from the centre of mass of circular binaries (pc, km/s)."""
    n = len(m1)
    total = m1 + m2
    a_pc = AU_PC * np.exp(rng.uniform(*np.log(BINARY_SEPARATION_AU), size=n))
    v_rel = np.sqrt(G_PC_KMS2_MSUN * total / a_pc)  # Kepler, circular orbit
    n_hat = _unit_vectors(rng, n)
    t_hat = np.cross(n_hat, _unit_vectors(rng, n))
    t_hat /= np.maximum(np.linalg.norm(t_hat, axis=1, keepdims=True), 1e-300)
    # photocentre - centre of mass = a n (L2 m1 - L1 m2) / ((L1 + L2) M)
    f = (l2 * m1 - l1 * m2) / ((l1 + l2) * total)
    return (f * a_pc)[:, None] * n_hat, (f * v_rel)[:, None] * t_hat


def _observe(
    pos: np.ndarray, vel: np.ndarray, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float, float, float]:
    """Pseudo-observe stars (cluster-centric pc, km/s): Galactic lon/lat (deg) and pm (mas/yr)."""
    import astropy.units as u
    from astropy.coordinates import (
        CartesianDifferential,
        CartesianRepresentation,
        Galactic,
        SphericalCosLatDifferential,
        SphericalRepresentation,
    )

    d = float(rng.choice(DISTANCES_PC))
    lon = rng.uniform(0.0, 2.0 * np.pi)
    s = np.sin(np.radians(MAX_ABS_LAT_DEG))
    lat = np.arcsin(rng.uniform(-s, s))
    centre = d * np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    bulk = rng.normal(0.0, BULK_SIGMA_KMS, size=3)
    xyz = (pos + centre).T
    uvw = (vel + bulk).T
    rep = CartesianRepresentation(
        xyz * u.pc, differentials=CartesianDifferential(uvw * (u.km / u.s))
    )
    sph = Galactic(rep).represent_as(SphericalRepresentation, SphericalCosLatDifferential)
    dif = sph.differentials["s"]
    pm = u.mas / u.yr
    obs = {
        "lon_deg": sph.lon.to_value(u.deg),
        "lat_deg": sph.lat.to_value(u.deg),
        "pm_lon_coslat_mas_yr": dif.d_lon_coslat.to_value(pm, u.dimensionless_angles()),
        "pm_lat_mas_yr": dif.d_lat.to_value(pm, u.dimensionless_angles()),
    }
    return obs, d, float(np.degrees(lon)), float(np.degrees(lat))


def _snapshot(
    params: StarSetsSimulate,
    run: _Run,
    t: float,
    rng: np.random.Generator,
    pool_seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Sample one snapshot of a run at time ``t`` (Myr)."""
    r_gc = params.galactocentric_radius_kpc
    m_to = float(turnoff_mass(t, run.metallicity))
    alive1 = run.m1 <= m_to
    alive2 = (run.m2 > 0) & (run.m2 <= m_to)
    m_sys = np.where(alive1, run.m1, 0.0) + np.where(alive2, run.m2, 0.0)
    exists = m_sys > 0
    n0 = len(run.m1)
    frac = params.escaper_fraction_max * t / params.max_time_myr
    escaped = run.escape_rank < int(np.floor(frac * n0))
    bound = exists & ~escaped
    tail = exists & escaped
    n_b, n_e = int(bound.sum()), int(tail.sum())

    # bound systems: scaled King model
    m_bound = float(m_sys[bound].sum())
    # with no bound stars left, place the tails around the Jacobi radius of what remains
    r_t = jacobi_radius_pc(m_bound if m_bound > 0 else float(m_sys[exists].sum()), r_gc)
    # adiabatic expansion with the stellar-evolution mass loss (escapers excluded)
    expansion = run.initial_mass / max(float(m_sys[exists].sum()), 1e-300)
    r_king = min(run.filling * expansion, MAX_FILLING) * r_t
    v_scale = np.sqrt(G_PC_KMS2_MSUN * m_bound / r_king) if m_bound > 0 else 0.0
    pool_n = max(KING_POOL_SIZE, 1 << int(np.ceil(np.log2(max(n_b, 1)))))
    pool_pos, pool_vel = king_pool(run.w0, pool_seed, pool_n)
    pick = rng.choice(pool_n, size=n_b, replace=False)
    rot = _random_rotation(rng)
    pos_b = pool_pos[pick] @ rot.T * r_king
    vel_b = pool_vel[pick] @ rot.T * v_scale
    sigma = float(np.sqrt(np.mean(np.var(vel_b, axis=0)))) if n_b > 1 else 0.1

    # escapers: leading / trailing tidal tails
    t_esc = (  # time at which each escaper's rank entered the escaped fraction
        params.max_time_myr * run.escape_rank[tail] / (n0 * params.escaper_fraction_max)
        if n_e
        else np.zeros(0)
    )
    side = np.where(rng.random(n_e) < 0.5, 1.0, -1.0)
    direction = np.stack(
        [0.25 * side + 0.15 * rng.normal(size=n_e), side, 0.1 * rng.normal(size=n_e)], axis=1
    )
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    drift = sigma * (0.5 + rng.exponential(size=n_e))
    dist = r_t * (1.0 + 0.5 * rng.exponential(size=n_e))
    dist += drift * np.maximum(t - t_esc, 0.0) * KMS_PC_PER_MYR
    pos_e = dist[:, None] * direction
    vel_e = drift[:, None] * direction + rng.normal(0.0, 0.5 * sigma, size=(n_e, 3))

    # field stars
    n_f = round(params.field_star_fraction * (n_b + n_e))
    pos_f = 3.0 * r_t * np.cbrt(rng.random(n_f))[:, None] * _unit_vectors(rng, n_f)
    vel_f = rng.normal(0.0, FIELD_SIGMA_KMS, size=(n_f, 3))
    m_f = kroupa_inverse_cdf(rng.random(n_f), *params.imf_mass_range)

    # assemble systems: bound, escapers, field
    idx = np.concatenate([np.flatnonzero(bound), np.flatnonzero(tail)])
    a1, a2 = alive1[idx], alive2[idx]
    m1 = np.where(a1, run.m1[idx], 0.0)
    m2 = np.where(a2, run.m2[idx], 0.0)
    l1 = np.where(a1, run.l1[idx], 0.0)
    l2 = np.where(a2, run.l2[idx], 0.0)
    is_bin = a1 & a2
    dpos = np.zeros((len(idx), 3))
    dvel = np.zeros((len(idx), 3))
    if is_bin.any():
        dpos[is_bin], dvel[is_bin] = _binary_photocentre(
            m1[is_bin], m2[is_bin], l1[is_bin], l2[is_bin], rng
        )
    pos = np.concatenate([pos_b, pos_e, pos_f])
    vel = np.concatenate([vel_b, vel_e, vel_f])
    mass = np.concatenate([m1 + m2, m_f])
    lum = np.concatenate([l1 + l2, mass_luminosity(m_f)])
    dpos = np.concatenate([dpos, np.zeros((n_f, 3))])
    dvel = np.concatenate([dvel, np.zeros((n_f, 3))])
    member = np.concatenate([np.ones(len(idx), bool), np.zeros(n_f, bool)])
    binary = np.concatenate([is_bin, np.zeros(n_f, bool)])

    targets = snapshot_targets(pos, vel, mass, r_gc_kpc=r_gc, is_member=member)
    pos = pos - targets["centre_pos"]
    vel = vel - targets["centre_vel"]
    obs, d, lon, lat = _observe(pos + dpos, vel + dvel, rng)

    order = rng.permutation(len(mass))
    cols = {
        "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        "vx": vel[:, 0], "vy": vel[:, 1], "vz": vel[:, 2],
        "mass": mass, **obs, "log_L_L_sol": np.log10(lum),
        "is_member": member.astype(float), "is_binary": binary.astype(float),
    }  # fmt: skip
    elements = {k: np.asarray(cols[k], dtype=np.float32)[order] for k in ELEMENT_COLUMNS}
    per_set = {
        "total_mass_within_2x_r_tidal": targets["total_mass_within_2x_r_tidal"],
        "n_stars_within_2x_r_tidal": targets["n_stars_within_2x_r_tidal"],
        "r_half_mass": targets["r_half_mass"],
        "r_tidal": targets["r_tidal"],
        "distance_pc": d,
        "centre_lon_deg": lon,
        "centre_lat_deg": lat,
        "r_king": r_king,
    }
    return elements, per_set


def simulate(
    params: StarSetsSimulate,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CSRSets:
    """Simulate star-cluster snapshots (see the module docstring for the physics).

    Parameters
    ----------
    params : StarSetsSimulate
        Simulator parameters (runs, snapshots, masses, W0, Z, fractions).
    seed : int, optional
        Seed of everything random (``np.random.default_rng(seed)`` and its
        spawned children); ``params.seed`` when None. The same seed gives the
        same output.
    progress : callable, optional
        ``progress(done, total)`` called after each snapshot.

    Returns
    -------
    CSRSets
        ``n_runs * snapshots_per_run`` sets (snapshots), run-major, time
        ascending within a run. Element columns (float32, one row per system):
        ``x, y, z`` (pc) and ``vx, vy, vz`` (km/s) relative to the density
        centre and centre velocity, ``mass`` (Msun), ``lon_deg, lat_deg``
        (deg), ``pm_lon_coslat_mas_yr, pm_lat_mas_yr`` (mas/yr),
        ``log_L_L_sol`` (dex), ``is_member``, ``is_binary`` (1.0/0.0).
        Per-snapshot columns: ``run_id`` (str), ``snapshot_id`` (int64,
        0..n-1), ``time`` (Myr), ``total_mass_within_2x_r_tidal`` (Msun),
        ``n_stars_within_2x_r_tidal``, ``r_half_mass``, ``r_tidal`` (pc),
        ``distance_pc``, ``centre_lon_deg``, ``centre_lat_deg``,
        ``ic_w0``, ``ic_metallicity``, ``ic_mass_level`` (int64),
        ``ic_mass`` (Msun, realised initial mass), ``ic_filling_factor``
        (King truncation radius / Jacobi radius at t = 0), ``r_king`` (pc).

    Raises
    ------
    InputError
        If the seed is negative or a W0 level is not positive.
    """
    seed = params.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"expected a non-negative integer seed, got {seed!r}", key="seed")
    for w0 in params.w0_levels:
        if not (np.isfinite(w0) and w0 > 0):
            raise InputError(f"expected W0 > 0, got {w0}", key="w0_levels")
    rng = np.random.default_rng(int(seed))
    pool_seed = int(rng.integers(2**32))
    run_rngs = rng.spawn(params.n_runs)
    times = np.linspace(0.0, params.max_time_myr, params.snapshots_per_run)
    total = params.n_runs * params.snapshots_per_run
    elements: list[dict[str, np.ndarray]] = []
    sets: dict[str, list] = {k: [] for k in SET_COLUMNS}
    done = 0
    for i in range(params.n_runs):
        run = _Run(params, i, run_rngs[i])
        snap_rngs = run_rngs[i].spawn(len(times))
        for t, snap_rng in zip(times, snap_rngs, strict=True):
            el, per_set = _snapshot(params, run, float(t), snap_rng, pool_seed)
            elements.append(el)
            sets["run_id"].append(run.run_id)
            sets["snapshot_id"].append(done)
            sets["time"].append(float(t))
            for k, v in per_set.items():
                sets[k].append(v)
            sets["ic_w0"].append(run.w0)
            sets["ic_metallicity"].append(run.metallicity)
            sets["ic_mass_level"].append(run.mass_level)
            sets["ic_mass"].append(run.initial_mass)
            sets["ic_filling_factor"].append(run.filling)
            done += 1
            if progress is not None:
                progress(done, total)
    sizes = np.array([len(e["mass"]) for e in elements], dtype=np.int64)
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    dtypes = {"run_id": str, "snapshot_id": np.int64, "ic_mass_level": np.int64}
    return CSRSets(
        ptr=ptr,
        elements={k: np.concatenate([e[k] for e in elements]) for k in ELEMENT_COLUMNS},
        sets={k: np.asarray(v, dtype=dtypes.get(k, np.float64)) for k, v in sets.items()},
    ).validate()


def simulate_to_file(
    params: StarSetsSimulate,
    seed: int | None,
    path: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> CSRSets:
    """Simulate (:func:`simulate`) and write the raw star-set HDF5 file atomically.

    Parameters
    ----------
    params : StarSetsSimulate
        Simulator parameters.
    seed : int or None
        Seed (``params.seed`` when None).
    path : str or pathlib.Path
        Destination ``.h5`` (groups ``stars`` and ``snapshots``, see
        :func:`astrobatch.io.sets.write_csr_h5`); root attributes hold the
        units (JSON), the parameters (JSON), the seed and package versions.
    progress : callable, optional
        ``progress(done, total)`` per snapshot.

    Returns
    -------
    CSRSets
        The simulated data (as written).
    """
    import galpy

    from astrobatch import __version__ as astrobatch_version

    seed = params.seed if seed is None else seed
    data = simulate(params, seed, progress=progress)
    attrs = {
        "study": "star_sets",
        "source": "simulated: astrobatch.studies.star_sets.simulate (King models, galpy kingdf)",
        "units": json.dumps(UNITS),
        "params": params.model_dump_json(),
        "seed": int(seed),
        "astrobatch_version": str(astrobatch_version),
        "galpy_version": str(galpy.__version__),
        "frame": "x,y,z,vx,vy,vz: cluster-centric, axes parallel to Galactic Cartesian "
        "(x to the Galactic centre, y along rotation); lon/lat/pm: Galactic, heliocentric",
        "binaries": "unresolved: one row per system, 3-D at the centre of mass, "
        "sky quantities at the light-weighted photocentre, log_L_L_sol = log10(L1 + L2)",
    }
    write_csr_h5(path, data, element_group="stars", set_group="snapshots", attrs=attrs)
    return data
