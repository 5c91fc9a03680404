"""stellar_xp: stellar labels with uncertainties from Gaia XP spectra and photometry.

Modules
-------
:mod:`~astrobatch.studies.stellar_xp.columns`
    Feature, error and label column names; index helpers.
:mod:`~astrobatch.studies.stellar_xp.physics`
    The simulator's physics: stellar populations, model spectra, extinction,
    the XP basis projection, synthetic photometry, noise and missingness.
:mod:`~astrobatch.studies.stellar_xp.simulate`
    Writes the pretraining HDF5 and fine-tuning FITS files (the real layouts).
:mod:`~astrobatch.studies.stellar_xp.prepare`
    Raw files -> scaled, split, chunked HDF5 shards (:mod:`astrobatch.data.tables`).
"""
