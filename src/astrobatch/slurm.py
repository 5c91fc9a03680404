"""SLURM job arrays of DVC experiments: ``astrobatch slurm submit | run-task | status``.

One array task = one DVC experiment, in its own workspace. DVC runs one command at a time per
workspace: parallel ``dvc exp run`` / ``dvc repro`` in one workspace fail with "Unable to acquire
lock" (treeverse/dvc#755, #5718, #7419; even ``--temp`` runs take the workspace lock), and the
``dvc queue`` celery workers are long-lived local processes that do not map onto SLURM jobs.
So:

``submit`` (login node)
    checks that the git workspace is clean (array tasks run the committed ``HEAD``, whenever they
    start), expands the ``--set`` grid with DVC's own ``-S`` parser (Hydra override grammar),
    writes ``slurm/runs/<sweep>/tasks.json`` (one override list per task) and
    ``slurm/runs/<sweep>/array.sbatch`` and calls ``sbatch``.
``run-task`` (each array task)
    clones the project at that commit into ``slurm/runs/<sweep>/work/<index>`` and points the
    clone's DVC cache at the project's (``dvc cache dir --local``): data, models and the
    run-cache are shared, so stages computed before (e.g. by a ``dvc repro`` in the project) are
    restored, not recomputed. It applies the task's overrides to the params file exactly as
    ``dvc exp run -S`` does, runs ``dvc repro [targets]``, records the result as experiment
    ``<sweep>-<index>`` (``dvc exp save``) and pushes that experiment's git ref to the project
    (``dvc exp push --no-cache origin``: the outputs are already in the shared cache, so no DVC
    remote is needed). ``dvc exp show`` in the project then lists it; ``dvc exp apply`` restores
    its outputs from the shared cache.

    Why not ``dvc exp run`` in the clone: it force-checks-out the outputs recorded in
    ``dvc.lock`` before reproducing, which replaces a persisted, interrupted ``last.ckpt`` with
    the baseline's model, so a requeued task would train from scratch. ``dvc repro`` keeps
    persisted outputs, so a requeued task (same index, same clone) resumes training.
Preemption and time limits
    ``--signal=B:USR1@120`` signals the batch shell, which *is* ``run-task`` (``exec``). It
    forwards SIGUSR1 to the topmost descendants that catch it (the Lightning trainer with its
    SLURM plugin, which saves ``hpc_ckpt_<n>.ckpt`` and requeues the task; ``srun`` or
    apptainer's starter, which relay it) and requeues the task itself if nothing catches it or
    the task still runs a minute later. ``--requeue`` lets SLURM requeue preempted tasks too.
``status``
    one row per task: overrides, state (``squeue``, then ``sacct`` when accounting is enabled,
    then the state file each task writes), exit status and log file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from astrobatch.cli_utils import stage
from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

#: Sweep folders, relative to the project root (git-ignored and dvc-ignored by ``submit``).
RUNS = Path("slurm/runs")
SPEC_FILE = "tasks.json"
SCRIPT_FILE = "array.sbatch"
JOB_FILE = "job.json"
DEFAULT_PARAMS_FILE = "params.yaml"
#: Seconds between forwarding SIGUSR1 and requeueing the task ourselves.
REQUEUE_GRACE_S = 60.0
PUSH_ATTEMPTS = 5
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

app = typer.Typer(
    rich_markup_mode=None,
    name="slurm",
    help="Run DVC experiments as SLURM job arrays (one git clone per task, shared DVC cache; "
    "results come back as experiments of the project), and follow them.",
    no_args_is_help=True,
)


# --------------------------------------------------------------------------------------------
# Grid and overrides
# --------------------------------------------------------------------------------------------


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_printable(value: str, key: str) -> str:
    """``value`` if it holds no control character (newline, carriage return, NUL, ...).

    Every value that reaches the sbatch script (overrides, prefix, options) passes here: a
    newline would start a new shell line in the script.

    Raises
    ------
    astrobatch.errors.InputError
        A control character in ``value``.

    Examples
    --------
    >>> check_printable("star_sets.seed=1", "--set")
    'star_sets.seed=1'
    """
    bad = _CONTROL_RE.search(value)
    if bad:
        raise InputError(
            f"control character {bad.group()!r} at position {bad.start()} of {value!r}: "
            "values may not contain newlines or other control characters",
            key=key,
        )
    return value


def expand_grid(sets: list[str] | None) -> list[list[str]]:
    """Expand ``--set`` overrides into the cartesian product of their choices.

    Same syntax as ``dvc exp run -S`` (DVC's parser, Hydra override grammar): ``key=a,b``
    sweeps over ``a`` and ``b``, ``key=range(1,4)`` over 1, 2, 3, a quoted ``key='a,b'`` is one
    value, ``file.yaml:key=v`` sets a key of another params file. The last ``--set`` varies
    fastest.

    Parameters
    ----------
    sets : list of str or None
        Overrides as given to ``--set``.

    Returns
    -------
    list of list of str
        One list of single-valued overrides per task; ``[[]]`` (one task, no override) when
        ``sets`` is empty.

    Raises
    ------
    astrobatch.errors.InputError
        An override without ``=``, one that the grammar rejects, or a glob sweep.

    Examples
    --------
    >>> expand_grid(["star_sets.model.name=a,b", "star_sets.seed=1,2"])
    ... # doctest: +NORMALIZE_WHITESPACE
    [['star_sets.model.name=a', 'star_sets.seed=1'], ['star_sets.model.name=a', 'star_sets.seed=2'],
     ['star_sets.model.name=b', 'star_sets.seed=1'], ['star_sets.model.name=b', 'star_sets.seed=2']]
    >>> expand_grid(["other.yaml:lr=0.1", "runner.prefix='a,b'"])
    [['other.yaml:lr=0.1', "runner.prefix='a,b'"]]
    """
    if not sets:
        return [[]]
    for s in sets:
        if "=" not in s:
            raise InputError(f"expected KEY=VALUE[,VALUE...], got {s!r}", key="--set")
        check_printable(s, "--set")
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(sets))
    except (InvalidArgumentError, HydraException) as err:
        raise InputError(f"invalid override ({err})".replace("\n", " "), key="--set") from None
    return [
        [
            o if path == DEFAULT_PARAMS_FILE else f"{path}:{o}"
            for path, ovs in sw.items()
            for o in ovs
        ]
        for sw in sweeps
    ]


def quote_value(value: str) -> str:
    """Quote ``value`` as one Hydra string, so that spaces, commas and ``$`` stay literal.

    Parameters
    ----------
    value : str
        E.g. a container prefix.

    Returns
    -------
    str
        The value in single quotes, with ``'`` and ``${`` escaped.

    Raises
    ------
    astrobatch.errors.InputError
        The value contains a backslash (ambiguous in the grammar).

    Examples
    --------
    >>> quote_value("apptainer exec --nv --bind $PWD astrobatch.sif")
    "'apptainer exec --nv --bind $PWD astrobatch.sif'"
    """
    if "\\" in value:
        raise InputError(f"backslashes are not supported, got {value!r}", key="--prefix")
    check_printable(value, "--prefix")
    return "'" + value.replace("${", "\\${").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------------------------
# Sweep spec and sbatch script
# --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """Everything an array task needs; saved as ``slurm/runs/<name>/tasks.json``.

    Attributes
    ----------
    name : str
        Sweep name; task ``i`` becomes experiment ``<name>-<i>``.
    project : str
        Absolute path of the project (the git ``origin`` of the clones).
    commit : str
        Commit every task runs.
    cache_dir : str
        The project's DVC cache, shared by all clones.
    targets : list of str
        DVC stage targets (empty: all stages).
    workdir : str
        Folder of the per-task clones (``<workdir>/<index>``).
    keep_workdirs : bool
        Keep a task's clone after its experiment is pushed.
    tasks : list of list of str
        Overrides of each task (``dvc exp run -S`` syntax).
    created : str
        ISO time of submission.
    """

    name: str
    project: str
    commit: str
    cache_dir: str
    targets: list[str] = field(default_factory=list)
    workdir: str = ""
    keep_workdirs: bool = False
    tasks: list[list[str]] = field(default_factory=lambda: [[]])
    created: str = ""

    @property
    def run_dir(self) -> Path:
        """``<project>/slurm/runs/<name>``."""
        return Path(self.project) / RUNS / self.name

    def exp_name(self, index: int) -> str:
        """Experiment name of task ``index``."""
        return f"{self.name}-{index}"

    def save(self, path: Path) -> None:
        """Write as JSON (atomically)."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        """Read a ``tasks.json`` written by :meth:`save`.

        Raises
        ------
        astrobatch.errors.InputError
            Missing or malformed file.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError("sweep file not found (written by `astrobatch slurm submit`)", path)
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"not a sweep file ({err})", path) from None


#: What each ``#SBATCH`` value may look like (nothing that can end the line or the word).
_OPTION_PATTERNS = {
    "partition": re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*"),
    "time": re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE"),
    "mem": re.compile(r"\d+[KMGT]?"),
    "gpus": re.compile(r"([A-Za-z0-9_.-]+:)?\d+"),
}
_OPTION_EXPECT = {
    "partition": "partition names (letters, digits, '_', '.', '-', comma-separated)",
    "time": "a SLURM time like 04:00:00, 1-00:00:00 or 30 (minutes)",
    "mem": "a size like 16G or 16000 (MB)",
    "gpus": "a count or type:count, e.g. 1 or a100:2",
}
_EXTRA_RE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:@%/+=|&*\[\]-]+)?")


@dataclass(frozen=True)
class SlurmOptions:
    """``#SBATCH`` options of the array script (``None``: the cluster's default)."""

    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gpus: str | None = None
    max_parallel: int | None = None
    signal_seconds: int = 120
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for opt, value in (("partition", self.partition), ("time", self.time),
                           ("mem", self.mem), ("gpus", self.gpus)):  # fmt: skip
            if value is not None and not _OPTION_PATTERNS[opt].fullmatch(str(value)):
                raise InputError(f"expected {_OPTION_EXPECT[opt]}, got {value!r}", key=f"--{opt}")
        for opt, value in (("cpus-per-task", self.cpus_per_task),
                           ("max-parallel", self.max_parallel),
                           ("signal-seconds", self.signal_seconds)):  # fmt: skip
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"expected a positive integer, got {value!r}", key=f"--{opt}")
        for a in self.extra:
            if not _EXTRA_RE.fullmatch(a):
                raise InputError(
                    "expected one sbatch option like --account=abc or --exclusive (letters, "
                    f"digits and _.,:@%/+=|&*[]- only), got {a!r}",
                    key="--sbatch-arg",
                )


def render_sbatch(sweep: Sweep, options: SlurmOptions, python: str | None = None) -> str:
    """The array job script of ``sweep``: task ``i`` runs ``astrobatch slurm run-task ... i``.

    Parameters
    ----------
    sweep : Sweep
        The sweep (its tasks, project and name).
    options : SlurmOptions
        Resources per task; ``extra`` lines are added verbatim after ``#SBATCH``.
    python : str, optional
        Interpreter that has astrobatch and DVC (default: the running one).

    Returns
    -------
    str
        A bash script with ``--array=0-(N-1)``, one log per task
        (``slurm/runs/<sweep>/logs/%A_%a.out``, appended to when the task is requeued),
        ``--signal=B:USR1@<s>`` and ``--requeue``.
    """
    python = python or sys.executable
    n = len(sweep.tasks)
    rel = (RUNS / sweep.name).as_posix()
    array = f"0-{n - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"# astrobatch sweep {sweep.name}: {n} DVC experiment(s) {sweep.name}-<task> at commit "
        f"{sweep.commit[:12]}.",
        "# Written by `astrobatch slurm submit`; the tasks are in tasks.json:",
    ]
    for i, task in enumerate(sweep.tasks[:50]):
        shown = " ".join(task) or "(no override)"
        lines.append(f"#   {i}: {shown.encode('unicode_escape').decode('ascii')}")
    if n > 50:
        lines.append(f"#   ... {n - 50} more")
    lines += [
        f"#SBATCH --job-name={sweep.name}",
        f"#SBATCH --chdir={sweep.project}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={rel}/logs/%A_%a.out",
        "#SBATCH --open-mode=append",
        f"#SBATCH --signal=B:USR1@{options.signal_seconds}",
        "#SBATCH --requeue",
    ]
    if not any(a.startswith(("--ntasks", "--nodes", "-n", "-N")) for a in options.extra):
        lines.append("#SBATCH --ntasks=1")
    for opt, value in (
        ("partition", options.partition),
        ("time", options.time),
        ("cpus-per-task", options.cpus_per_task),
        ("mem", options.mem),
        ("gpus", options.gpus),
    ):
        if value is not None:
            lines.append(f"#SBATCH --{opt}={value}")
    lines += [f"#SBATCH {a}" for a in options.extra]
    bindir = str(Path(python).parent)
    lines += [
        "",
        "set -euo pipefail",
        f'export PATH={shlex.quote(bindir)}:"$PATH"',
        "export PYTHONUNBUFFERED=1",
        'echo "[astrobatch] $(date -Is) array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}'
        ' on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
        "# exec: run-task becomes the batch shell, so it receives --signal=B:USR1 and forwards it",
        f"exec {shlex.quote(python)} -m astrobatch slurm run-task "
        f'{shlex.quote(rel + "/" + SPEC_FILE)} "$SLURM_ARRAY_TASK_ID"',
        "",
    ]
    for line in lines:  # a value with a line break would add a shell line: never written
        check_printable(line, "sbatch script")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: str | Path, check: bool = True) -> str:
    if shutil.which("git") is None:
        raise InputError("git not found on PATH")
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise InputError(f"`git {' '.join(args)}` failed: {r.stderr.strip()}", path=cwd)
    return r.stdout.strip()


def clean_head(project: str | Path) -> str:
    """Commit of ``HEAD`` of ``project``, which must be a clean git workspace.

    Parameters
    ----------
    project : str or pathlib.Path
        Root of the git repository.

    Returns
    -------
    str
        Full commit hash.

    Raises
    ------
    astrobatch.errors.InputError
        Not the root of a git repository, no commit yet, or uncommitted changes (modified,
        staged or untracked files that are not ignored).
    """
    project = Path(project).resolve()
    r = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True
    )
    if r.returncode != 0 or Path(r.stdout.strip()).resolve() != project:
        raise InputError("not the root of a git repository (run from the project root)", project)
    head = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    if head.returncode != 0:
        raise InputError("the git repository has no commit yet (commit the project first)", project)
    dirty = _git(["status", "--porcelain", "--untracked-files=normal"], project).splitlines()
    if dirty:
        shown = ", ".join(line.strip() for line in dirty[:8]) + (" ..." if len(dirty) > 8 else "")
        raise InputError(
            "the git workspace has uncommitted changes; commit (or stash) them first, since "
            f"array tasks run the committed HEAD: {shown}",
            project,
        )
    return head.stdout.strip()


def _exp_refs(repo: str | Path) -> list[str]:
    """Names of the experiments whose refs are in ``repo`` (``refs/exps/<xx>/<rest>/<name>``)."""
    out = _git(["for-each-ref", "--format=%(refname)", "refs/exps/"], repo, check=False)
    return [r.rsplit("/", 1)[-1] for r in out.splitlines() if not r.startswith("refs/exps/exec/")]


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _cache_dir(project: Path) -> str:
    r = subprocess.run(_dvc("cache", "dir"), cwd=project, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise InputError(f"`dvc cache dir` failed: {r.stderr.strip()}", project)
    return str((project / r.stdout.strip().splitlines()[-1]).resolve())


def _ignore_runs(project: Path) -> None:
    """Keep sweep folders (logs, clones) out of git and out of the project's DVC index."""
    runs = project / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    for name in (".gitignore", ".dvcignore"):
        if not (runs / name).exists():
            (runs / name).write_text("# astrobatch slurm: logs and per-task clones\n*\n")


def submit(
    project: str | Path,
    sets: list[str] | None,
    name: str,
    targets: list[str] | None = None,
    prefix: str | None = None,
    options: SlurmOptions | None = None,
    dry_run: bool = False,
    workdir: str | Path | None = None,
    keep_workdirs: bool = False,
) -> tuple[Sweep, Path, str | None]:
    """Write the sweep's ``tasks.json`` and ``array.sbatch``, then ``sbatch`` it.

    Parameters
    ----------
    project : str or pathlib.Path
        Root of the DVC project (a clean git workspace).
    sets : list of str or None
        ``--set`` overrides; their cartesian product gives the tasks (:func:`expand_grid`).
    name : str
        Sweep name (letters, digits, ``_.-``); experiments are ``<name>-<index>``.
    targets : list of str, optional
        DVC stage targets (default: all stages).
    prefix : str, optional
        Sets ``runner.prefix`` (the container prefix of every stage) in every task.
    options : SlurmOptions, optional
        Resources per task.
    dry_run : bool
        Write the files but do not call ``sbatch``.
    workdir : str or pathlib.Path, optional
        Folder of the per-task clones on a shared file system (default
        ``slurm/runs/<name>/work``). Not node-local storage: a requeued task reuses its clone.
    keep_workdirs : bool
        Keep each task's clone after its experiment is pushed.

    Returns
    -------
    tuple
        ``(sweep, script_path, job_id)``; ``job_id`` is None for a dry run.

    Raises
    ------
    astrobatch.errors.InputError
        Not a DVC project root, dirty git workspace, bad name or override, sweep already
        submitted, experiment names taken, ``sbatch`` missing or failing.
    """
    project = Path(project).resolve()
    if not (project / ".dvc").is_dir():
        raise InputError("not the root of a DVC project (no .dvc folder)", project)
    if not _NAME_RE.match(name) or name.endswith(".lock") or ".." in name:
        raise InputError(
            f"sweep name must be 1-64 letters, digits, '_', '.', '-' (a git ref), got {name!r}",
            key="--name",
        )
    commit = clean_head(project)
    tasks = expand_grid(sets)
    if prefix is not None:
        tasks = [[*t, f"runner.prefix={quote_value(prefix)}"] for t in tasks]
    run_dir = project / RUNS / name
    if (run_dir / JOB_FILE).exists():
        raise InputError("sweep already submitted; choose another --name", run_dir / JOB_FILE)
    taken = sorted({f"{name}-{i}" for i in range(len(tasks))} & set(_exp_refs(project)))
    if taken:
        raise InputError(f"experiments {taken} already exist; choose another --name", project)
    sweep = Sweep(
        name=name,
        project=str(project),
        commit=commit,
        cache_dir=_cache_dir(project),
        targets=list(targets or []),
        workdir=str(Path(workdir).resolve() if workdir else run_dir / "work"),
        keep_workdirs=keep_workdirs,
        tasks=tasks,
        created=datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    _ignore_runs(project)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    sweep.save(run_dir / SPEC_FILE)
    script = run_dir / SCRIPT_FILE
    with atomic_path(script) as tmp:
        tmp.write_text(render_sbatch(sweep, options or SlurmOptions()))
    if dry_run:
        return sweep, script, None
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise InputError("sbatch not found on PATH (not a SLURM login node? try --dry-run)")
    r = subprocess.run([sbatch, "--parsable", str(script)], cwd=project, capture_output=True,
                       text=True)  # fmt: skip
    if r.returncode != 0:
        raise InputError(f"sbatch failed: {r.stderr.strip() or r.stdout.strip()}", script)
    job_id = r.stdout.strip().splitlines()[-1].split(";")[0]
    write_json(run_dir / JOB_FILE, {"job_id": job_id, "submitted": sweep.created})
    return sweep, script, job_id


# --------------------------------------------------------------------------------------------
# run-task: signals
# --------------------------------------------------------------------------------------------


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process ``pid`` handles ``signum`` instead of dying of it.

    True when the signal has a handler (``SigCgt`` in ``/proc/<pid>/status``: Python's
    ``signal.signal``, Go programs such as apptainer's starter) or is blocked for a dedicated
    thread to wait on (``SigBlk``: ``srun``, which relays it to every task of the step).
    False where ``/proc`` is not available.
    """
    bit = 1 << (int(signum) - 1)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("SigCgt:", "SigBlk:")) and int(line.split()[1], 16) & bit:
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def forward_signal(signum: int, root_pid: int | None = None) -> list[int]:
    """Send ``signum`` to the topmost descendants of ``root_pid`` that catch it.

    Processes that would die of the signal (``dvc``, ``sh``) are skipped and their children
    searched instead; a process that handles it (:func:`catches_signal`: Lightning's SLURM
    plugin; ``srun`` and apptainer's starter, which relay it to their tasks) gets it and its
    children do not.

    Parameters
    ----------
    signum : int
        Signal number, e.g. ``signal.SIGUSR1``.
    root_pid : int, optional
        Default: this process.

    Returns
    -------
    list of int
        The pids that were signalled.
    """
    import psutil

    sent: list[int] = []
    try:
        queue = psutil.Process(root_pid or os.getpid()).children()
    except psutil.NoSuchProcess:
        return sent
    while queue:
        proc = queue.pop(0)
        try:
            if catches_signal(proc.pid, signum):
                os.kill(proc.pid, signum)
                sent.append(proc.pid)
            else:
                queue.extend(proc.children())
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return sent


def _job_ref() -> str | None:
    """``<array job>_<task>`` (or the job id) of the running SLURM job, if any."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> bool:
    """``scontrol requeue`` the running SLURM job; False outside SLURM or on failure."""
    job = _job_ref()
    if job is None or shutil.which("scontrol") is None:
        log.warning("not in a SLURM job (or no scontrol): nothing to requeue")
        return False
    r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, r.stderr.strip())
        return False
    log.warning("requeued %s", job)
    return True


class _Forwarder:
    """SIGUSR1 handler of ``run-task``: forward to the trainer, or requeue."""

    def __init__(self, grace_s: float = REQUEUE_GRACE_S, on_signal=None):
        self.grace_s = grace_s
        self.on_signal = on_signal
        self.fired = False

    def __call__(self, signum, frame) -> None:
        self.fired = True
        if self.on_signal is not None:
            self.on_signal()
        pids = forward_signal(signum)
        if pids:
            log.warning(
                "signal %d: forwarded to pid(s) %s; requeueing in %.0f s if still running",
                signum, pids, self.grace_s,
            )  # fmt: skip
            timer = threading.Timer(self.grace_s, requeue)
            timer.daemon = True
            timer.start()
        else:
            log.warning("signal %d: no process handles it; requeueing now", signum)
            requeue()


# --------------------------------------------------------------------------------------------
# run-task
# --------------------------------------------------------------------------------------------


def _task_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    log.info("$ %s", shlex.join(cmd[2:] if cmd[:3] == _dvc()[:3] else cmd))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()  # do not leave dvc running when the task is stopped
        raise


def _git_identity(work: Path) -> None:
    """Give the clone a committer when none is configured (``dvc exp save`` commits)."""
    for key, value in (("user.name", "astrobatch slurm"), ("user.email", "astrobatch@localhost")):
        if not _git(["config", key], work, check=False):
            _git(["config", key, value], work)


def _clone(sweep: Sweep, work: Path, env: dict[str, str]) -> None:
    """Clone the project at the sweep's commit into ``work``, sharing the project's DVC cache."""
    if (work / ".git").is_dir() and (work / ".dvc" / "config.local").is_file():
        log.info("reusing workspace %s (requeued task: persisted outputs resume)", work)
        return
    if work.exists():
        shutil.rmtree(work)  # an incomplete clone of an earlier attempt
    tmp = work.with_name(f".{work.name}.clone-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _git(["clone", "--quiet", "--no-checkout", sweep.project, str(tmp)], tmp.parent)
    _git(["checkout", "--quiet", "--detach", sweep.commit], tmp)
    _git_identity(tmp)
    r = subprocess.run(_dvc("cache", "dir", "--local", sweep.cache_dir), cwd=tmp, env=env,
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        raise InputError(f"`dvc cache dir --local` failed: {r.stderr.strip()}", tmp)
    os.replace(tmp, work)  # a clone is reused only once complete
    log.info("cloned %s at %s into %s (DVC cache %s)", sweep.project, sweep.commit[:12], work,
             sweep.cache_dir)  # fmt: skip


def apply_overrides(work: str | Path, overrides: list[str]) -> None:
    """Apply ``-S``-style overrides to the params file(s) of workspace ``work``, as DVC does.

    Parameters
    ----------
    work : str or pathlib.Path
        Workspace root.
    overrides : list of str
        ``key=value`` (``params.yaml``) or ``file:key=value``; single values only.

    Raises
    ------
    astrobatch.errors.InputError
        Missing params file or an override DVC rejects.
    """
    if not overrides:
        return
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides as dvc_apply

    for path, ovs in to_path_overrides(overrides).items():
        target = Path(work) / path
        if not target.is_file():
            raise InputError("params file not found in the workspace", target)
        try:
            dvc_apply(target, ovs)
        except DvcException as err:
            cause = f": {err.__cause__}" if err.__cause__ else ""
            raise InputError(f"{err}{cause}".replace("\n", " "), target) from None


class _Terminated(Exception):
    """SIGTERM received (the task is cancelled, requeued or out of time)."""


def _terminate(signum, frame):
    raise _Terminated


class _TaskState:
    """``slurm/runs/<sweep>/state/<index>.json``: what the task last did."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, state: str, rc: int | None = None) -> None:
        write_json(self.path, {
            "state": state, "rc": rc, "job": _job_ref(),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "host": os.uname().nodename,
            "updated": datetime.now().astimezone().isoformat(timespec="seconds"),
        })  # fmt: skip


def _push(work: Path, name: str, env: dict[str, str]) -> int:
    """``dvc exp push --no-cache origin <name>``, retried (other tasks push to the same repo)."""
    rc = 1
    for attempt in range(PUSH_ATTEMPTS):
        rc = _run(_dvc("exp", "push", "--no-cache", "origin", name), work, env)
        if rc == 0:
            return 0
        time.sleep(2.0 * (attempt + 1))
    return rc


def run_task(spec: str | Path, index: int) -> int:
    """Run task ``index`` of a sweep: clone, override, ``dvc repro``, ``exp save``, ``exp push``.

    Parameters
    ----------
    spec : str or pathlib.Path
        The sweep's ``tasks.json``.
    index : int
        Task index (``$SLURM_ARRAY_TASK_ID``).

    Returns
    -------
    int
        Exit status of the failing ``dvc`` command, else 0.

    Raises
    ------
    astrobatch.errors.InputError
        Bad sweep file or index, a failing git clone, a bad override.
    """
    sweep = Sweep.load(spec)
    if not 0 <= index < len(sweep.tasks):
        raise InputError(f"task index {index} out of range 0..{len(sweep.tasks) - 1}", spec)
    overrides, name = sweep.tasks[index], sweep.exp_name(index)
    work = Path(sweep.workdir) / str(index)
    state = _TaskState(sweep.run_dir / "state" / f"{index}.json")
    env = _task_env()
    log.info("task %d of sweep %s: experiment %s, overrides %s", index, sweep.name, name,
             " ".join(overrides) or "(none)")  # fmt: skip
    state.write("running")
    forwarder = _Forwarder(on_signal=lambda: state.write("requeueing"))
    signal.signal(signal.SIGUSR1, forwarder)
    signal.signal(signal.SIGTERM, _terminate)  # scancel, requeue, time limit: record it
    rc, final = 2, None  # an InputError below (git clone, override) exits with 2
    try:
        if (work / ".git").is_dir() and name in _exp_refs(work):
            log.info("experiment %s already saved in %s; pushing it", name, work)
            rc = 0
        else:
            _clone(sweep, work, env)
            apply_overrides(work, overrides)
            rc = _run(_dvc("repro", *sweep.targets), work, env)
            if rc == 0:
                rc = _run(_dvc("exp", "save", "--name", name, *sweep.targets), work, env)
        if rc == 0:
            rc = _push(work, name, env)
    except _Terminated:
        rc, final = 128 + signal.SIGTERM, "terminated"
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # finished: nothing to checkpoint
        if rc == 0:
            final = "done"
        elif forwarder.fired:
            final = "requeued"
        state.write(final or "failed", rc)
    if rc == 0:
        log.info("experiment %s is in %s (dvc exp show)", name, sweep.project)
        if not sweep.keep_workdirs:
            shutil.rmtree(work, ignore_errors=True)
    else:
        log.error("task %d failed with exit status %d; workspace kept: %s", index, rc, work)
    return rc


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


def _slurm_states(job_id: str) -> dict[int, tuple[str, str | None]]:
    """``{task: (state, exit code)}`` from ``sacct`` (if accounting is on), then ``squeue``."""
    states: dict[int, tuple[str, str | None]] = {}
    queries = [
        (["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"], True),
        (["squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T"], False),  # live state wins
    ]
    for cmd, has_rc in queries:
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            continue
        for line in r.stdout.splitlines():
            parts = line.strip().split("|")
            m = re.fullmatch(rf"{re.escape(job_id)}_(\d+)", parts[0])
            if m and len(parts) >= 2:
                states[int(m.group(1))] = (parts[1].split()[0], parts[2] if has_rc else None)
    return states


def sweep_status(project: str | Path, name: str) -> list[dict[str, Any]]:
    """One dict per task of sweep ``name``: overrides, state, exit status, log file.

    ``state`` is SLURM's (``squeue``, else ``sacct`` when accounting is enabled) and otherwise
    the task's own record (``running``, ``requeueing``, ``requeued``, ``terminated``, ``done``,
    ``failed``; ``not started``).

    Raises
    ------
    astrobatch.errors.InputError
        No such sweep.
    """
    run_dir = Path(project).resolve() / RUNS / name
    sweep = Sweep.load(run_dir / SPEC_FILE)
    job = json.loads((run_dir / JOB_FILE).read_text()) if (run_dir / JOB_FILE).is_file() else {}
    job_id = job.get("job_id")
    slurm = _slurm_states(job_id) if job_id else {}
    rows = []
    for i, task in enumerate(sweep.tasks):
        sf = run_dir / "state" / f"{i}.json"
        own = json.loads(sf.read_text()) if sf.is_file() else {}
        slurm_state, exit_code = slurm.get(i, (None, None))
        rc = own.get("rc")
        if rc is None and exit_code and exit_code.split(":")[0].isdigit():
            rc = int(exit_code.split(":")[0])  # sacct, e.g. "1:0"
        state = (
            (slurm_state or "").lower()
            or own.get("state")
            or ("not started" if job_id else "not submitted")
        )
        logf = run_dir / "logs" / f"{job_id}_{i}.out"
        rows.append({
            "task": i, "experiment": sweep.exp_name(i), "overrides": task, "state": state,
            "rc": rc, "restarts": own.get("restart"),
            "log": str(logf.relative_to(Path(sweep.project))) if logf.is_file() else None,
        })  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@stage(app, "submit")
def submit_cmd(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-S",
            help="Param override as for `dvc exp run -S` (repeatable); comma-separated values "
            "sweep, the tasks are the cartesian product: -S 'star_sets.seed=1,2,3'.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="Sweep name; experiments are <name>-<task>. [default: sweep-<time>]",
        ),
    ] = None,
    targets: Annotated[
        list[str] | None,
        typer.Option(
            "--targets",
            "--target",
            "-t",
            help="DVC stage to reproduce, with its upstream stages (repeatable), e.g. "
            "star_sets_evaluate. [default: all stages]",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Container prefix of every stage (sets runner.prefix in each experiment), e.g. "
            "'apptainer exec --nv --bind $PWD astrobatch.sif'. [default: as in params.yaml]"
        ),
    ] = None,
    partition: Annotated[str | None, typer.Option(help="sbatch --partition.")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", help="sbatch --time per task, e.g. 04:00:00.")
    ] = None,
    cpus_per_task: Annotated[int | None, typer.Option(help="sbatch --cpus-per-task.")] = None,
    mem: Annotated[str | None, typer.Option(help="sbatch --mem per task, e.g. 16G.")] = None,
    gpus: Annotated[str | None, typer.Option(help="sbatch --gpus per task, e.g. 1.")] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="At most this many tasks at once (--array=0-N%K).")
    ] = None,
    signal_seconds: Annotated[
        int, typer.Option(help="SIGUSR1 this many seconds before the time limit (checkpoint).")
    ] = 120,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra #SBATCH option (repeatable), e.g. --sbatch-arg=--account=abc."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the per-task clones, on a shared file system. "
            "[default: slurm/runs/<name>/work]"
        ),
    ] = None,
    keep_workdirs: Annotated[
        bool, typer.Option(help="Keep each task's clone after its experiment is pushed.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Write tasks.json and array.sbatch, print the script; no sbatch.")
    ] = False,
    project: Annotated[Path, typer.Option(help="Project root (a clean git workspace).")] = Path(),
) -> None:
    """Submit a grid of DVC experiments as one SLURM job array (one task per experiment).

    Writes slurm/runs/<name>/tasks.json and array.sbatch, then calls sbatch. Each task clones
    the committed HEAD, shares the project's DVC cache, runs `dvc repro` with its overrides and
    pushes experiment <name>-<task> back: `dvc exp show` lists the results. Needs a clean,
    committed git workspace.
    """
    name = name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    options = SlurmOptions(
        partition=partition, time=time_limit, cpus_per_task=cpus_per_task, mem=mem, gpus=gpus,
        max_parallel=max_parallel, signal_seconds=signal_seconds, extra=tuple(sbatch_arg or ()),
    )  # fmt: skip
    sweep, script, job_id = submit(
        project, set_, name, targets, prefix, options, dry_run, workdir, keep_workdirs
    )
    rel = script.relative_to(Path(sweep.project))
    if dry_run:
        typer.echo(script.read_text())
        typer.echo(f"dry run: {len(sweep.tasks)} task(s) written to {rel}; not submitted")
        return
    typer.echo(f"Submitted sweep {sweep.name}: {len(sweep.tasks)} task(s), job {job_id}")
    typer.echo(f"logs: {rel.parent}/logs/; follow with: astrobatch slurm status {sweep.name}")


@stage(app, "run-task")
def run_task_cmd(
    tasks: Annotated[Path, typer.Argument(help="The sweep's tasks.json.")],
    index: Annotated[int, typer.Argument(help="Task index ($SLURM_ARRAY_TASK_ID).")],
) -> None:
    """Run one task of a sweep (what each array task executes).

    Clones the project at the sweep's commit into <workdir>/<index> (reused when the task is
    requeued, so training resumes from last.ckpt), shares the project's DVC cache, applies the
    task's overrides, runs `dvc repro`, then `dvc exp save` and `dvc exp push --no-cache
    origin`. Exit status: that of the failing dvc command, else 0.
    """
    rc = run_task(tasks, index)
    if rc:
        raise typer.Exit(rc)


@stage(app, "status")
def status_cmd(
    sweep: Annotated[str, typer.Argument(help="Sweep name (folder in slurm/runs/).")],
    project: Annotated[Path, typer.Option(help="Project root.")] = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the tasks of a sweep: overrides, state (squeue / sacct / task records), log."""
    rows = sweep_status(project, sweep)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {sweep}")
    for col in ("task", "experiment", "overrides", "state", "exit", "log"):
        table.add_column(col, overflow="fold")
    colours = {"done": "green", "completed": "green", "failed": "red", "running": "cyan"}
    for r in rows:
        st = r["state"]
        table.add_row(
            str(r["task"]), r["experiment"], " ".join(r["overrides"]) or "-",
            f"[{colours.get(st, 'yellow')}]{st}[/]",
            "" if r["rc"] is None else str(r["rc"]), r["log"] or "",
        )  # fmt: skip
    Console().print(table)
    spec = Sweep.load(Path(project).resolve() / RUNS / sweep / SPEC_FILE)
    head = _git(["rev-parse", "HEAD"], spec.project, check=False)
    rev = "" if head == spec.commit else f" --rev {spec.commit[:12]}"
    typer.echo(f"results: dvc exp show{rev}  (experiments of commit {spec.commit[:12]})")
