"""Sweeps as data: named grids of DVC experiments and the comparisons that summarise them.

``sweeps.yaml`` (at the project root) holds named sweep definitions::

    star_sets_models:
      study: star_sets                       # its params.yaml section
      help: The 3 models x 3 seeds sweep.
      grids:                                 # one `dvc exp run --queue` per grid
        - star_sets.model.name: [summary_stats, deep_sets, set_transformer]
          star_sets.seed: [1, 2, 3]          # -S star_sets.seed=1,2,3
      compare:                               # `astrobatch compare` calls, run in-process
        - metric: test/mae_log_mass
          param: star_sets.model.name
          baselines: [baseline/median/test/mae_log_mass]

:data:`app` is the ``astrobatch sweep`` sub-app: ``list``, ``run NAME [--dry-run] [--jobs N]``
(queue every grid, ``dvc exp run --run-all --jobs N``, then compare) and ``compare NAME``
(only the comparisons, from a fresh ``dvc exp show --json`` or ``--exp-json FILE``). A bad
sweeps file prints one message naming the file and the key and exits with status 2.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from astrobatch.cli_utils import ParamsOption, stage
from astrobatch.errors import InputError
from astrobatch.params import load_yaml

log = logging.getLogger(__name__)

#: Default sweeps file, relative to the project root (the working directory).
DEFAULT_SWEEPS = Path("sweeps.yaml")
#: Where ``sweep run`` and ``sweep compare`` save ``dvc exp show --json`` (git-ignored).
EXP_JSON = Path("reports/exp_show.json")

Scalar = bool | int | float | str


def format_value(value: Scalar) -> str:
    """A sweep value as ``dvc exp run -S`` takes it (booleans in lower case, as in YAML).

    Examples
    --------
    >>> [format_value(v) for v in (True, 0, 6, 0.001, "5im")]
    ['true', '0', '6', '0.001', '5im']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Compare(BaseModel):
    """One ``astrobatch compare`` call (see :func:`astrobatch.compare_cli.compare`).

    Attributes
    ----------
    metric, param : str
        ``--metric`` and ``--param`` (``a+b`` combines parameters).
    hue : str, optional
        ``--hue``: one line (or bar colour) per value.
    where : list of str
        ``--where PARAM=VALUE`` filters (all must hold).
    baselines : list of str
        ``--baseline`` metrics, drawn as dashed lines.
    name : str, optional
        ``--name``, the output file stem (default: derived from metric, param and hue).
    out : str
        ``--out`` folder (default ``reports/compare``).
    experiments_only : bool
        ``--experiments-only`` (default) or ``--all-rows``.
    allow_failure : bool
        A failing comparison (e.g. no matching experiment yet) is reported and skipped
        instead of failing the sweep (``|| true`` in a shell).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1)
    param: str = Field(min_length=1)
    hue: str | None = None
    where: list[str] = Field(default_factory=list)
    baselines: list[str] = Field(default_factory=list)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")
    out: str = "reports/compare"
    experiments_only: bool = True
    allow_failure: bool = False

    @field_validator("where")
    @classmethod
    def _where_has_equals(cls, conditions: list[str]) -> list[str]:
        bad = [c for c in conditions if "=" not in c or c.startswith("=")]
        if bad:
            raise ValueError(f"expected PARAM=VALUE strings, got {bad}")
        return conditions

    def argv(self, exp_json: Path) -> list[str]:
        """The equivalent ``astrobatch compare`` command line (for ``--dry-run``).

        Examples
        --------
        >>> c = Compare(metric="test/mae", param="s.seed", baselines=["b/test/mae"], name="x")
        >>> " ".join(c.argv(Path("e.json"))[7:])
        '--metric test/mae --param s.seed --baseline b/test/mae --name x'
        """
        args = ["astrobatch", "compare", "--exp-json", str(exp_json)]
        args += ["--experiments-only" if self.experiments_only else "--all-rows"]
        args += ["--out", self.out, "--metric", self.metric, "--param", self.param]
        args += ["--hue", self.hue] if self.hue else []
        args += [a for w in self.where for a in ("--where", w)]
        args += [a for b in self.baselines for a in ("--baseline", b)]
        args += ["--name", self.name] if self.name else []
        return args

    def run(self, exp_json: Path) -> bool:
        """Run the comparison in-process; True on success.

        On failure :func:`~astrobatch.compare_cli.compare` has printed its one-line error.
        """
        from astrobatch.compare_cli import compare

        try:
            compare(
                metric=self.metric,
                param=self.param,
                hue=self.hue,
                baseline=list(self.baselines) or None,
                exp_json=exp_json,
                out=Path(self.out),
                name=self.name,
                where=list(self.where) or None,
                experiments_only=self.experiments_only,
            )
        except typer.Exit as stop:
            return stop.exit_code == 0
        return True


class Sweep(BaseModel):
    """A named sweep: grids of experiments of one study and their comparisons.

    Attributes
    ----------
    study : str
        The study's ``params.yaml`` section; every grid key starts with ``<study>.``.
    help : str
        One line shown by ``astrobatch sweep list``.
    grids : list of dict of str to list of scalars
        Each grid is one ``dvc exp run --queue`` with ``-S key=v1,v2,...`` per key (all
        combinations); a scalar in the file is one value.
    compare : list of Compare
        The comparisons run after the experiments.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str = Field(min_length=1)
    help: str = ""
    grids: list[dict[str, list[Scalar]]] = Field(min_length=1)
    compare: list[Compare] = Field(default_factory=list)

    @field_validator("grids", mode="before")
    @classmethod
    def _scalars_to_lists(cls, grids: Any) -> Any:
        if not isinstance(grids, list):
            return grids
        out = []
        for i, grid in enumerate(grids):
            if not isinstance(grid, dict) or not grid:
                raise _KeyProblem(f"grids[{i}]", "expected a mapping of params keys to values")
            fixed = {}
            for key, values in grid.items():
                values = values if isinstance(values, list) else [values]
                bad = [v for v in values if v is None or isinstance(v, dict | list)]
                if not values or bad:
                    raise _KeyProblem(
                        f"grids[{i}].{key}",
                        f"expected a scalar or a non-empty list of scalars (got {bad or values})",
                    )
                text = [v for v in values if isinstance(v, str) and ("," in v or not v.strip())]
                if text:
                    raise _KeyProblem(
                        f"grids[{i}].{key}", f"values {text} are empty or contain a comma"
                    )
                fixed[key] = values
            out.append(fixed)
        return out

    @model_validator(mode="after")
    def _keys_of_the_study(self) -> Sweep:
        for i, grid in enumerate(self.grids):
            for key in grid:
                if not key.startswith(f"{self.study}."):
                    raise _KeyProblem(f"grids[{i}].{key}", f"not a key of study {self.study!r}")
        return self

    def queue_commands(self) -> list[list[str]]:
        """One ``dvc exp run --queue -S key=v1,v2 ...`` argument list per grid."""
        return [
            ["dvc", "exp", "run", "--queue"]
            + [a for key, values in grid.items()
               for a in ("-S", f"{key}={','.join(format_value(v) for v in values)}")]
            for grid in self.grids
        ]  # fmt: skip

    def n_experiments(self) -> int:
        """Experiments queued by all grids (the product of the value counts, summed)."""
        total = 0
        for grid in self.grids:
            n = 1
            for values in grid.values():
                n *= len(values)
            total += n
        return total


class _KeyProblem(ValueError):
    """A problem at a key below a sweep (raised during validation, reported with the key)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


class SweepFile(RootModel[dict[str, Sweep]]):
    """The whole sweeps file: sweep name -> :class:`Sweep`."""


def _loc(parts: tuple) -> str:
    """A pydantic error location as ``name.grids[0].key``."""
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def _lookup(data: Any, dotted: str) -> bool:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_sweeps(path: str | Path = DEFAULT_SWEEPS, params: str | Path | None = None) -> dict:
    """Read and validate a sweeps file.

    Parameters
    ----------
    path : str or pathlib.Path
        The YAML file of named sweeps (default ``sweeps.yaml``).
    params : str or pathlib.Path, optional
        A ``params.yaml``: when given, every sweep's study must be one of its sections and
        every grid key one of its keys (``dvc exp run -S`` would add an unknown key, and
        the study's params validation would then fail in every experiment).

    Returns
    -------
    dict of str to Sweep
        The sweeps by name, in file order.

    Raises
    ------
    astrobatch.errors.InputError
        Missing or unreadable file, invalid YAML, an unknown or missing field, a wrong
        value, a key not in ``params``: one message with the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("sweeps file not found (run from the project root)", path=path)
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}", path=path) from None
    if not isinstance(raw, dict) or not raw:
        raise InputError("expected a mapping of sweep names to sweeps", path=path)
    bad_names = [n for n in raw if not isinstance(n, str) or not n.replace("-", "_").isidentifier()]
    if bad_names:
        raise InputError("sweep names: letters, digits, _ and -", path=path, key=str(bad_names[0]))
    sweeps: dict[str, Sweep] = {}
    for name, body in raw.items():  # one sweep at a time: errors name the sweep
        try:
            sweeps[name] = Sweep.model_validate(body)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                cause = (e.get("ctx") or {}).get("error")
                if isinstance(cause, _KeyProblem):
                    problems.append((1, f"{name}.{cause.key}", cause.message))
                elif e["type"] == "extra_forbidden":  # first: often the cause of a missing one
                    problems.append((0, _loc((name, *e["loc"])), "unknown key"))
                elif e["type"] in ("missing", "value_error"):
                    msg = e["msg"].removeprefix("Value error, ")
                    problems.append((1, _loc((name, *e["loc"])), msg))
                else:
                    msg = f"{e['msg']} (got {e.get('input')!r})"
                    problems.append((1, _loc((name, *e["loc"])), msg))
            problems.sort(key=lambda p: p[0])
            _, key, msg = problems[0]
            more = "".join(f"; {k}: {m}" for _, k, m in problems[1:])
            raise InputError(msg + more, path=path, key=key) from None
    if params is not None:
        _check_against_params(sweeps, path, Path(params))
    return sweeps


def _check_against_params(sweeps: dict[str, Sweep], path: Path, params: Path) -> None:
    if not params.is_file():
        raise InputError("params file not found (run from the project root)", path=params)
    try:
        data = load_yaml(params.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}", path=params) from None
    for name, sweep in sweeps.items():
        if sweep.study not in data:
            raise InputError(
                f"study {sweep.study!r} is not a section of {params}",
                path=path,
                key=f"{name}.study",
            )
        for i, grid in enumerate(sweep.grids):
            for key in grid:
                if not _lookup(data, key):
                    raise InputError(
                        f"not a key of {params} (check spelling)",
                        path=path,
                        key=f"{name}.grids[{i}].{key}",
                    )


def get_sweep(name: str, path: str | Path = DEFAULT_SWEEPS, params: str | Path | None = None):
    """The validated sweep ``name`` of the sweeps file (see :func:`load_sweeps`).

    Raises
    ------
    astrobatch.errors.InputError
        The file is invalid, or has no sweep ``name`` (the message lists the known ones).
    """
    sweeps = load_sweeps(path, params)
    if name not in sweeps:
        raise InputError(f"no such sweep; known: {', '.join(sweeps)}", path=path, key=name)
    return sweeps[name]


# ------------------------------------------------------------------------------ running


class CommandFailed(Exception):
    """A ``dvc`` command of a sweep exited with a non-zero status."""

    def __init__(self, argv: list[str], status: int):
        super().__init__(f"`{shlex.join(argv)}` failed with exit status {status}")
        self.status = status


def _dvc() -> str:
    """The ``dvc`` beside this Python (the project's environment), else the one on PATH."""
    sibling = Path(sys.executable).parent / "dvc"
    found = str(sibling) if sibling.is_file() else shutil.which("dvc")
    if found is None:
        raise InputError("the `dvc` command was not found (install DVC)", path=Path.cwd())
    return found


def _env() -> dict[str, str]:
    """The environment with this Python's bin folder first on PATH (stages run `astrobatch`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_dvc(argv: list[str], dry_run: bool = False, capture: bool = False) -> str:
    """Print ``argv`` (a ``dvc ...`` command), then run it unless ``dry_run``.

    Returns
    -------
    str
        Its standard output when ``capture``, else "".

    Raises
    ------
    CommandFailed
        The command exited with a non-zero status.
    """
    if not capture:
        typer.echo(shlex.join(argv))
    if dry_run:
        return ""
    result = subprocess.run(
        [_dvc(), *argv[1:]], env=_env(), check=False, text=True, capture_output=capture
    )
    if result.returncode != 0:
        if capture and result.stderr:
            typer.echo(result.stderr.rstrip(), err=True)
        raise CommandFailed(argv, result.returncode)
    return result.stdout if capture else ""


def write_exp_show(path: Path = EXP_JSON, dry_run: bool = False) -> Path:
    """``dvc exp show --json > path`` (written atomically); returns ``path``."""
    typer.echo(f"dvc exp show --json > {shlex.quote(str(path))}")
    if not dry_run:
        from astrobatch.io.atomic import atomic_path

        text = run_dvc(["dvc", "exp", "show", "--json"], capture=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


def run_comparisons(sweep: Sweep, exp_json: Path, dry_run: bool = False) -> list[int]:
    """Run the sweep's comparisons on ``exp_json``; return the indices of required ones that failed.

    Every comparison runs, even after a failure; one with ``allow_failure`` only logs.
    """
    failed = []
    for i, c in enumerate(sweep.compare):
        typer.echo(shlex.join(c.argv(exp_json)) + (" || true" if c.allow_failure else ""))
        if dry_run or c.run(exp_json):
            continue
        if c.allow_failure:
            log.warning("comparison %d (%s) failed; allowed, going on", i, c.name or c.metric)
        else:
            failed.append(i)
    return failed


# ---------------------------------------------------------------------------------- CLI

app = typer.Typer(
    rich_markup_mode=None,
    name="sweep",
    help="Named sweeps of DVC experiments (sweeps.yaml): queue, run and compare them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

SweepsOption = Annotated[
    Path, typer.Option("--file", "-f", help="Sweeps file (YAML) of named sweeps.")
]
NameArgument = Annotated[str, typer.Argument(help="Sweep name (see `astrobatch sweep list`).")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the commands without running them.")
]


def _finish(sweep_name: str, failed: list[int]) -> None:
    if failed:
        typer.echo(f"error: sweep {sweep_name}: comparison(s) {failed} failed", err=True)
        raise typer.Exit(2)


@stage(app, "list")
def list_cmd(
    file: SweepsOption = DEFAULT_SWEEPS, params: ParamsOption = Path("params.yaml")
) -> None:
    """List the sweeps of FILE: name, study, experiments queued, comparisons, help."""
    for name, sweep in load_sweeps(file, params).items():
        typer.echo(
            f"{name}  {sweep.study}  {sweep.n_experiments()} experiments in "
            f"{len(sweep.grids)} grid(s), {len(sweep.compare)} comparison(s)"
            + (f"  {sweep.help}" if sweep.help else "")
        )


@stage(app, "run")
def run_cmd(
    name: NameArgument,
    file: SweepsOption = DEFAULT_SWEEPS,
    params: ParamsOption = Path("params.yaml"),
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Experiments run in parallel.")
    ] = 1,
    dry_run: DryRunOption = False,
) -> None:
    """Run sweep NAME: queue every grid, run the queue, then compare the experiments.

    Each grid is `dvc exp run --queue -S key=v1,v2 ...` (every combination), then
    `dvc exp run --run-all --jobs JOBS` runs the queue, `dvc exp show --json` is saved to
    reports/exp_show.json and each comparison of the sweep writes its markdown table and
    figure (astrobatch compare). --dry-run prints these commands only. A bad sweeps file
    exits with status 2; a failing dvc command with its own status.
    """
    sweep = get_sweep(name, file, params)
    try:
        for argv in sweep.queue_commands():
            run_dvc(argv, dry_run)
        run_dvc(["dvc", "exp", "run", "--run-all", "--jobs", str(jobs)], dry_run)
        exp_json = write_exp_show(EXP_JSON, dry_run)
    except CommandFailed as err:
        typer.echo(f"error: sweep {name}: {err}", err=True)
        raise typer.Exit(err.status) from None
    _finish(name, run_comparisons(sweep, exp_json, dry_run))


@stage(app, "compare")
def compare_cmd(
    name: NameArgument,
    file: SweepsOption = DEFAULT_SWEEPS,
    params: ParamsOption = Path("params.yaml"),
    exp_json: Annotated[
        Path | None,
        typer.Option(
            "--exp-json",
            help="Output of `dvc exp show --json` to read (default: run it and save it to "
            "reports/exp_show.json).",
        ),
    ] = None,
    dry_run: DryRunOption = False,
) -> None:
    """Redo the comparisons of sweep NAME from the current DVC experiments."""
    sweep = get_sweep(name, file, params)
    if exp_json is None:
        try:
            exp_json = write_exp_show(EXP_JSON, dry_run)
        except CommandFailed as err:
            typer.echo(f"error: sweep {name}: {err}", err=True)
            raise typer.Exit(err.status) from None
    elif not exp_json.is_file():
        raise InputError("file not found (written by `dvc exp show --json`)", path=exp_json)
    _finish(name, run_comparisons(sweep, exp_json, dry_run))


if __name__ == "__main__":
    app()
