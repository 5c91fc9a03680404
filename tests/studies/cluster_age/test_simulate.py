"""Tests of the cluster_age simulator, its physics and the aperture photometry."""

from __future__ import annotations

import h5py
import numpy as np
import pydantic
import pytest
from scipy.stats import spearmanr

from astrobatch.errors import InputError
from astrobatch.io.cutouts import open_cutouts
from astrobatch.studies.cluster_age import physics as ph
from astrobatch.studies.cluster_age.params import CLUSTER_AGE_BANDS, ClusterAgeSimulate
from astrobatch.studies.cluster_age.photometry import (
    ZEROPOINTS_VEGA,
    aperture_fluxes,
    aperture_magnitudes,
    counts_to_mag,
    mag_to_counts,
)
from astrobatch.studies.cluster_age.simulate import (
    draw_clusters,
    draw_galaxies,
    eff_image,
    load_parent_catalogue,
    psf_blur,
    simulate_to_file,
    splat,
)
from tests.conftest import ROOT

CATALOGUE = ROOT / "data" / "external" / "cluster_age" / "ngc628_Catalog.csv"
needs_catalogue = pytest.mark.skipif(not CATALOGUE.is_file(), reason="LEGUS catalogue missing")


def tiny(**kw) -> ClusterAgeSimulate:
    base = {"n_clusters": 12, "image_size": 32, "n_galaxies": 3, "catalogue_path": str(CATALOGUE)}
    base.update(kw)
    return ClusterAgeSimulate(**base)


# ------------------------------------------------------------------------------------ physics


def test_turnoff_mass_decreases_with_age():
    ages = np.geomspace(3e6, 1e10, 60)
    m_to = ph.turnoff_mass(ages)
    assert np.all(np.diff(m_to) < 0)
    assert ph.turnoff_mass(1e6) == pytest.approx(ph.IMF_M_MAX)  # nothing has evolved yet
    np.testing.assert_allclose(ph.ms_lifetime_yr(m_to), ages, rtol=1e-6)
    assert np.all(ph.death_mass(ages) > m_to)
    # textbook values: ~17 Msun at 10 Myr, ~5 Msun at 100 Myr, ~2 Msun at 1 Gyr
    np.testing.assert_allclose(ph.turnoff_mass([1e7, 1e8, 1e9]), [17, 4.9, 2.1], rtol=0.1)


def test_kroupa_numbers_and_sampling():
    assert ph.kroupa_number_per_msun(8, 120) == pytest.approx(0.0109, rel=0.02)
    assert ph.kroupa_number_per_msun(0.08, 120) == pytest.approx(1 / 0.58, rel=0.05)  # <m>
    m = ph.sample_imf(50000, 8.0, 120.0, np.random.default_rng(0))
    assert m.min() >= 8 and m.max() <= 120
    # xi ∝ m^-2.3: N(>16) / N(>8) = ((16^-1.3 - 120^-1.3) / (8^-1.3 - 120^-1.3))
    expect = (16**-1.3 - 120**-1.3) / (8**-1.3 - 120**-1.3)
    assert np.mean(m > 16) == pytest.approx(expect, abs=0.01)


def test_calzetti_law():
    # A_B - A_V = E(B-V) by construction, R'_V = 4.05 (Calzetti et al. 2000)
    k = ph.calzetti_k([4400.0, 5500.0, 8000.0])
    assert k[1] == pytest.approx(4.05, abs=0.02)
    assert k[0] - k[1] == pytest.approx(1.0, abs=0.1)
    assert k[2] < k[1]


def test_zeropoints_agree_with_synthetic_photometry():
    """Published Vega zero points == Vega through sedpy's HST curves within 0.05 mag."""
    from sedpy import observate

    filters = observate.load_filters([ph.FILTER_CURVES[b] for b in CLUSTER_AGE_BANDS])
    h, c = 6.62607015e-27, 2.99792458e18
    for zp, f in zip(ZEROPOINTS_VEGA, filters, strict=True):
        vega = np.interp(f.wavelength, observate.vega[:, 0], observate.vega[:, 1])
        rate = ph.HST_AREA_CM2 / (h * c) * np.trapezoid(vega * f.transmission * f.wavelength,
                                                        f.wavelength)  # fmt: skip
        assert 2.5 * np.log10(rate) == pytest.approx(zp, abs=0.05)


def test_blackbody_sun_and_colours():
    k_band = ph.band_tables()[2]
    sun = ph.star_magnitudes([0.0], [np.log10(5772.0)], 0.0, 0.0)[0]
    assert sun[3] == pytest.approx(4.81, abs=0.25)  # M_V of the Sun
    hot = ph.star_magnitudes([0.0], [4.5], 0.0, 0.0)[0]
    cool = ph.star_magnitudes([0.0], [3.55], 0.0, 0.0)[0]
    assert hot[1] - hot[4] < -1.0 < 2.0 < cool[1] - cool[4]
    red = ph.star_magnitudes([0.0], [4.5], 0.5, 0.0)[0]
    assert np.all(np.diff(red - hot) < 0)  # extinction decreases with wavelength
    assert np.all(k_band > 0)


def _brightest(age_yr, mass=1e5, seed=1):
    rng = np.random.default_rng(seed)
    m_to, m_hi = float(ph.turnoff_mass(age_yr)), float(ph.death_mass(age_yr))
    m_lo = min(max(1.5, min(8.0, 0.8 * m_to)), 0.999 * m_hi)
    m = ph.sample_imf(int(mass * ph.kroupa_number_per_msun(m_lo, m_hi)), m_lo, m_hi, rng)
    log_l, log_t, alive = ph.stellar_properties(m, age_yr, rng)
    mags = ph.star_magnitudes(log_l[alive], log_t[alive], 0.0, 0.0)
    b = int(np.argmin(mags[:, 4]))
    return mags[b, 4], mags[b, 1] - mags[b, 4]


def test_brightest_stars_follow_the_turnoff():
    """Young: blue; 10-50 Myr: red supergiants (M_814 < -7); 1 Gyr: faint giants."""
    _, col_young = _brightest(3e6)
    i_rsg, col_rsg = _brightest(2e7)
    i_old, _ = _brightest(1.5e9)
    assert col_young < 0.0 < 1.5 < col_rsg
    assert i_rsg < -7.0
    assert i_old > -5.5 and i_old > i_rsg + 2.0


def test_stellar_properties_remnants():
    rng = np.random.default_rng(0)
    log_l, _, alive = ph.stellar_properties([30.0, 30.0, 1.0], [1e6, 1e8, 1e8], rng)
    assert alive.tolist() == [True, False, True] and np.isneginf(log_l[1])


def test_eff_profile_flux_and_radius():
    a = float(ph.eff_core_radius(3.0, 2.5))
    assert ph.eff_enclosed_fraction(3.0, a, 2.5) == pytest.approx(0.5)
    r = ph.eff_sample_radius(np.random.default_rng(0).random(100000), a, 2.5)
    assert np.median(r) == pytest.approx(3.0, rel=0.03)
    size = 64
    for core in (0.05, 0.4, 3.0):  # a core much smaller than a pixel keeps its flux
        img = eff_image(size, 32.3, 31.8, core, 3.0)
        lo = ph.eff_enclosed_fraction(size / 2 - 1, core, 3.0)
        hi = ph.eff_enclosed_fraction(size / np.sqrt(2), core, 3.0)
        assert lo - 0.01 <= img.sum() <= hi + 0.01


# --------------------------------------------------------------------------------- photometry


def test_aperture_recovers_injected_point_source():
    """An isolated noiseless point source (simulator's PSF) is recovered within 0.05 mag."""
    size, mag = 48, np.array([21.0, 22.5, 20.0, 23.0, 19.5])
    counts = mag_to_counts(mag, ZEROPOINTS_VEGA)
    sharp = splat(np.array([24.3]), np.array([23.8]), counts[None, :], size)
    img = psf_blur(sharp, 2.0)[None].astype(np.float32)
    np.testing.assert_allclose(aperture_magnitudes(img), mag[None], atol=0.05)
    # with a flat sky, the annulus median removes it
    np.testing.assert_allclose(aperture_magnitudes(img + 0.3), mag[None], atol=0.05)


def test_aperture_photometry_matches_photutils():
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture

    rng = np.random.default_rng(3)
    imgs = rng.normal(0.1, 0.05, size=(3, 2, 33, 33)).astype(np.float32)
    imgs[:, :, 16, 16] += 50.0
    net, sky = aperture_fluxes(imgs, 4.0, (7.0, 9.0))
    ap = CircularAperture((16, 16), 4.0)
    an = CircularAnnulus((16, 16), 7.0, 9.0)
    for i in range(3):
        for c in range(2):
            med = ApertureStats(imgs[i, c], an).median
            total = ApertureStats(imgs[i, c], ap).sum
            assert sky[i, c] == pytest.approx(med, rel=1e-6)
            assert net[i, c] == pytest.approx(total - med * ap.area, rel=1e-6)


def test_magnitude_conversions_and_nan():
    assert counts_to_mag(mag_to_counts(20.0, 25.0), 25.0) == pytest.approx(20.0)
    img = np.zeros((1, 5, 24, 24), np.float32)
    img[0, :, 10:14, 10:14] = -1.0  # negative net flux
    assert np.isnan(aperture_magnitudes(img)).all()
    with pytest.raises(InputError, match="zeropoints"):
        aperture_magnitudes(img, [25.0])


# --------------------------------------------------------------------------------- simulator


@needs_catalogue
def test_draws_span_the_catalogue():
    parent = load_parent_catalogue(CATALOGUE)
    assert len(parent) == 1262 and np.isfinite(parent.mags).all()
    assert (~parent.detected).sum() == 14  # F275W imputed for the images only
    p = tiny(n_clusters=2 * len(parent), age_jitter_dex=0.0, mag_error_scale=0.0)
    rng = np.random.default_rng(0)
    gals = draw_galaxies(p, rng)
    cl = draw_clusters(p, parent, gals, rng)
    assert np.all(np.bincount(cl["parent"], minlength=len(parent)) == 2)  # no row over-used
    np.testing.assert_allclose(np.sort(cl["log_age"]), np.sort(np.tile(parent.log_age, 2)))
    inner = np.mean((cl["log_age"] >= 7.0) & (cl["log_age"] <= 9.5))
    assert 0.4 < inner < 0.6  # about half the clusters are the "extremes" (< 7 dex)
    assert np.all(np.diff(cl["galaxy"]) >= 0)  # grouped by host
    mu = np.array([g.distance_modulus for g in gals])[cl["galaxy"]]
    np.testing.assert_allclose(cl["mags"], parent.mags[cl["parent"]] + (mu - 29.98)[:, None])
    assert [g.name for g in gals] == ["MOCK_01", "MOCK_02", "MOCK_03"]
    assert len({g.distance_mpc for g in gals}) == 3
    # a catalogue of a farther galaxy (NGC 1566, mu = 31.28) is moved by that distance instead
    q = tiny(n_clusters=2 * len(parent), age_jitter_dex=0.0, mag_error_scale=0.0,
             catalogue_distance_modulus=31.28)  # fmt: skip
    far = draw_clusters(q, parent, gals, np.random.default_rng(1))
    mu_far = np.array([g.distance_modulus for g in gals])[far["galaxy"]]
    np.testing.assert_allclose(far["mags"], parent.mags[far["parent"]] + (mu_far - 31.28)[:, None])


NGC1566 = CATALOGUE.parent / (
    "hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab.gz"
)


def test_ngc1566_tab_drives_the_simulator(tmp_path):
    parent = load_parent_catalogue(NGC1566)
    assert len(parent) == 1573 and np.isfinite(parent.mags).all()
    s = simulate_to_file(tiny(catalogue_path=str(NGC1566), catalogue_distance_modulus=31.28),
                         tmp_path / "n1566.h5")  # fmt: skip
    assert s["n_clusters"] == 12
    with open_cutouts(tmp_path / "n1566.h5") as f:
        assert f.shape == (12, 5, 32, 32) and f.log_ages.max() <= 8.6  # NGC 1566: <= 3e8 yr


@needs_catalogue
def test_simulate_layout_and_determinism(tmp_path):
    calls = []
    s1 = simulate_to_file(tiny(), tmp_path / "a.h5", progress=lambda d, t: calls.append((d, t)))
    simulate_to_file(tiny(), tmp_path / "b.h5")
    simulate_to_file(tiny(seed=12), tmp_path / "c.h5")
    assert calls[-1] == (12, 12)
    assert s1["n_clusters"] == 12 and 0 <= s1["fraction_log_age_7_9p5"] <= 1
    with open_cutouts(tmp_path / "a.h5") as f:
        assert f.shape == (12, 5, 32, 32) and f.band_names == CLUSTER_AGE_BANDS
        assert f.cluster_ids.tolist() == list(range(1, 13))
        assert set(f.galaxy_ids) <= {"MOCK_01", "MOCK_02", "MOCK_03"}
        assert f.log_ages.min() >= 6.0 and f.log_ages.max() <= 10.1
        assert f.catalogue_magnitudes.shape == (12, 5)
        assert np.isfinite(f.catalogue_magnitudes[:, 1:]).all()
        assert f.cluster_log_masses.shape == f.cluster_ebv.shape == (12,)
        assert f.attrs["zeropoints_vega"]["F555W"] == pytest.approx(25.724)
        assert f.attrs["params"]["n_clusters"] == 12  # JSON attributes are decoded
        img = f.read_images()
        assert img.dtype == np.float32 and np.isfinite(img).all()
        # the cluster is at the centre: the brightest region in F555W
        c = 16
        assert img[:, 3, c - 2 : c + 3, c - 2 : c + 3].mean() > img[:, 3].mean()
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for key in a:
            if h5py.check_string_dtype(a[key].dtype):
                assert a[key].asstr()[...].tolist() == b[key].asstr()[...].tolist()
            else:
                assert a[key][...].tobytes() == b[key][...].tobytes(), key
        assert dict(a.attrs) == dict(b.attrs)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "c.h5") as c:
        assert not np.array_equal(a["image_cutouts"][...], c["image_cutouts"][...])


@needs_catalogue
def test_output_independent_of_workers(tmp_path):
    simulate_to_file(tiny(n_clusters=40, image_size=24), tmp_path / "one.h5")
    simulate_to_file(tiny(n_clusters=40, image_size=24, n_workers=2), tmp_path / "two.h5")
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert a["image_cutouts"][...].tobytes() == b["image_cutouts"][...].tobytes()


@needs_catalogue
def test_age_signal_is_in_the_images(tmp_path):
    """Younger clusters are bluer in colours measured on the cutouts (not the catalogue)."""
    s = simulate_to_file(tiny(n_clusters=300, seed=5), tmp_path / "raw.h5")
    assert 0.3 < s["fraction_log_age_7_9p5"] < 0.7
    with open_cutouts(tmp_path / "raw.h5") as f:
        mags = aperture_magnitudes(f.read_images())
        log_age = f.log_ages
    for blue, red, min_rho in (("F336W", "F814W", 0.55), ("F275W", "F555W", 0.55)):
        colour = mags[:, CLUSTER_AGE_BANDS.index(blue)] - mags[:, CLUSTER_AGE_BANDS.index(red)]
        ok = np.isfinite(colour)
        assert ok.mean() > 0.9
        rho, p_value = spearmanr(colour[ok], log_age[ok])
        assert rho > min_rho and p_value < 1e-10, (blue, red, rho)


def test_missing_catalogue_and_bad_params(tmp_path):
    with pytest.raises(InputError, match="not found"):
        simulate_to_file(tiny(catalogue_path=str(tmp_path / "x.csv")), tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(pydantic.ValidationError):
        ClusterAgeSimulate(exposure_s=(1.0, 1.0, 1.0, 1.0, 0.0))
    with pytest.raises(pydantic.ValidationError):
        ClusterAgeSimulate(field_sfr_range=(0.1, 0.01))
