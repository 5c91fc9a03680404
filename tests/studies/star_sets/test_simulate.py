"""Tests of the star_sets simulator (King models sampled with galpy)."""

from __future__ import annotations

import json
import re

import astropy.units as u
import h5py
import numpy as np
import pytest
from galpy.df import kingdf

from astrobatch.errors import InputError
from astrobatch.io.sets import read_csr_h5
from astrobatch.studies.star_sets.params import STAR_COLUMNS, StarSetsSimulate
from astrobatch.studies.star_sets.physics import G_PC_KMS2_MSUN, snapshot_targets
from astrobatch.studies.star_sets.simulate import (
    ELEMENT_COLUMNS,
    SET_COLUMNS,
    initial_conditions,
    king_pool,
    run_id,
    seeded_legacy_random,
    simulate,
    simulate_to_file,
)

TINY = StarSetsSimulate(n_runs=3, snapshots_per_run=2, log10_mass_range=(2.5, 2.8))
LONGER = StarSetsSimulate(n_runs=3, snapshots_per_run=5, log10_mass_range=(2.5, 2.8))


@pytest.fixture(scope="module")
def tiny():
    return simulate(TINY, 1)


@pytest.fixture(scope="module")
def longer():
    return simulate(LONGER, 5)


def _snap(data, i, key):
    return data.elements[key][data.ptr[i] : data.ptr[i + 1]]


def test_king_scaling_matches_physical_kingdf():
    """Scaled natural-unit pool == galpy kingdf set up in physical units."""
    w0, m, rt = 5.0, 2000.0, 12.0
    phys = kingdf(w0, M=m * u.Msun, rt=rt * u.pc, ro=8.0, vo=220.0)
    with seeded_legacy_random(3):
        o = phys.sample(n=40000)
    r_phys = o.r() * 1000.0  # kpc -> pc
    sig_phys = np.std(np.stack([o.vx(), o.vy(), o.vz()], axis=1))

    pos, vel = king_pool(w0, 7, 40000)
    r_nat = np.linalg.norm(pos, axis=1) * rt
    sig_nat = np.std(vel * np.sqrt(G_PC_KMS2_MSUN * m / rt))
    assert np.median(r_nat) == pytest.approx(np.median(r_phys), rel=0.03)
    assert sig_nat == pytest.approx(sig_phys, rel=0.03)
    assert r_nat.max() <= rt * (1 + 1e-9)


def test_king_pool_is_deterministic_and_leaves_global_state():
    # the global legacy generator (which galpy samples from) must be left as it was
    np.random.seed(123)  # noqa: NPY002
    before = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    king_pool.cache_clear()
    a, _ = king_pool(3.0, 5, 1000)
    king_pool.cache_clear()
    b, _ = king_pool(3.0, 5, 1000)
    assert np.random.random() == before  # noqa: NPY002
    np.testing.assert_array_equal(a, b)
    c, _ = king_pool(3.0, 6, 1000)
    assert not np.array_equal(a, c)


def test_run_ids_and_grid():
    assert run_id(5.0, 0.0002, 1, 3) == "Rad05-zmet0002-M1-0003"
    assert run_id(7.0, 0.02, 3, 12) == "Rad07-zmet02-M3-0012"
    ics = initial_conditions(StarSetsSimulate(n_runs=24))
    assert len(ics) == 24
    assert ics[:4] == [(3.0, 0.0002, 1), (3.0, 0.0002, 2), (3.0, 0.0002, 3), (3.0, 0.002, 1)]


def test_deterministic_and_seed_dependent(tiny):
    again = simulate(TINY, 1)
    np.testing.assert_array_equal(tiny.ptr, again.ptr)
    for k in ELEMENT_COLUMNS:
        np.testing.assert_array_equal(tiny.elements[k], again.elements[k])
    for k in SET_COLUMNS:
        np.testing.assert_array_equal(tiny.sets[k], again.sets[k])
    other = simulate(TINY, 2)
    assert not np.array_equal(
        tiny.sets["total_mass_within_2x_r_tidal"], other.sets["total_mass_within_2x_r_tidal"]
    )


def test_layout_columns_and_values(tiny):
    assert tiny.n_sets == 6
    assert tiny.ptr[0] == 0 and np.all(np.diff(tiny.ptr) > 0)
    assert tiny.ptr[-1] == len(tiny.elements["mass"])
    assert tuple(tiny.elements) == (*STAR_COLUMNS, "is_member", "is_binary")
    assert set(tiny.sets) == set(SET_COLUMNS)
    for k, v in tiny.elements.items():
        assert v.dtype == np.float32, k
        assert np.all(np.isfinite(v)), k
    for k, v in tiny.sets.items():
        if k != "run_id":
            assert np.all(np.isfinite(v)), k
    np.testing.assert_array_equal(tiny.sets["snapshot_id"], np.arange(6))
    assert tiny.sets["snapshot_id"].dtype == np.int64
    assert tiny.sets["ic_mass_level"].dtype == np.int64
    np.testing.assert_array_equal(tiny.sets["time"], [0.0, 100.0] * 3)
    assert np.all(tiny.elements["mass"] > 0)
    assert set(np.unique(tiny.elements["is_member"])) == {0.0, 1.0}
    assert set(np.unique(tiny.elements["is_binary"])) == {0.0, 1.0}
    assert np.all(np.abs(tiny.elements["lat_deg"]) <= 90)
    assert np.all((tiny.elements["lon_deg"] >= 0) & (tiny.elements["lon_deg"] < 360))
    assert np.all(np.abs(tiny.sets["centre_lat_deg"]) <= 30)
    assert set(tiny.sets["distance_pc"]) <= {*range(50, 551, 50), *range(600, 1201, 100)}
    # initial masses in the three equal log bins of (2.5, 2.8)
    lo = 2.5 + 0.1 * (tiny.sets["ic_mass_level"] - 1)
    logm = np.log10(tiny.sets["ic_mass"])
    assert np.all((logm > lo - 0.01) & (logm < lo + 0.11))


def test_run_ids_unique_per_run(tiny):
    ids = tiny.sets["run_id"].reshape(3, 2)
    assert np.all(ids[:, 0] == ids[:, 1])
    assert len(set(ids[:, 0])) == 3
    for rid in ids[:, 0]:
        assert re.fullmatch(r"Rad\d\d-zmet\d+-M[123]-\d{4}", rid)
    for k in ("ic_w0", "ic_metallicity", "ic_mass_level", "ic_mass"):
        v = tiny.sets[k].reshape(3, 2)
        assert np.all(v[:, 0] == v[:, 1]), k


def test_members_binaries_and_field(tiny):
    for i in range(tiny.n_sets):
        member = _snap(tiny, i, "is_member") > 0
        n_field = int((~member).sum())
        assert n_field == round(TINY.field_star_fraction * member.sum())
        assert tiny.sets["n_stars_within_2x_r_tidal"][i] <= member.sum()
        assert not np.any(_snap(tiny, i, "is_binary")[~member])
    binary = _snap(tiny, 0, "is_binary")[_snap(tiny, 0, "is_member") > 0]
    assert binary.mean() == pytest.approx(TINY.binary_fraction, abs=0.06)


def test_initial_snapshot_holds_all_the_mass(tiny):
    """At t = 0 nothing has escaped or evolved: the 2 r_t mass is the initial mass."""
    t0 = tiny.sets["time"] == 0
    np.testing.assert_allclose(
        tiny.sets["total_mass_within_2x_r_tidal"][t0], tiny.sets["ic_mass"][t0], rtol=1e-9
    )
    for i in np.flatnonzero(t0):
        member = _snap(tiny, i, "is_member") > 0
        np.testing.assert_allclose(
            _snap(tiny, i, "mass")[member].sum(), tiny.sets["ic_mass"][i], rtol=1e-5
        )


def test_targets_recomputed_from_stored_stars(tiny):
    for i in range(tiny.n_sets):
        pos = np.stack([_snap(tiny, i, k) for k in "xyz"], axis=1).astype(float)
        vel = np.stack([_snap(tiny, i, k) for k in ("vx", "vy", "vz")], axis=1).astype(float)
        member = _snap(tiny, i, "is_member") > 0
        t = snapshot_targets(pos, vel, _snap(tiny, i, "mass"), is_member=member)
        assert t["r_tidal"] == pytest.approx(tiny.sets["r_tidal"][i], rel=1e-3)
        assert t["total_mass_within_2x_r_tidal"] == pytest.approx(
            tiny.sets["total_mass_within_2x_r_tidal"][i], rel=1e-3
        )
        # stored coordinates are relative to the density centre and centre velocity
        assert np.linalg.norm(t["centre_pos"]) < 1e-3 * t["r_tidal"]
        assert np.linalg.norm(t["centre_vel"]) < 1e-3
        assert 0 < tiny.sets["r_half_mass"][i] < tiny.sets["r_tidal"][i]


def test_mass_within_2rt_decreases_with_time(longer):
    m = longer.sets["total_mass_within_2x_r_tidal"].reshape(3, 5)
    assert np.all(m[:, -1] < m[:, 0])
    assert np.mean(np.diff(m, axis=1)) < 0
    assert np.mean(np.diff(m, axis=1) <= 0) >= 0.75
    rt = longer.sets["r_tidal"].reshape(3, 5)
    assert np.all(rt[:, -1] < rt[:, 0])


def test_escapers_form_tails_along_y(longer):
    last = np.flatnonzero(longer.sets["time"] == LONGER.max_time_myr)
    for i in last:
        member = _snap(longer, i, "is_member") > 0
        x, y, z = (_snap(longer, i, k)[member] for k in "xyz")
        r = np.sqrt(x**2 + y**2 + z**2)
        out = r > longer.sets["r_tidal"][i]
        assert out.mean() > 0.5 * LONGER.escaper_fraction_max
        assert np.mean(np.abs(y[out])) > 2 * np.mean(np.abs(z[out]))


def test_angular_size_scales_as_one_over_distance(longer):
    """Angular dispersion x distance = physical dispersion, at every distance."""
    ratios = []
    for i in range(longer.n_sets):
        member = _snap(longer, i, "is_member") > 0
        x, y, z = (_snap(longer, i, k).astype(float) for k in "xyz")
        inner = member & (np.sqrt(x**2 + y**2 + z**2) < longer.sets["r_tidal"][i])
        sigma_phys = np.mean([np.std(c[inner]) for c in (x, y, z)])  # isotropic King core
        lat = _snap(longer, i, "lat_deg").astype(float)[inner]
        sigma_ang = np.radians(np.std(lat - longer.sets["centre_lat_deg"][i]))
        ratios.append(sigma_ang * longer.sets["distance_pc"][i] / sigma_phys)
    assert len(set(longer.sets["distance_pc"])) >= 4
    np.testing.assert_allclose(ratios, 1.0, atol=0.2)


def test_progress_and_seed_errors():
    calls = []
    simulate(TINY, 4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    with pytest.raises(InputError):
        simulate(TINY, -1)


def test_round_trip_through_hdf5(tmp_path, tiny):
    path = tmp_path / "snapshots.h5"
    written = simulate_to_file(TINY, 1, path)
    back = read_csr_h5(path)
    np.testing.assert_array_equal(back.ptr, tiny.ptr)
    for k in ELEMENT_COLUMNS:
        np.testing.assert_array_equal(back.elements[k], tiny.elements[k])
        np.testing.assert_array_equal(back.elements[k], written.elements[k])
    for k in SET_COLUMNS:
        np.testing.assert_array_equal(back.sets[k], tiny.sets[k])
    with h5py.File(path) as f:
        assert json.loads(f.attrs["units"])["r_tidal"] == "pc"
        assert StarSetsSimulate.model_validate_json(f.attrs["params"]) == TINY
        assert int(f.attrs["seed"]) == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
