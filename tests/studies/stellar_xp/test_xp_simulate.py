"""stellar_xp simulator: files in the real layouts, noise at the stated errors, missingness."""

from __future__ import annotations

import numpy as np

from astrobatch.io.compound_h5 import iter_blocks, key_columns, key_rows, list_keys
from astrobatch.io.fits_tables import read_fits_table
from astrobatch.studies.stellar_xp import physics as P
from astrobatch.studies.stellar_xp.columns import LABELS, feature_names
from astrobatch.studies.stellar_xp.params import StellarXPSimulate
from astrobatch.studies.stellar_xp.simulate import finetune_columns, simulate_to_files
from tests.studies.stellar_xp.conftest import TINY_SIM


def _pretrain(path):
    return np.concatenate([b for k in list_keys(path) for b in iter_blocks(path, k)])


def test_layouts(xp_raw):
    d, summary = xp_raw
    keys = list_keys(d / "pretrain.h5")
    assert keys == ["sslset0_part0", "sslset0_part1", "sslset0_part2", "sslset0_part3"]
    assert [key_rows(d / "pretrain.h5", k) for k in keys] == [400, 400, 400, 300]
    cols = key_columns(d / "pretrain.h5", keys[0])
    assert set(feature_names(include_radec=True)) <= set(cols) and "teff" not in cols
    t = read_fits_table(d / "finetune.fits")
    assert list(t) == finetune_columns() and len(t["teff"]) == TINY_SIM["n_finetune"]
    assert summary["n_pretrain"] == 1500 and summary["keys"] == keys


def test_deterministic(xp_raw, tmp_path):
    d, _ = xp_raw
    p = StellarXPSimulate(**{**TINY_SIM, "n_finetune": 50})
    simulate_to_files(p, tmp_path / "a.h5", tmp_path / "a.fits")
    a, b = _pretrain(tmp_path / "a.h5"), _pretrain(d / "pretrain.h5")
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))  # n_finetune is irrelevant
    simulate_to_files(
        StellarXPSimulate(**{**TINY_SIM, "seed": 12}), tmp_path / "c.h5", tmp_path / "c.fits"
    )
    assert not np.array_equal(_pretrain(tmp_path / "c.h5")["G"], b["G"])


def test_noise_at_stated_errors(xp_raw):
    d, _ = xp_raw
    t = read_fits_table(d / "finetune.fits")
    plx = (t["PARALLAX"] - t["true_parallax"] - P.PARALLAX_ZERO_POINT) / t["e_parallax"]
    plx = plx[np.isfinite(plx)]
    assert abs(np.mean(plx)) < 0.15 and 0.85 < np.std(plx) < 1.15  # parallax = 1/d + noise
    np.testing.assert_allclose(t["true_parallax"], 1.0 / t["true_distance"], rtol=1e-6)
    for lab in LABELS:
        z = (t[lab] - t[f"true_{lab}"]) / t[f"e_{lab}"]
        z = z[np.isfinite(z)]
        assert abs(np.mean(z)) < 0.15 and 0.8 < np.std(z) < 1.2, lab
    g = _pretrain(d / "pretrain.h5")["G"]
    assert np.nanmax(g) < TINY_SIM.get("g_limit", 17.65) + 0.05
    assert np.nanmax(t["G"]) < 16.05  # fine-tuning stars are brighter (spectroscopic survey)


def test_physics_in_the_catalogue(xp_raw):
    d, _ = xp_raw
    t = read_fits_table(d / "finetune.fits")
    ok = np.isfinite(t["BP"]) & np.isfinite(t["RP"]) & (t["true_ebv"] < 0.05)
    hot, cool = ok & (t["true_teff"] > 6000), ok & (t["true_teff"] < 4500)
    assert np.median((t["BP"] - t["RP"])[hot]) < np.median((t["BP"] - t["RP"])[cool]) - 0.5
    assert np.all(t["EBV"][t["true_ebv"] > 0] > 0)
    # the line-of-sight (SFD-like) reddening is at least the star's, up to the map's noise
    assert np.mean(t["EBV"] >= 0.8 * t["true_ebv"]) > 0.97


def test_missingness(xp_raw):
    d, _ = xp_raw
    x = _pretrain(d / "pretrain.h5")
    frac = {c: float(np.mean(np.isnan(x[c]))) for c in ("bp_1", "rp_1", "G", "J", "W1")}
    assert 0.01 < frac["bp_1"] < 0.10 and 0.01 < frac["rp_1"] < 0.10
    assert frac["G"] == 0.0 and frac["J"] < 0.1 and frac["W1"] < 0.2
    # a missing value has a missing error, and vice versa
    for c, e in (("bp_3", "bpe_3"), ("U_SMSS", "E_U_SMSS"), ("PARALLAX", "e_parallax")):
        np.testing.assert_array_equal(np.isnan(x[c]), np.isnan(x[e]))
    # footprints: SkyMapper in the south, Pan-STARRS1 north of -30 deg
    assert np.all(np.isnan(x["U_SMSS"][x["DEC"] > 2.0]))
    assert np.all(np.isnan(x["G_PS1"][x["DEC"] < -30.0]))
    south = x["DEC"] < 0
    g_smss, u_smss = (np.mean(np.isfinite(x[c][south])) for c in ("G_SMSS", "U_SMSS"))
    assert 0.9 < g_smss < 1.0 and u_smss < g_smss - 0.1  # dropouts; u is shallower
    bp_missing = np.isnan(x["bp_1"])
    assert np.all(np.isnan(np.column_stack([x[f"bp_{i}"] for i in range(1, 56)])[bp_missing]))
