"""Fixtures of the morphology tests: tiny Galaxy Zoo catalogues of both layouts with images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from astrobatch.studies.morphology.params import MorphologyData
from astrobatch.studies.morphology.schema import DECALS, GZ2

SIZE = 20


def walk_votes(schema, n_volunteers, rng):
    """Counts (N, A) of volunteers walking ``schema`` with random answer probabilities."""
    counts = np.zeros((len(n_volunteers), len(schema.answer_names)), np.int64)
    qi, parent = schema.question_index, schema.parent_answer
    for g, n in enumerate(n_volunteers):
        for q in range(len(schema.questions)):
            arriving = n if parent[q] < 0 else counts[g, parent[q]]
            cols = np.flatnonzero(qi == q)
            counts[g, cols] = rng.multinomial(arriving, rng.dirichlet(np.ones(len(cols))))
    return counts


def write_survey(folder, layout, n, survey, rng, image_format="png"):
    """A catalogue of ``layout`` with ``n`` galaxies and their images in ``folder``."""
    schema = DECALS if layout == "gz_decals" else GZ2
    (folder / "images").mkdir(parents=True)
    counts = walk_votes(schema, rng.poisson(40, n), rng)
    ids = [f"{survey}_{i:04d}" for i in range(n)]
    cols = {"iauname" if layout == "gz_decals" else "dr7objid":
            ids if layout == "gz_decals" else np.arange(1000, 1000 + n)}  # fmt: skip
    files = []
    for i in range(n):
        name = f"images/{i}.{image_format}"
        img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        if image_format == "fits":
            fits.PrimaryHDU(rng.normal(0, 1, (3, SIZE, SIZE)).astype(np.float32)).writeto(
                folder / name
            )
        else:
            Image.fromarray(img).save(folder / name)
        files.append(name)
    cols["file_loc"] = files
    frac = schema.fractions(counts)
    for j, a in enumerate(schema.answer_names):
        if layout == "gz_decals":
            cols[a] = counts[:, j]
            cols[f"{a}_fraction"] = frac[:, j]
        else:
            cols[f"{a}_count"] = counts[:, j]
            cols[f"{a}_fraction"] = frac[:, j]
    if layout == "gz_decals":
        tot = schema.total_votes(counts)
        for k, q in enumerate(schema.question_names):
            cols[f"{q}_total-votes"] = tot[:, k]
        path = folder / "gz_decals_catalogue.csv"
        pd.DataFrame(cols).to_csv(path, index=False)
    else:
        path = folder / "gz2_catalogue.fits"
        Table(cols).write(path)
    return path, counts


@pytest.fixture(scope="session")
def surveys(tmp_path_factory):
    root = tmp_path_factory.mktemp("morph")
    rng = np.random.default_rng(5)
    a, ca = write_survey(root / "a", "gz2", 60, "a", rng, "jpg")
    b, cb = write_survey(root / "b", "gz_decals", 60, "b", rng, "png")
    c, _ = write_survey(root / "c", "gz_decals", 20, "c", rng, "fits")
    return {"root": root, "paths": {"a": a, "b": b, "c": c}, "counts": {"a": ca, "b": cb}}


def data_params(surveys, **kw) -> MorphologyData:
    cats = [{"path": str(p), "survey": s} for s, p in surveys["paths"].items()]
    base = {"catalogues": cats, "train_surveys": {"a": 0.5, "b": 0.5}, "ood_surveys": ["c"],
            "image_size": 16, "chunk_images": 8}  # fmt: skip
    base.update(kw)
    return MorphologyData.model_validate(base)
