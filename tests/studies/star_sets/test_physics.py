"""Tests of the star_sets physics: IMF, luminosity, turnoff, Jacobi radius, centre, targets."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from galpy.potential import MWPotential2014, rtide

from astrobatch.errors import InputError
from astrobatch.studies.star_sets.physics import (
    density_centre,
    jacobi_radius_pc,
    kroupa_inverse_cdf,
    mass_luminosity,
    sample_kroupa_imf,
    snapshot_targets,
    turnoff_mass,
)


def _loglog_slope(m: np.ndarray, lo: float, hi: float, nbins: int = 12) -> float:
    """Slope of log dN/dm vs log m from a log-binned histogram (Poisson weights)."""
    edges = np.geomspace(lo, hi, nbins + 1)
    counts, _ = np.histogram(m, edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    ok = counts > 0
    dndm = counts[ok] / np.diff(edges)[ok]
    slope, _ = np.polyfit(np.log(centres[ok]), np.log(dndm), 1, w=np.sqrt(counts[ok]))
    return slope


def test_imf_total_mass_and_slopes():
    rng = np.random.default_rng(0)
    m = sample_kroupa_imf(2e5, rng)
    assert abs(m.sum() - 2e5) <= 25.0  # stop-nearest: within m_max / 2
    assert m.min() >= 0.08 and m.max() <= 50.0
    assert _loglog_slope(m, 1.0, 30.0) == pytest.approx(-2.3, abs=0.1)
    assert _loglog_slope(m, 0.08, 0.5) == pytest.approx(-1.3, abs=0.1)
    # mean mass of the Kroupa IMF on [0.08, 50]: ~0.55 Msun (number fractions of the two segments)
    assert m.mean() == pytest.approx(0.55, rel=0.03)


def test_imf_small_total_and_errors():
    rng = np.random.default_rng(1)
    m = sample_kroupa_imf(0.5, rng)
    assert len(m) >= 1 and abs(m.sum() - 0.5) <= 25.0
    with pytest.raises(InputError):
        sample_kroupa_imf(-1.0, rng)
    with pytest.raises(InputError):
        sample_kroupa_imf(10.0, rng, m_min=1.0, m_max=0.5)
    with pytest.raises(InputError):
        kroupa_inverse_cdf([1.5])


def test_kroupa_inverse_cdf_edges_and_monotone():
    u_ = np.linspace(0, 1, 1001)
    m = kroupa_inverse_cdf(u_, 0.08, 50.0)
    assert m[0] == pytest.approx(0.08) and m[-1] == pytest.approx(50.0)
    assert np.all(np.diff(m) > 0)
    # single-segment IMF above the break
    m2 = kroupa_inverse_cdf(u_, 1.0, 10.0)
    assert m2[0] == pytest.approx(1.0) and m2[-1] == pytest.approx(10.0)


def test_mass_luminosity():
    np.testing.assert_allclose(
        mass_luminosity([0.1, 1.0, 3.0, 60.0]),
        [0.23 * 0.1**2.3, 1.0, 1.4 * 3.0**3.5, 32000 * 60.0],
    )
    assert mass_luminosity(0.0) == 0.0
    with pytest.raises(InputError):
        mass_luminosity([-1.0])


def test_turnoff_mass():
    assert turnoff_mass(1e4, 0.02) == pytest.approx(1.0)
    assert np.isinf(turnoff_mass(0.0, 0.02))
    m = turnoff_mass([10.0, 100.0, 1000.0], 0.02)
    assert np.all(np.diff(m) < 0)
    assert m[1] == pytest.approx(100.0**0.4)
    assert turnoff_mass(100.0, 0.0002) < turnoff_mass(100.0, 0.02)  # metal-poor evolve faster
    with pytest.raises(InputError):
        turnoff_mass(-1.0)
    with pytest.raises(InputError):
        turnoff_mass(10.0, 0.0)


def test_jacobi_radius_matches_galpy_and_scales():
    expected = rtide(
        MWPotential2014, 8 * u.kpc, 0 * u.kpc, M=1e4 * u.Msun, ro=8.0, vo=220.0, quantity=True
    ).to_value(u.pc)
    assert jacobi_radius_pc(1e4, 8.0) == pytest.approx(expected, rel=1e-10)
    assert 25.0 < expected < 35.0  # ~30 pc for 1e4 Msun at the solar radius
    r = jacobi_radius_pc(np.array([1e3, 8e3, 0.0]))
    assert r.shape == (3,)
    assert r[1] / r[0] == pytest.approx(2.0, rel=1e-12)
    assert r[2] == 0.0
    assert jacobi_radius_pc(1e4, 12.0) > jacobi_radius_pc(1e4, 8.0)
    with pytest.raises(InputError):
        jacobi_radius_pc(-5.0)
    with pytest.raises(InputError):
        jacobi_radius_pc(1e3, 0.0)


def test_density_centre_recovers_offset_of_king_sample():
    from astrobatch.studies.star_sets.simulate import king_pool

    pos, _ = king_pool(5.0, 11, 20000)
    rng = np.random.default_rng(2)
    offset = np.array([3.0, -2.0, 5.0])
    core = pos * 10.0 + offset  # r_t = 10 pc
    # a lopsided, sparse tail that drags the plain mean by several pc
    tail = np.column_stack([rng.uniform(30, 80, 4000), rng.uniform(-20, 20, (4000, 2))])
    allpos = np.concatenate([core, tail])
    mass = rng.uniform(0.1, 2.0, len(allpos))
    c = density_centre(allpos, mass)
    assert np.linalg.norm(c - offset) < 0.3
    assert np.linalg.norm(np.average(allpos, axis=0, weights=mass) - offset) > 5.0
    with pytest.raises(InputError):
        density_centre(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(InputError):
        density_centre(allpos, mass, k=1)


def _directions(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_snapshot_targets_constructed_case():
    rng = np.random.default_rng(3)
    # core: 1000 stars of 1 Msun in mirrored pairs at radii 0.001, 0.002, ..., 0.5 pc
    radii = 0.001 * np.arange(1, 501)
    half = radii[:, None] * _directions(rng, 500)
    core = np.concatenate([half, -half])

    def pair(r, m):
        d = _directions(rng, 1) * r
        return np.concatenate([d, -d]), np.full(2, m)

    p5, m5 = pair(5.0, 10.0)  # inside r_t
    p20, m20 = pair(20.0, 5.0)  # between r_t and 2 r_t
    p40, m40 = pair(40.0, 7.0)  # beyond 2 r_t
    pf, mf = pair(3.0, 100.0)  # heavy non-members (field) near the centre
    pos = np.concatenate([core, p5, p20, p40, pf])
    mass = np.concatenate([np.ones(1000), m5, m20, m40, mf])
    member = np.ones(len(pos), bool)
    member[-2:] = False
    vel = np.concatenate([rng.normal(size=(500, 3)), np.zeros((508, 3))])
    vel[500:1000] = -vel[:500]  # mirrored core velocities average to zero
    vel += np.array([1.0, 2.0, 3.0])
    vel[-2:] = 100.0  # non-members must not move the centre velocity
    vel[1004:1006] = 50.0  # beyond r_t: not in the centre velocity either

    t = snapshot_targets(pos, vel, mass, r_gc_kpc=8.0, is_member=member)
    np.testing.assert_allclose(t["centre_pos"], 0.0, atol=1e-9)
    # hand computation: M(< r_t) = 1000 + 20 -> r_t = r_J(1020) ~ 13.8 pc; 2 r_t ~ 27.6 pc
    r_t = jacobi_radius_pc(1020.0)
    assert 20.0 / 2 < r_t < 20.0 < 2 * r_t < 40.0
    assert t["r_tidal"] == pytest.approx(r_t, rel=1e-12)
    assert t["total_mass_within_2x_r_tidal"] == pytest.approx(1000 + 20 + 10)
    assert t["n_stars_within_2x_r_tidal"] == 1004
    assert t["mass_within_r_tidal"] == pytest.approx(1020.0)
    # half of 1020 Msun is reached at the 510th star: the pair at 0.255 pc
    assert t["r_half_mass"] == pytest.approx(0.255)
    np.testing.assert_allclose(t["centre_vel"], [1.0, 2.0, 3.0], atol=1e-12)
    assert t["converged"]

    # counting the heavy field stars as members changes the answer
    t_all = snapshot_targets(pos, vel, mass, r_gc_kpc=8.0)
    assert t_all["total_mass_within_2x_r_tidal"] == pytest.approx(1030 + 200)


def test_snapshot_targets_errors():
    pos = np.zeros((4, 3))
    with pytest.raises(InputError):
        snapshot_targets(pos, pos, np.ones(4), is_member=np.zeros(4, bool))
    with pytest.raises(InputError):
        snapshot_targets(pos, pos, np.ones(3))
    with pytest.raises(InputError):
        snapshot_targets(pos, pos, -np.ones(4))
    with pytest.raises(InputError):
        snapshot_targets(np.zeros((4, 2)), pos, np.ones(4))
