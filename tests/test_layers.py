"""The shared layers import no study: walk every import of io/, data/, nn/, tasks/, evaluate/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "astrobatch"
SHARED = ("io", "data", "nn", "tasks", "evaluate")
#: Modules a shared layer may not import: the studies and anything below them (their
#: science and their params models).
FORBIDDEN = "astrobatch.studies"


def _imports(path: Path, pkg: str | None = None) -> list[tuple[int, str]]:
    """(line, name) of every import in ``path``: module and function level, relative resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if pkg is None:
        pkg = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def shared_modules() -> list[Path]:
    return sorted(p for layer in SHARED for p in (SRC / layer).rglob("*.py"))


def test_walk_finds_the_layers():
    files = shared_modules()
    assert {p.relative_to(SRC).parts[0] for p in files} == set(SHARED)
    # the walk sees function-level and relative imports (a walk that saw nothing passes anything)
    found = {m for p in files for _, m in _imports(p)}
    assert "astrobatch.errors.InputError" in found


def test_the_walk_catches_a_study_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import numpy\n"
        "def f():\n"
        "    from astrobatch.studies.star_sets.params import SamplingParams\n"
        "def g():\n"
        "    from ..studies import STUDIES\n"
    )
    found = [m for _, m in _imports(probe, pkg="astrobatch.nn")]
    assert found == [
        "numpy",
        "astrobatch.studies.star_sets.params.SamplingParams",
        "astrobatch.studies.STUDIES",
    ]
    assert all(m.startswith(FORBIDDEN) for m in found[1:])


@pytest.mark.parametrize("path", shared_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_shared_layer_imports_no_study(path):
    bad = [f"line {ln}: {m}" for ln, m in _imports(path) if m.startswith(FORBIDDEN)]
    assert not bad, f"{path.relative_to(SRC)} imports study code: {bad}"
