"""Fixtures of the stellar_xp tests: tiny simulated raw files and their prepared shards."""

from __future__ import annotations

import pytest

from astrobatch.studies.stellar_xp.params import StellarXPParams, StellarXPSimulate

TINY_SIM = {"n_pretrain": 1500, "rows_per_part": 400, "n_finetune": 800, "seed": 11}


def tiny_xp_params(tmp, **data) -> StellarXPParams:
    """stellar_xp params reading the tiny simulated files in ``tmp``."""
    base = {
        "pretrain_path": str(tmp / "pretrain.h5"),
        "finetune_path": str(tmp / "finetune.fits"),
        "chunk_rows": 128,
        "scaler_max_rows": 1000,
    }
    base.update(data)
    # evaluate.real_predictions: none, so that the repository's table never leaks in
    return StellarXPParams.model_validate(
        {"simulate": TINY_SIM, "data": base, "evaluate": {"real_predictions": None}}
    )


@pytest.fixture(scope="session")
def xp_raw(tmp_path_factory):
    """(folder, summary) of a tiny simulation: pretrain.h5 (4 parts) and finetune.fits."""
    from astrobatch.studies.stellar_xp.simulate import simulate_to_files

    d = tmp_path_factory.mktemp("xp_raw")
    summary = simulate_to_files(
        StellarXPSimulate(**TINY_SIM), d / "pretrain.h5", d / "finetune.fits"
    )
    return d, summary


@pytest.fixture(scope="session")
def xp_prepared(tmp_path_factory, xp_raw):
    """(folder, manifest) of the tiny files prepared with mixed (simulated + real) pretraining."""
    from astrobatch.studies.stellar_xp.prepare import prepare

    raw, _ = xp_raw
    out = tmp_path_factory.mktemp("xp_prepared") / "stellar_xp"
    manifest = prepare(tiny_xp_params(raw), out)
    return out, manifest
