"""``dvc.yaml`` declares what its stages really read.

A stage whose code changes must re-run, so every ``astrobatch`` module that a stage's
command imports (transitively, module-level and function-level imports, found statically
with :mod:`ast`) must be covered by one of the stage's ``deps``: a file dep covers that
file, a folder dep everything below it. When a test here fails, its message lists
``stage: path to add to deps`` pairs, with the import chain that brought the module in.

The other tests check the path conventions: raw inputs come from ``params.yaml`` through
``${...}``, conventional folders from the ``vars`` block of ``dvc.yaml``, and list-valued
path params (which DVC 3 cannot interpolate into ``deps``) lie below a folder dep.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

#: Modules that need not be deps: they parse arguments, report progress or errors, or
#: belong to other commands, and never change a stage's outputs. Their own imports are
#: still followed. Keep this list short; a module that computes anything is not here.
INFRASTRUCTURE = {
    "astrobatch.cli",  # the Typer root: mounts sub-apps, no stage logic
    "astrobatch.cli_utils",  # error-to-exit-status wrapper and the --params option
    "astrobatch.progress",  # progress bars and log setup (output to the terminal only)
    "astrobatch.errors",  # exception classes (message text only)
    "astrobatch.slurm",  # `astrobatch slurm`: submits experiments, is not a stage
    "astrobatch.compare_cli",  # `astrobatch compare`: reads experiments, is not a stage
    "astrobatch.sweeps",  # `astrobatch sweep`: queues experiments, is not a stage
}
#: Modules that the study kit (``astrobatch.study``) imports only inside one kind of
#: command: they are deps of that kind of stage (``<study>_predict``) only.
KIT_COMMAND_IMPORTS = {"astrobatch.io.predictions": "_predict"}
#: Package ``__init__.py`` files are followed but need not be deps: they hold docstrings,
#: the version string and the study registry (names -> packages), none of which a stage
#: computes with; whatever they import is itself checked.
INIT_FILES_EXEMPT = True

#: Imports that ``ast`` cannot see: ``astrobatch.params.load_params`` imports each study's
#: params model through the registry (``importlib.import_module(f"{package}.params")``).
#: ``{study}`` is the stage's study (params.yaml section).
DYNAMIC_IMPORTS = {"astrobatch.params": ("astrobatch.studies.{study}.params",)}

#: List-valued path params read by a stage: DVC 3 cannot interpolate a list into ``deps``
#: (treeverse/dvc#8171), so each listed path must lie below one of the stage's deps (the
#: study's ``paths.<study>.external`` folder in dvc.yaml).
LIST_PATH_PARAMS = {
    "stellar_xp_prepare": "stellar_xp.data.real_xp_paths",
}

#: Path prefixes of the project's conventions: they appear in ``dvc.yaml`` only as
#: ``${paths.<study>.<kind>}`` (the ``vars`` block) or as a raw path from params.
CONVENTIONAL = ("data/", "models/", "dvclive/", "metrics/", "plots/", "reports/")

_INTERP = re.compile(r"\$\{\s*([^}]+?)\s*\}")


# ------------------------------------------------------------------------------ helpers


@cache
def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


@cache
def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _vars() -> dict:
    merged: dict = {}
    for entry in _dvc_yaml().get("vars", []):
        assert isinstance(entry, dict), "dvc.yaml vars: expected inline dicts, not files"
        merged.update(entry)
    return merged


def _lookup(data: dict, dotted: str):
    """The value at ``a.b[0].c`` in nested dicts and lists; KeyError if absent."""
    node = data
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


@cache
def _stages() -> dict[str, dict]:
    """Resolved stages, as DVC sees them: ``{name: {"cmd": str, "deps": [paths]}}``."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {
            s.name: {
                "cmd": s.cmd,
                "deps": [d.def_path for d in s.deps if d.def_path != "params.yaml"],
                "outs": [o.def_path for o in s.outs],
            }
            for s in repo.index.stages
        }


def _module_file(module: str) -> Path | None:
    """Source file of an ``astrobatch`` module under src/, or None if there is none."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(module: str, name: str | None) -> str:
    """``from module import name``: the submodule ``module.name`` if it exists."""
    if name and name != "*" and _module_file(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    return module


def _imports(nodes: list[ast.stmt], module: str) -> set[str]:
    """``astrobatch`` modules imported anywhere in ``nodes`` (functions included)."""
    package = module if _module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "astrobatch"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..io import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "astrobatch":
                found |= {_resolve(base, a.name) for a in node.names}
    return {m for m in found if _module_file(m) is not None}


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Module statements minus function bodies (imports there run with their command)."""
    keep = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            keep.extend(node.decorator_list)  # type: ignore[arg-type]
        else:
            keep.append(node)
    return keep


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _closure(start: dict[str, str], study: str, done: str) -> dict[str, str]:
    """Transitive imports of ``start``: ``{module: the module that imported it first}``.

    ``done`` (the command's own module, whose imports are in ``start``) is not expanded.
    """
    seen = dict(start)
    todo = [m for m in start if m != done]
    while todo:
        module = todo.pop()
        tree = ast.parse(_module_file(module).read_text())
        found = _imports(tree.body, module) | set(_parents(module))
        from astrobatch.studies import STUDIES

        studies = [study] if study else list(STUDIES)  # a root command: any study
        found |= {m.format(study=s) for m in DYNAMIC_IMPORTS.get(module, ()) for s in studies}
        for new in sorted(found - set(seen)):
            seen[new] = module
            todo.append(new)
    return seen


@cache
def _commands() -> dict[tuple[str, str], object]:
    """``(sub-app name, command name) -> callback`` of the ``astrobatch`` CLI."""
    from astrobatch.cli import app

    out = {}
    for command in app.registered_commands:  # root commands: (None, name)
        out[(None, command.name or command.callback.__name__.replace("_", "-"))] = command.callback
    for group in app.registered_groups:
        for command in group.typer_instance.registered_commands:
            name = command.name or command.callback.__name__.replace("_", "-")
            out[(group.name, name)] = command.callback
    return out


def _stage_imports(stage: str, cmd: str) -> dict[str, str]:
    """Modules imported by the ``astrobatch <group> <command>`` of ``cmd``, with the importer."""
    words = shlex.split(cmd)
    assert "astrobatch" in words, f"{stage}: command does not run astrobatch: {cmd!r}"
    i = words.index("astrobatch")
    group, command = words[i + 1], words[i + 2]
    if (None, group) in _commands():  # a root command (astrobatch report)
        group, command = None, group
    callback = _commands().get((group, command))
    assert callback is not None, f"{stage}: no command `astrobatch {group} {command}`"
    study = (group or "").replace("-", "_")
    module = callback.__module__
    function = inspect.unwrap(callback).__name__
    tree = ast.parse(_module_file(module).read_text())
    body = [
        n for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
    ]  # fmt: skip
    assert body, f"{stage}: function {function} not found in {module}"
    direct = _imports(_module_level(tree) + body, module) | set(_parents(module))
    start = {module: f"`astrobatch {group or ''} {command}`"}
    start.update({m: f"{module}.{function}" for m in direct if m != module})
    return _closure(start, study, done=module)


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def _missing(stage: str) -> list[str]:
    info = _stages()[stage]
    lines = []
    for module, importer in sorted(_stage_imports(stage, info["cmd"]).items()):
        path = _module_file(module)
        if module in INFRASTRUCTURE or (INIT_FILES_EXEMPT and path.name == "__init__.py"):
            continue
        kind = KIT_COMMAND_IMPORTS.get(module)
        if kind and importer == "astrobatch.study" and not stage.endswith(kind):
            continue
        if not _covered(path, info["deps"]):
            rel = path.relative_to(ROOT).as_posix()
            lines.append(f"{stage}: {rel}   ({module}, imported by {importer})")
    return lines


def _interpolations(value) -> list[str]:
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in _interpolations(k) + _interpolations(v)]
    if isinstance(value, list):
        return [e for v in value for e in _interpolations(v)]
    return _INTERP.findall(value) if isinstance(value, str) else []


def _literal_paths(value) -> list[str]:
    """Conventional paths written out literally (not through ``${...}``) in ``value``."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _literal_paths(k) + _literal_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _literal_paths(v)]
    if not isinstance(value, str):
        return []
    text = _INTERP.sub("", value)
    return [w for w in re.split(r"[\s=]+", text) if w.startswith(CONVENTIONAL)]


# -------------------------------------------------------------------------------- tests


def test_every_stage_runs_an_astrobatch_command():
    stages = _stages()
    assert set(stages) == set(_dvc_yaml()["stages"])
    for name, info in stages.items():
        _stage_imports(name, info["cmd"])  # asserts that the command exists


def test_deps_cover_imported_modules():
    missing = [line for stage in sorted(_stages()) for line in _missing(stage)]
    assert not missing, (
        "dvc.yaml: these stages import modules that are not in their deps; add each path "
        "to the stage's deps (or, for a module that cannot change results, to "
        "INFRASTRUCTURE in tests/test_dvc_deps.py with a reason):\n  " + "\n  ".join(missing)
    )


def test_closure_sees_function_level_and_dynamic_imports():
    imports = _stage_imports("star_sets_prepare", "astrobatch star-sets prepare")
    assert "astrobatch.studies.star_sets.prepare" in imports  # imported inside the command
    assert "astrobatch.studies.star_sets.params" in imports  # through the params registry
    assert "astrobatch.studies.star_sets.train" not in imports  # another command's import


def test_interpolated_deps_resolve_to_params_or_vars():
    variables, params = _vars(), _params()
    assert not set(variables) & set(params), "dvc.yaml vars must not shadow params.yaml keys"
    bad = []
    for name, stage in _dvc_yaml()["stages"].items():
        for expr in _interpolations(stage.get("deps", [])):
            source = variables if expr.split(".")[0] in variables else params
            try:
                value = _lookup(source, expr)
            except (KeyError, IndexError, ValueError):
                bad.append(f"{name}: ${{{expr}}} is not a key of params.yaml or dvc.yaml vars")
                continue
            if not isinstance(value, str):
                bad.append(f"{name}: ${{{expr}}} is a {type(value).__name__}, not a path")
    assert not bad, "\n".join(bad)


def test_no_literal_conventional_paths():
    """Data, model and report paths come from ``${<study>...}`` params or ``${paths...}``."""
    bad = [
        f"{name}: literal path {path!r} (use a ${{...}} param or ${{paths...}} var)"
        for name, stage in _dvc_yaml()["stages"].items()
        for key in ("cmd", "deps", "outs", "metrics", "plots")
        for path in _literal_paths(stage.get(key, []))
    ]
    bad += [f"plots: literal path {p!r}" for p in _literal_paths(_dvc_yaml().get("plots", []))]
    assert not bad, "\n".join(bad)


def test_every_study_reads_its_raw_path_param():
    stages = _stages()
    for study in ("star_sets", "cluster_age"):
        raw = _params()[study]["data"]["raw_path"]
        assert raw in stages[f"{study}_prepare"]["deps"]
        # the simulated file is where the default raw_path points (switching to real data
        # is one line in params.yaml; the simulate stage then no longer feeds prepare)
        assert raw in stages[f"{study}_simulate"]["outs"]
    data = _params()["stellar_xp"]["data"]
    deps, outs = stages["stellar_xp_prepare"]["deps"], stages["stellar_xp_simulate"]["outs"]
    for key in ("pretrain_path", "finetune_path"):
        assert data[key] in deps and data[key] in outs


@pytest.mark.parametrize("stage", sorted(LIST_PATH_PARAMS))
def test_list_path_params_lie_below_a_dep(stage):
    dotted = LIST_PATH_PARAMS[stage]
    paths = _lookup(_params(), dotted)
    deps = _stages()[stage]["deps"]
    outside = [p for p in paths if not _covered(ROOT / p, deps)]
    assert not outside, (
        f"{stage}: {dotted} lists {outside}, not below any dep of the stage; move the files "
        f"below one of {deps} or add their paths to the stage's deps in dvc.yaml"
    )


def test_vars_paths_match_the_study_kit():
    """The ``paths`` of dvc.yaml are the kit's defaults (astrobatch.study.StudyPaths)."""
    from astrobatch.study import StudyPaths

    for study, paths in _vars()["paths"].items():
        kit = StudyPaths.for_study(study)
        fields = [k for k in kit.__dataclass_fields__ if getattr(kit, k) is not None]
        assert {"raw", "prepared", "models", "live", "metrics", "plots", "reports"} <= set(fields)
        expected = {k: getattr(kit, k).as_posix() for k in fields}
        assert {k: v for k, v in paths.items() if k in expected} == expected, study
