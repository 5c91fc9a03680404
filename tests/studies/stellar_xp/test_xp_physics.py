"""stellar_xp physics: relations that could silently go wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrobatch.studies.stellar_xp import physics as P

ROOT = Path(__file__).resolve().parents[3]


def _stars(**kw):
    n = max(np.size(v) for v in kw.values())
    base = {"teff": 5772.0, "logg": 4.44, "fe_h": 0.0, "alpha": 0.0, "radius": 1.0}
    base.update(kw)
    return {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy() for k, v in base.items()}


def test_sun_and_colour_temperature():
    m = P.synthetic_magnitudes(P.model_spectrum(_stars(teff=[5772.0])))
    for band, value in P.SUN_ABS_MAG.items():  # the zero points reproduce the Sun
        assert m[band][0] == pytest.approx(value, abs=1e-3)
    teff = np.linspace(3500, 10000, 14)
    m = P.synthetic_magnitudes(P.model_spectrum(_stars(teff=teff)))
    assert np.all(np.diff(m["BP"] - m["RP"]) < 0)  # hotter is bluer
    assert np.all(np.diff(m["G"] - m["KS"]) < 0)


def test_metallicity_and_gravity_leave_imprints():
    m = P.synthetic_magnitudes(P.model_spectrum(_stars(teff=5000.0, fe_h=[-2.0, -1.0, 0.0, 0.4])))
    assert np.all(np.diff(m["U_SDSS"] - m["G_SDSS"]) > 0)  # line blanketing in the blue
    spec = P.model_spectrum(_stars(teff=4500.0, logg=[1.5, 4.5]))
    i = np.argmin(np.abs(P.WAVE_NM - 854.2))
    j = np.argmin(np.abs(P.WAVE_NM - 830.0))
    depth = 1 - spec[:, i] / spec[:, j]
    assert depth[0] > depth[1]  # the Ca triplet is stronger in giants


def test_extinction_law_and_reddening():
    assert P.ccm89(np.array([549.0]))[0] == pytest.approx(1.0, abs=0.01)
    a = P.ccm89(P.WAVE_NM)
    assert np.all(np.diff(a[P.WAVE_NM < 3000]) < 0)  # monotone, falls to the infrared
    flux = P.model_spectrum(_stars(teff=[6000.0, 6000.0]))
    flux[1] *= 10 ** (-0.4 * P.R_V * 0.5 * a)
    m = P.synthetic_magnitudes(flux)
    e_bprp = (m["BP"] - m["RP"])[1] - (m["BP"] - m["RP"])[0]
    assert 0.5 < e_bprp < 0.8  # E(BP-RP) ~ 1.3 E(B-V) for a G star


def test_hermite_basis_orthonormal():
    x = np.linspace(-15, 15, 6001)
    h = P.hermite_functions(x)
    gram = h.T @ h * (x[1] - x[0])
    np.testing.assert_allclose(gram, np.eye(55), atol=1e-8)
    bp = P.pseudo_wavelength(np.array([330.0, 680.0]), "bp")
    np.testing.assert_allclose(bp, [-P.XP_EDGE, P.XP_EDGE])


def test_xp_coefficients_follow_flux_and_calibration():
    flux = P.model_spectrum(_stars(teff=[5000.0, 5000.0], radius=[1.0, 2.0]))
    m = P.synthetic_magnitudes(flux)
    c = P.xp_coefficients(flux, m["BP"], "bp")
    assert c.shape == (2, 55) and np.all(c[:, 0] > 0)
    np.testing.assert_allclose(c[1] / c[0], 4.0, rtol=1e-9)  # linear in the flux
    assert np.all(np.abs(c[:, 3:]) < 0.1 * c[:, :1])  # the first coefficient dominates
    # the scale is calibrated on the real chunk file (medians of bp_1, rp_1 of G < 17.65 stars)
    from astrobatch.io.gaia_xp import read_gaia_xp
    from astrobatch.studies.stellar_xp.simulate import draw_stars

    real = read_gaia_xp(ROOT / "data/external/stellar_xp/gaia_dr3_xp_continuous_chunk0.fits")
    sim = draw_stars(3000, 17.65, np.random.default_rng(0))
    for band in ("bp", "rp"):
        diff = np.median(np.log10(sim[f"{band}_coef"][:, 0])) - np.median(
            np.log10(real[f"{band}_1"])
        )
        assert abs(diff) < 0.15, (band, diff)


def test_errors_scale_with_magnitude():
    rng = np.random.default_rng(0)
    e = P.xp_errors(np.array([100.0, 10000.0]), "bp", rng)
    assert np.all(e[1] > e[0]) and np.all(e[1] / 10000 < e[0] / 100)  # relative error falls
    assert P.magnitude_error(np.array(20.0), 0.01, 22.0) > P.magnitude_error(
        np.array(15.0), 0.01, 22.0
    )
    assert P.parallax_error(np.array(17.0)) > P.parallax_error(np.array(12.0))


def test_population_ranges():
    rng = np.random.default_rng(1)
    s = P.stellar_parameters(P.sample_population(5000, rng), rng)
    assert 3000 < s["teff"].min() and s["teff"].max() < 16000
    assert 0.5 < s["logg"].min() and s["logg"].max() < 5.2
    assert np.all(s["mass"] > 0.4) and np.all(s["radius"] > 0.2)
    giants = s["stage"] == 2
    assert np.median(s["logg"][giants]) < 3.5 < np.median(s["logg"][s["stage"] == 0])
    halo = s["component"] == 2
    assert np.mean(s["alpha"][halo]) > np.mean(s["alpha"][s["component"] == 0]) + 0.15
