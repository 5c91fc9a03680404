"""cluster_finder physics: NFW radii, angular sizes, red sequence, member counts, noise."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.cosmology import FlatLambdaCDM
from scipy.integrate import quad
from scipy.optimize import brentq

from astrobatch.errors import InputError
from astrobatch.studies.cluster_finder import physics
from astrobatch.studies.cluster_finder.geometry import richness_radius

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data" / "external" / "cluster_finder"


def _sigma_nfw(x: float) -> float:
    """Projected NFW surface density (Golse & Kneib 2002), units of 2 rho_s r_s."""
    if abs(x - 1.0) < 1e-8:
        return 1.0 / 3.0
    if x < 1:
        return (1 - np.arccosh(1 / x) / np.sqrt(1 - x * x)) / (x * x - 1)
    return (1 - np.arccos(1 / x) / np.sqrt(x * x - 1)) / (x * x - 1)


def _mass_2d(x: float) -> float:
    """Projected mass inside x by direct integration of the surface density."""
    return quad(lambda t: t * _sigma_nfw(t), 0.0, x, points=[1.0] if x > 1 else None)[0]


def test_nfw_projected_mass_is_the_integral_of_the_surface_density():
    xs = np.array([1e-4, 0.01, 0.3, 0.999, 1.0, 1.5, 3.0, 8.0])
    closed = physics.nfw_projected_mass(xs)
    direct = np.array([_mass_2d(x) for x in xs])
    np.testing.assert_allclose(closed, direct, rtol=1e-6, atol=1e-12)
    assert np.all(np.diff(closed) > 0)


@pytest.mark.parametrize("concentration", [3.0, 6.7])
def test_nfw_radii_inside_r_lambda_with_the_analytic_median(concentration):
    r_lam = float(richness_radius(60.0, h=1.0))  # h^-1 Mpc
    rng = np.random.default_rng(4)
    r = physics.sample_nfw_radii(40_000, r_lam, concentration, rng)
    assert r.shape == (40_000,)
    assert r.min() >= 0 and r.max() <= r_lam
    total = _mass_2d(concentration)
    x_med = brentq(lambda x: _mass_2d(x) - 0.5 * total, 1e-6, concentration)
    median = x_med / concentration * r_lam
    # the sample median's standard error is ~0.5 / (f(m) sqrt(n)): well below 1.5 %
    assert np.median(r) == pytest.approx(median, rel=0.015)


def test_nfw_rejects_bad_arguments():
    with pytest.raises(InputError, match="concentration"):
        physics.sample_nfw_radii(3, 1.0, 0.0)
    with pytest.raises(InputError, match="r_max"):
        physics.sample_nfw_radii(3, -1.0)


@pytest.mark.parametrize("h0", [70.0, 67.7])
def test_angular_radius_matches_astropy(h0):
    z = np.array([0.05, 0.2, 0.5])
    r_hinv = np.array([0.8, 1.0, 1.2])
    got = physics.angular_radius_arcmin(r_hinv, z, h0=h0, om0=0.3)
    cosmo = FlatLambdaCDM(H0=h0, Om0=0.3)
    kpc = r_hinv / (h0 / 100.0) * 1000.0
    want = (cosmo.arcsec_per_kpc_proper(z) * kpc * u.kpc).to_value(u.arcmin)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.all(np.diff(got[:2]) < 0)  # farther is smaller (below the D_A turnover)
    with pytest.raises(InputError, match="redshift"):
        physics.angular_radius_arcmin(1.0, 0.0)


def test_red_sequence_reddens_with_redshift():
    z = np.linspace(0.05, 0.6, 56)
    colours = physics.red_sequence_colours(z)
    assert colours.shape == (56, 4)
    assert np.all(np.diff(colours[:, 1]) > 0)  # g - r
    assert np.all(np.diff(colours[:, 2]) > 0)  # r - i
    g_r = physics.red_sequence_colours(np.array([0.1, 0.4]))[:, 1]
    np.testing.assert_allclose(g_r, [1.0, 1.8], atol=0.02)


def test_member_magnitudes_on_the_red_sequence_at_m_star():
    rng = np.random.default_rng(0)
    z = 0.25
    mags = physics.member_magnitudes(z, np.ones(4000), rng)
    assert mags.shape == (4000, 5)
    np.testing.assert_allclose(np.median(mags[:, 3]), physics.mstar_i(z), atol=1e-9)
    colours = np.median(-np.diff(mags, axis=1), axis=0)
    np.testing.assert_allclose(colours, physics.red_sequence_colours(z), atol=0.01)
    assert np.std(mags[:, 1] - mags[:, 2]) == pytest.approx(0.05, rel=0.1)


def test_m_star_grows_with_redshift_and_the_bcg_is_brighter():
    z = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m = physics.mstar_i(z)
    assert np.all(np.diff(m) > 0)
    assert m[0] == pytest.approx(16.2, abs=0.15)  # redMaPPer DR8 m*(0.1) ~ 16.3
    rng = np.random.default_rng(1)
    bcg = np.array([physics.bcg_luminosity(rng) for _ in range(2000)])
    assert np.median(-2.5 * np.log10(bcg)) == pytest.approx(physics.BCG_DELTA_MAG, abs=0.03)


@pytest.mark.parametrize("richness", [10.0, 40.0, 120.0])
def test_member_count_is_poisson_with_mean_lambda(richness):
    rng = np.random.default_rng(int(richness))
    draws = [physics.draw_candidates(richness, rng) for _ in range(3000)]
    n_members = np.array([m.sum() for _, m in draws])
    sum_p = np.array([p.sum() for p, _ in draws])
    se = np.sqrt(richness / len(draws))
    assert abs(n_members.mean() - richness) < 4 * se
    assert np.var(n_members) == pytest.approx(richness - 1, rel=0.12)  # 1 + Poisson(λ - 1)
    assert abs(sum_p.mean() - richness) < 4 * se
    assert all(p[0] == 1.0 and m[0] for p, m in draws)  # the BCG


def test_membership_probabilities_are_calibrated():
    rng = np.random.default_rng(2)
    draws = [physics.draw_candidates(50.0, rng) for _ in range(400)]
    p = np.concatenate([d[0] for d in draws])
    m = np.concatenate([d[1] for d in draws])
    bins = np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    for b in range(5):
        sel = bins == b
        assert m[sel].mean() == pytest.approx(p[sel].mean(), abs=0.03)


def test_schechter_luminosities_above_the_cut():
    rng = np.random.default_rng(3)
    lum = physics.schechter_luminosities(20_000, rng)
    assert lum.min() >= physics.LUMINOSITY_CUT and lum.max() <= 10.0
    # alpha = -1: the mean is (exp(-a) - exp(-b)) / E1-integral, checked numerically
    num = quad(lambda x: np.exp(-x), 0.2, 10.0)[0]
    den = quad(lambda x: np.exp(-x) / x, 0.2, 10.0)[0]
    assert lum.mean() == pytest.approx(num / den, rel=0.03)


def test_spherical_offset_matches_astropy():
    rng = np.random.default_rng(5)
    ra, dec = rng.uniform(0, 360, 50), rng.uniform(-80, 80, 50)
    pa, sep = rng.uniform(0, 360, 50), rng.uniform(0, 0.5, 50)
    got_ra, got_dec = physics.spherical_offset(ra, dec, pa, sep)
    want = SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(pa * u.deg, sep * u.deg)
    got = SkyCoord(got_ra * u.deg, got_dec * u.deg)
    assert np.max(got.separation(want).arcsec) < 1e-6


def test_magnitude_errors_follow_the_real_dr8_table():
    path = DATA / "redmapper_test_dr8_gals_with_zred.fit"
    if not path.is_file():
        pytest.skip("real DR8 galaxy table not present")
    from astropy.io import fits

    data = fits.getdata(path, 1)
    mags = np.asarray(data["MODEL_MAG"], np.float64)
    errs = np.asarray(data["MODEL_MAGERR"], np.float64)
    ok = physics.valid_magnitude_rows(mags, errs)
    assert ok.mean() > 0.9
    model = physics.magnitude_errors(mags[ok])
    for band in (1, 2, 3):  # g, r, i
        sel = (mags[ok, band] > 19) & (mags[ok, band] < 21)
        ratio = np.median(model[sel, band] / errs[ok][sel, band])
        assert ratio == pytest.approx(1.0, abs=0.2)


def test_sky_sigma_scales_with_the_pixel_and_the_depth():
    s = physics.sky_sigma_per_pixel([22.2, 21.3], 1.4, 0.396127)
    s2 = physics.sky_sigma_per_pixel([22.2, 21.3], 1.4, 2 * 0.396127)
    np.testing.assert_allclose(s2, 2 * s)
    assert s[1] / s[0] == pytest.approx(10 ** (0.4 * 0.9))
    # a point source at the depth has S/N 5 with its optimal weight
    a_eff = np.pi / (2 * np.log(2)) * 1.4**2
    f5 = physics.fluxes(22.2)
    assert f5 / (s[0] * np.sqrt(a_eff) / 0.396127) == pytest.approx(5.0)
