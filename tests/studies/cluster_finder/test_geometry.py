"""cluster_finder geometry: pixel convention, member boxes, footprint, empty fields, scalings."""

from __future__ import annotations

import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.studies.cluster_finder.geometry import (
    BOX_COLUMNS,
    boxes_from_members,
    empty_field_centres,
    footprint_from_positions,
    in_footprint,
    mass_proxy,
    min_separation_arcmin,
    pixel_to_sky,
    read_footprint,
    richness_radius,
    sky_to_pixel,
    write_footprint,
)

# an image on the equator: offsets along the axes through the centre are exact
RA0, DEC0, SCALE, SIZE = 30.0, 0.0, 1.8, 201  # centre pixel 100, 1 px = 1.8" = 0.0005 deg
C = (SIZE - 1) / 2
PX = SCALE / 3600.0  # one pixel in degrees


def test_axes_north_up_east_left():
    ra = [RA0, RA0, RA0 + 20 * PX, RA0 - 10 * PX]
    dec = [DEC0, DEC0 + 30 * PX, DEC0, DEC0]
    x, y = sky_to_pixel(ra, dec, RA0, DEC0, SCALE, SIZE)
    assert x.dtype == np.float64 and y.dtype == np.float64
    np.testing.assert_allclose(x, [C, C, C - 20, C + 10], atol=1e-9)  # east -> -x
    np.testing.assert_allclose(y, [C, C + 30, C, C], atol=1e-9)  # north -> +y


@pytest.mark.parametrize("ra0, dec0", [(30.0, 0.0), (142.1, 65.1), (0.001, -30.0), (359.99, 80.0)])
def test_pixel_sky_round_trip(ra0, dec0):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 2047.5, (2, 50))
    ra, dec = pixel_to_sky(x, y, ra0, dec0, 0.396127, 2048)
    assert ((ra >= 0) & (ra < 360)).all()
    x2, y2 = sky_to_pixel(ra, dec, ra0, dec0, 0.396127, 2048)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    np.testing.assert_allclose(y2, y, atol=1e-6)
    # the centre maps to the centre pixel
    xc, yc = sky_to_pixel(ra0, dec0, ra0, dec0, 0.396127, 2048)
    assert xc == pytest.approx(1023.5) and yc == pytest.approx(1023.5)


def _members():
    """Four clusters on the image axes (pixel positions exact):

    1: three members in the image, box x 80..100, y 90..130;
    2: one member inside at x = 195, one at x = 215: centre x = 205 outside -> dropped;
    3: members at x = 190 and 210 on the equator: centre 200 inside -> kept, zero height
       widened to 4 px (y 98..102), inside fraction (200.5 - 190) / 20 = 0.525;
    4: members at x = -50 and 250: centre inside but no member inside -> not seen.
    """
    ids, ra, dec = [], [], []
    for cid, x, y in [
        (1, C, C + 30),
        (1, C - 20, C),
        (1, C, C - 10),
        (2, 195, C),
        (2, 215, C),
        (3, 190, C),
        (3, 210, C),
        (4, -50, C),
        (4, 250, C),
    ]:
        ids.append(cid)
        ra.append(RA0 - (x - C) * PX)
        dec.append(DEC0 + (y - C) * PX)
    return np.array(ids), np.array(ra), np.array(dec)


def test_boxes_hand_computed():
    ids, ra, dec = _members()
    b = boxes_from_members(ids, ra, dec, RA0, DEC0, SCALE, SIZE)
    assert tuple(b) == BOX_COLUMNS
    assert b["cluster_id"].tolist() == [1, 3]
    assert b["cluster_id"].dtype == np.int64
    np.testing.assert_allclose(b["x_min"], [80, 190], atol=1e-7)
    np.testing.assert_allclose(b["x_max"], [100, 210], atol=1e-7)
    np.testing.assert_allclose(b["y_min"], [90, 98], atol=1e-7)
    np.testing.assert_allclose(b["y_max"], [130, 102], atol=1e-7)
    np.testing.assert_allclose(b["x_max_clip"], [100, 200.5], atol=1e-7)
    np.testing.assert_allclose(b["inside_fraction"], [1.0, 0.525], atol=1e-7)
    assert b["n_members"].tolist() == [3, 2] and b["n_inside"].tolist() == [3, 1]


def test_boxes_secondary_kept_iff_centre_inside():
    ids, ra, dec = _members()
    keep = ids != 2
    # move cluster 2's far member to x = 203: centre 199 inside -> kept now
    ra2 = ra.copy()
    ra2[(ids == 2) & (ra < RA0 - 100 * PX)] = RA0 - (203 - C) * PX
    b = boxes_from_members(ids, ra2, dec, RA0, DEC0, SCALE, SIZE)
    assert b["cluster_id"].tolist() == [1, 2, 3]
    frac = b["inside_fraction"][1]
    assert frac == pytest.approx((200.5 - 195) / 8)  # x 195..203, y widened to 4
    assert boxes_from_members(ids[keep], ra[keep], dec[keep], RA0, DEC0, SCALE, SIZE)[
        "cluster_id"
    ].tolist() == [1, 3]
    # min_members: cluster 3 has a single member inside
    b2 = boxes_from_members(ids, ra, dec, RA0, DEC0, SCALE, SIZE, min_members=2)
    assert b2["cluster_id"].tolist() == [1]


def test_single_member_box_has_min_side():
    b = boxes_from_members([7], [RA0], [DEC0 + 5 * PX], RA0, DEC0, SCALE, SIZE, min_box_side_px=6)
    np.testing.assert_allclose(
        [b["x_min"][0], b["x_max"][0], b["y_min"][0], b["y_max"][0]],
        [C - 3, C + 3, C + 2, C + 8],
        atol=1e-7,
    )
    assert b["inside_fraction"][0] == pytest.approx(1.0)
    empty = boxes_from_members([], [], [], RA0, DEC0, SCALE, SIZE)
    assert all(len(v) == 0 for v in empty.values())
    with pytest.raises(InputError, match="min_box_side_px"):
        boxes_from_members([7], [RA0], [DEC0], RA0, DEC0, SCALE, SIZE, min_box_side_px=0)
    with pytest.raises(InputError, match="pixel_scale"):
        sky_to_pixel([RA0], [DEC0], RA0, DEC0, -1.0, SIZE)


@pytest.fixture(scope="module")
def sky():
    """A footprint of 10 deg around (150, 30) at nside 32 and 40 clusters inside."""
    rng = np.random.default_rng(5)
    fp = footprint_from_positions([150.0], [30.0], nside=32, radius_deg=10.0)
    cra = 150 + rng.uniform(-6, 6, 40)
    cdec = 30 + rng.uniform(-6, 6, 40)
    return fp, cra, cdec


def test_empty_fields_far_from_clusters_and_inside(sky):
    fp, cra, cdec = sky
    assert fp.dtype == bool and fp.size == 12 * 32**2 and 0 < fp.sum() < fp.size
    ra, dec = empty_field_centres(fp, cra, cdec, 60, rng=1)
    assert ra.shape == dec.shape == (60,) and ra.dtype == np.float64
    assert in_footprint(fp, ra, dec).all()
    assert (min_separation_arcmin(ra, dec, cra, cdec) > 20.0).all()
    again = empty_field_centres(fp, cra, cdec, 60, rng=1)
    np.testing.assert_array_equal(again[0], ra)
    # the positions spread over the footprint (not one pixel)
    assert np.ptp(ra) > 5 and np.ptp(dec) > 5


def test_empty_fields_impossible_raise(sky):
    fp, _, _ = sky
    # clusters every 0.2 deg over the whole footprint: nowhere is 20' from all of them
    g_ra, g_dec = np.meshgrid(np.arange(130, 170, 0.2), np.arange(15, 45, 0.2))
    with pytest.raises(InputError, match="min_separation_arcmin"):
        empty_field_centres(fp, g_ra.ravel(), g_dec.ravel(), 5, rng=0, max_tries=2)
    with pytest.raises(InputError, match="no pixel inside"):
        empty_field_centres(np.zeros_like(fp), [], [], 1)


def test_min_separation_values():
    sep = min_separation_arcmin([10.0, 10.0], [0.0, 1.0], [10.0, 10.0], [0.5, 0.1])
    np.testing.assert_allclose(sep, [6.0, 30.0], atol=1e-6)
    assert np.isinf(min_separation_arcmin([1.0], [1.0], [], [])).all()


def test_footprint_fits_round_trip(tmp_path, sky):
    fp = sky[0]
    p = tmp_path / "footprint.fits"
    write_footprint(p, fp)
    assert not list(tmp_path.glob(".*.tmp"))
    back = read_footprint(p)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, fp)
    assert in_footprint(back, [150.0, 330.0], [30.0, -30.0]).tolist() == [True, False]


def test_footprint_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "not_a_map.fits"
    bad.write_text("this is not FITS")
    with pytest.raises(InputError, match=r"not_a_map\.fits"):
        read_footprint(bad)
    with pytest.raises(InputError, match=r"missing\.fits"):
        read_footprint(tmp_path / "missing.fits")
    with pytest.raises(InputError, match="12 \\* nside"):
        write_footprint(tmp_path / "x.fits", np.ones(100, bool))


def test_mass_and_radius():
    assert mass_proxy(40.0) == pytest.approx(10**14.344)
    assert mass_proxy(np.array([80.0]))[0] == pytest.approx(10**14.344 * 2**1.33)
    assert richness_radius(100.0, h=1.0) == pytest.approx(1.0)
    assert richness_radius(3200.0, h=0.5) == pytest.approx(2.0 * 2.0)  # 32**0.2 = 2
    with pytest.raises(InputError, match="richness"):
        mass_proxy([10.0, 0.0])
