"""The study kit: the spine every study shares, so that a study is only its science.

A study is a package ``astrobatch.studies.<name>`` registered in
:data:`astrobatch.studies.STUDIES`; its ``stages.py`` makes one :class:`Study` and declares
its DVC stages on it::

    study = Study("star_sets", help="Star-cluster mass from sets of member stars.")

    @study.stage("train", out="models", inputs=("prepared", "live"), resume="training")
    def train_cmd(p, paths):
        \"\"\"Train the set model (this docstring is the command's --help).\"\"\"
        return train(p, paths)  # reads paths.prepared, writes paths.models and paths.live

The kit gives every study:

- **paths from its name** (:class:`StudyPaths`): ``data/raw/<name>``, ``data/prepared/<name>``,
  ``models/<name>``, ``dvclive/<name>``, ``metrics/<name>.json``, ``plots/<name>``,
  ``reports/<name>`` — the same conventions as the ``vars`` of ``dvc.yaml``;
- **the Typer sub-app** (:attr:`Study.app`, mounted by ``astrobatch.cli`` from the registry as
  ``astrobatch <name-with-dashes>``) and **its commands** (:meth:`Study.stage`): the common
  options ``--params/-p``, ``--out`` and the input folders (``--prepared``, ``--models``,
  ``--live``, ``--metrics``, ``--plots``, ``--reports``, ``--pretrained``) with defaults from
  the study's paths, ``--resume/--no-resume`` for training stages, the project's error handling
  (bad input: one line naming file, key and expectation, exit status 2; Ctrl-C: exit 130) and the
  closing log line (a training stage's best ``val/loss`` and epochs);
- **one train driver**: :func:`astrobatch.train.train_model` (seed, run fingerprint with one
  central list of what does not change a run, :data:`astrobatch.train.RUN_INVARIANT`, Lightning
  ``fit``, resume);
- **one evaluate writer**: :func:`write_evaluation` (tables such as ``predictions.parquet``
  atomically, then the flat metrics JSON that ``dvc exp show`` reads) and
  :func:`print_summary` (the rich summary table on standard error).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from astrobatch.cli_utils import ParamsOption, SetParamOption, stage
from astrobatch.params import DEFAULT_PARAMS, load_params

log = logging.getLogger("astrobatch.study")


@dataclass(frozen=True)
class StudyPaths:
    """Where a study's DVC inputs and outputs live, derived from its name.

    Every study function of a stage takes one of these (``train(params, paths)``,
    ``evaluate(params, paths)``) and reads the fields it needs; the stage command fills
    them from its folder options, the defaults being :meth:`for_study`.

    Attributes
    ----------
    raw, prepared, models, live, plots, reports : pathlib.Path or None
        ``data/raw/<name>``, ``data/prepared/<name>``, ``models/<name>``,
        ``dvclive/<name>``, ``plots/<name>``, ``reports/<name>`` (folders).
    metrics : pathlib.Path or None
        ``metrics/<name>.json`` (flat metrics of the study's evaluate stage).
    pretrained : pathlib.Path or None
        Checkpoint folder of a pretrained model that a stage starts from (stellar_xp's
        fine-tuning and evaluation); None where a study has none.

    Examples
    --------
    >>> StudyPaths.for_study("star_sets").models.as_posix()
    'models/star_sets'
    >>> p = StudyPaths(prepared=Path("prep"), models=Path("m"))
    >>> p.need("prepared", "models"), p.live
    ((PosixPath('prep'), PosixPath('m')), None)
    """

    raw: Path | None = None
    prepared: Path | None = None
    models: Path | None = None
    live: Path | None = None
    metrics: Path | None = None
    plots: Path | None = None
    reports: Path | None = None
    pretrained: Path | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, f.name, Path(v))

    @classmethod
    def for_study(cls, name: str, root: str | Path = ".") -> StudyPaths:
        """The conventional paths of study ``name`` below ``root`` (default: relative)."""
        r = Path(root)
        return cls(
            raw=r / "data" / "raw" / name,
            prepared=r / "data" / "prepared" / name,
            models=r / "models" / name,
            live=r / "dvclive" / name,
            metrics=r / "metrics" / f"{name}.json",
            plots=r / "plots" / name,
            reports=r / "reports" / name,
        )

    def need(self, *kinds: str) -> tuple[Path, ...]:
        """The paths of ``kinds``, in order.

        Raises
        ------
        ValueError
            One of them is not set (a programming error: the stage does not pass it).
        """
        missing = [k for k in kinds if getattr(self, k) is None]
        if missing:
            raise ValueError(f"StudyPaths: {missing} not set")
        return tuple(getattr(self, k) for k in kinds)


#: Help text of the kit's folder options (``--<name>``).
FOLDER_HELP: dict[str, str] = {
    "raw": "Raw input file to write.",
    "prepared": "Folder of prepared shards.",
    "models": "Checkpoint folder (best.ckpt).",
    "live": "DVCLive folder (training curves).",
    "metrics": "Metrics JSON to write.",
    "plots": "Folder of PNG plots.",
    "reports": "Folder of tables (predictions).",
    "pretrained": "Checkpoint folder of the pretrained model (best.ckpt).",
}
_KIND_OF_OUT_HELP = {
    "raw": "Raw file to write.",
    "prepared": "Output folder of shards.",
    "models": "Checkpoint folder.",
}


def _with_resume(p: Any, attr: str, resume: bool | None) -> Any:
    """``p`` with ``<attr>.resume`` set from ``--resume/--no-resume`` (``attr`` dotted)."""
    if resume is None:
        return p
    head, _, rest = attr.partition(".")
    sub = getattr(p, head)
    if rest:
        new = _with_resume(sub, rest, resume)
    else:
        new = sub.model_copy(update={"resume": "auto" if resume else "never"})
    return p.model_copy(update={head: new})


class Study:
    """One study's spine: its name, paths, params section and Typer sub-app.

    Parameters
    ----------
    name : str
        The study's name: its ``params.yaml`` section, its folder under ``studies/`` and
        its registry key (:data:`astrobatch.studies.STUDIES`). The CLI name replaces
        underscores by dashes.
    help : str
        One-line description shown by ``astrobatch --help``.
    question : str
        The study's scientific question, one sentence (the results report's heading).

    Attributes
    ----------
    paths : StudyPaths
    log : logging.Logger
        The study's logger (``astrobatch.studies.<name>``).
    app : typer.Typer
        The sub-app; every :meth:`stage` adds a command to it.
    """

    def __init__(self, name: str, help: str, question: str = "") -> None:
        self.name = name
        self.help, self.question = help, question
        self.cli_name = name.replace("_", "-")
        self.paths = StudyPaths.for_study(name)
        self.log = logging.getLogger(f"astrobatch.studies.{name}")
        self.app = typer.Typer(
            name=self.cli_name, help=help, no_args_is_help=True, rich_markup_mode=None
        )

    def load(self, path: str | Path = DEFAULT_PARAMS, resume: bool | None = None,
             resume_attr: str = "training", overrides: Iterable[str] = ()) -> Any:  # fmt: skip
        """The validated params section of this study, with ``-S`` and ``--resume`` applied.

        Raises
        ------
        astrobatch.errors.ParamsError
            Missing or invalid params file or section, or a bad override.
        """
        p = load_params(self.name, path, overrides)
        return _with_resume(p, resume_attr, resume)

    def stage(
        self,
        name: str,
        *,
        out: str | None = None,
        out_help: str | None = None,
        out_default: str | Path | None = None,
        inputs: Iterable[str] | Mapping[str, Path] = (),
        resume: str | None = None,
    ) -> Callable:
        """Register a function as command ``astrobatch <study> <name>``.

        Parameters
        ----------
        name : str
            The command (and DVC stage suffix), e.g. ``"train"``.
        out : str, optional
            Kind of the stage's main output, given as ``--out``: ``"raw"`` (default: None,
            the function reads its raw path from params), ``"prepared"`` or ``"models"``
            (default: the study's folder of that kind).
        out_help : str, optional
            Help of ``--out`` (default: by kind).
        out_default : str or pathlib.Path, optional
            Default of ``--out`` other than the study's folder of that kind.
        inputs : iterable of str, or mapping of str to Path
            Further folder options, among :data:`FOLDER_HELP` (``prepared``, ``models``,
            ``live``, ``metrics``, ``plots``, ``reports``, ``pretrained``); a mapping gives
            defaults other than the study's paths (e.g. ``models/stellar_xp/pretrain``).
        resume : str, optional
            Dotted attribute of the params whose ``resume`` field ``--resume/--no-resume``
            overrides (``"training"``, ``"pretrain.training"``); None: no such option.

        Notes
        -----
        The decorated function is called as ``f(p, paths, **extra)`` when its second
        parameter is named ``paths``: ``p`` the validated params section, ``paths`` the
        study's :class:`StudyPaths` with the folder options applied (``--out`` sets the
        field of kind ``out``), ``extra`` any further Typer options it declares. Otherwise
        it is called as ``f(p, **folders, **extra)`` (``folders`` by option name, ``out``
        included: simulate and prepare, whose output is a file or a new folder). Its
        docstring is the command's ``--help``. A returned dict with ``best_val_loss`` (a
        training state) is logged as one line.
        """
        defaults = dict(inputs) if isinstance(inputs, Mapping) else dict.fromkeys(inputs)
        folders: dict[str, tuple[Path | None, str]] = {}
        if out is not None:
            default = None if out == "raw" else Path(out_default or getattr(self.paths, out))
            folders["out"] = (default, out_help or _KIND_OF_OUT_HELP[out])
        for key, default in defaults.items():
            if key not in FOLDER_HELP:
                raise ValueError(f"unknown folder option {key!r}; known: {sorted(FOLDER_HELP)}")
            path = default if default is not None else getattr(self.paths, key, None)
            folders[key] = (Path(path) if path is not None else None, FOLDER_HELP[key])

        def deco(f: Callable) -> Callable:
            own = list(inspect.signature(f, eval_str=True).parameters.values())[1:]
            takes_paths = bool(own) and own[0].name == "paths"
            extra = [q for q in own[int(takes_paths) :] if q.name not in folders]
            sig_params = [
                inspect.Parameter("params", inspect.Parameter.KEYWORD_ONLY,
                                  default=DEFAULT_PARAMS, annotation=ParamsOption),
                inspect.Parameter("set_param", inspect.Parameter.KEYWORD_ONLY,
                                  default=None, annotation=SetParamOption),
            ]  # fmt: skip
            for key, (default, text) in folders.items():
                ann = Annotated[Path | None if default is None else Path, typer.Option(help=text)]
                sig_params.append(
                    inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                      annotation=ann)
                )  # fmt: skip
            if resume is not None:
                ann = Annotated[
                    bool | None,
                    typer.Option("--resume/--no-resume",
                                 help="Continue an interrupted identical run from last.ckpt "
                                 "(default: the params' resume, 'auto')."),
                ]  # fmt: skip
                sig_params.append(
                    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None,
                                      annotation=ann)
                )  # fmt: skip
            sig_params += [q.replace(kind=inspect.Parameter.KEYWORD_ONLY) for q in extra]

            def command(**kwargs: Any) -> Any:
                flag = kwargs.pop("resume", None)
                p = self.load(kwargs.pop("params"), flag, resume or "training",
                              kwargs.pop("set_param") or ())  # fmt: skip
                if takes_paths:
                    given = {(out if k == "out" else k): kwargs.pop(k) for k in folders}
                    result = f(p, replace(self.paths, **given), **kwargs)
                else:
                    result = f(p, **kwargs)
                if isinstance(result, dict) and "best_val_loss" in result:
                    log.info("%s %s: best val/loss %s after %d epochs", self.name, name,
                             result["best_val_loss"], result["epochs_trained"])  # fmt: skip
                return result

            command.__name__ = f.__name__
            command.__doc__ = f.__doc__
            command.__module__ = f.__module__
            command.__signature__ = inspect.Signature(sig_params)  # type: ignore[attr-defined]
            command.__annotations__ = {q.name: q.annotation for q in sig_params}
            stage(self.app, name)(command)
            return f

        return deco

    def predict(self, model_default: str | Path | None = None) -> Callable:
        """Register ``f(p, model, inputs)`` as ``astrobatch <study> predict``.

        The command applies a trained model to real files that took no part in the
        splits: ``--model <folder>`` (default ``model_default``, else the study's models
        folder), ``--input <file or folder>`` (repeatable, required), ``--out <file>``
        (``.ecsv`` or ``.fits``), and the common ``-p``/``-S``. ``f`` validates its inputs
        as the study's ``prepare`` does (bad input: :class:`~astrobatch.errors.InputError`,
        exit status 2) and returns an :class:`astropy.table.Table` with ids and units;
        the kit writes it atomically (:func:`astrobatch.io.predictions.write_predictions`,
        nothing written on any error) and logs its rows.

        Parameters
        ----------
        model_default : str or pathlib.Path, optional
            Default of ``--model``.

        Examples
        --------
        >>> study = Study("demo", help="demo")
        >>> @study.predict()
        ... def predict_cmd(p, model, inputs):
        ...     \"\"\"Predict (this docstring is the --help).\"\"\"
        """
        from astrobatch.io.predictions import prediction_format, write_predictions

        default_model = Path(model_default) if model_default is not None else self.paths.models

        def deco(f: Callable) -> Callable:
            def command(
                p: Any,
                model: Annotated[Path, typer.Option(help="Trained model folder.")] = default_model,
                input: Annotated[
                    list[Path],
                    typer.Option(
                        "--input",
                        metavar="<path>",
                        help="Real file or folder to predict on (repeatable).",
                    ),
                ] = ...,  # type: ignore[assignment]
                out: Annotated[
                    Path, typer.Option(help="Predictions table to write (.ecsv or .fits).")
                ] = ...,  # type: ignore[assignment]
            ) -> None:
                from astrobatch.errors import InputError

                prediction_format(out)  # a bad suffix fails before any work
                for path in input:
                    if not path.exists():
                        raise InputError("expected an existing file or folder", path, "--input")
                if not (Path(model).is_dir() or Path(model).is_file()):
                    raise InputError("expected a trained model folder (run the study's train "
                                     "stage first)", model, "--model")  # fmt: skip
                table = f(p, Path(model), [Path(x) for x in input])
                write_predictions(table, out, self.name, model, input)
                self.log.info("predict: %d rows -> %s", len(table), out)

            command.__name__ = command.__qualname__ = f.__name__
            command.__doc__ = f.__doc__
            command.__module__ = f.__module__
            self.stage("predict")(command)
            return f

        return deco


@contextlib.contextmanager
def staged(paths: StudyPaths, kinds: Iterable[str] = ("plots", "reports", "metrics")
           ) -> Iterator[StudyPaths]:  # fmt: skip
    """Build a stage's outputs aside; swap them in only if the block succeeds.

    Yields ``paths`` with each of ``kinds`` replaced by a temporary folder (folders) or file
    path (``metrics``) next to the real one. On success the folders are swapped in
    (:func:`astrobatch.io.atomic.swap_in`, recoverable if killed) and the metrics file
    renamed over the old one last, so ``dvc exp show`` never reads new metrics beside old
    plots or the reverse; on any error nothing of the previous outputs has changed and the
    temporaries are removed.

    Parameters
    ----------
    paths : StudyPaths
    kinds : iterable of str
        Fields of ``paths`` to stage; unset ones are skipped. ``metrics`` is a file, the
        others folders.

    Yields
    ------
    StudyPaths
    """
    from astrobatch.io.atomic import recover, swap_in

    temps: dict[str, Path] = {}
    try:
        for kind in kinds:
            final = getattr(paths, kind)
            if final is None:
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            recover(final)
            if kind == "metrics":
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp",
                                           dir=final.parent)  # fmt: skip
                os.close(fd)
                os.unlink(tmp)
                temps[kind] = Path(tmp)
            else:
                temps[kind] = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp",
                                                    dir=final.parent))  # fmt: skip
        yield replace(paths, **temps)
        for kind, tmp in sorted(temps.items(), key=lambda kv: kv[0] == "metrics"):
            final = getattr(paths, kind)
            if kind == "metrics":
                if tmp.exists():
                    os.replace(tmp, final)
            else:
                os.chmod(tmp, 0o777 & ~_umask())
                swap_in(tmp, final)
    finally:
        for tmp in temps.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staged_outputs(*kinds: str) -> Callable:
    """Decorator: ``f(params, paths, ...)`` writes its ``kinds`` outputs through :func:`staged`.

    Examples
    --------
    >>> @staged_outputs("plots", "reports", "metrics")
    ... def evaluate(params, paths): ...
    """
    kinds = kinds or ("plots", "reports", "metrics")

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(params: Any, paths: StudyPaths, *args: Any, **kwargs: Any) -> Any:
            with staged(paths, kinds) as out:
                return f(params, out, *args, **kwargs)

        return wrapper

    return deco


#: At most this many headline metrics per study go to ``metrics/<study>.json`` (the DVC
#: metric that ``dvc exp show`` and ``astrobatch exp show`` tabulate); the full set goes to
#: ``reports/<study>/metrics_full.json``.
MAX_HEADLINE = 12
FULL_METRICS = "metrics_full.json"


def headline_metrics(metrics: Mapping[str, float], keys: Iterable[str]) -> dict[str, float]:
    """The headline subset of ``metrics``, in the order of ``keys`` (absent keys skipped).

    Parameters
    ----------
    metrics : mapping of str to float
        The full flat metrics of an evaluation.
    keys : iterable of str
        The study's headline names: the main error, its baselines and their ratios,
        calibration, real-data figures. A key absent from ``metrics`` (no real data in
        this run, say) is left out.

    Returns
    -------
    dict of str to float

    Raises
    ------
    ValueError
        More than :data:`MAX_HEADLINE` keys.

    Examples
    --------
    >>> headline_metrics({"test/mae": 0.2, "val/mae": 0.3, "n": 4}, ["test/mae", "real/mae"])
    {'test/mae': 0.2}
    """
    keys = list(dict.fromkeys(keys))
    if len(keys) > MAX_HEADLINE:
        raise ValueError(f"{len(keys)} headline metrics: at most {MAX_HEADLINE} ({keys})")
    return {k: metrics[k] for k in keys if k in metrics}


def _astropy_table(table: Any, units: Mapping[str, str] | None) -> Any:
    from astropy import units as u
    from astropy.table import Table

    if not isinstance(table, Table):
        table = Table.from_pandas(table, index=False)
    for name, unit in (units or {}).items():
        if name in table.colnames:
            table[name].unit = u.Unit(unit)
    return table


def write_evaluation(
    metrics: Mapping[str, float],
    metrics_path: str | Path,
    reports_dir: str | Path,
    tables: Mapping[str, Any] | None = None,
    headline: Iterable[str] | None = None,
    units: Mapping[str, str] | None = None,
) -> None:
    """Write an evaluation: its tables, the full metrics, then the headline metrics JSON.

    Parameters
    ----------
    metrics : mapping of str to float
        Flat metrics with stable names (``test/mae``, ``baseline/median/test/mae``).
    metrics_path : str or pathlib.Path
        The study's DVC metrics file (``metrics/<study>.json``), read by ``dvc exp show``:
        receives the ``headline`` subset (:func:`headline_metrics`), or everything when
        ``headline`` is None.
    reports_dir : str or pathlib.Path
        Folder of the tables and of ``metrics_full.json`` (every metric; not a DVC metric,
        so that the experiment tables stay readable).
    tables : mapping of str to table, optional
        File name -> pandas.DataFrame, written by suffix: ``.parquet`` (no index), ``.csv``,
        and through astropy.table.Table with ``units`` ``.ecsv`` and ``.fits`` (an astropy
        Table is accepted there as it is).
    headline : iterable of str, optional
        The study's headline metric names (at most :data:`MAX_HEADLINE`).
    units : mapping of str to str, optional
        Column name -> astropy unit string (``"solMass"``, ``"dex"``, ``"K"``) for the
        ``.ecsv`` and ``.fits`` tables; columns not named are dimensionless or ids.

    Raises
    ------
    ValueError
        A table name with another suffix; too many headline metrics.

    Notes
    -----
    Every file is written to a temporary path in its folder and renamed
    (:func:`astrobatch.io.atomic.atomic_path`); the metrics come last, so an evaluation
    that fails while writing its tables leaves the previous metrics in place.
    """
    from astrobatch.io.atomic import atomic_path, write_json

    tables = dict(tables or {})
    suffixes = (".parquet", ".csv", ".ecsv", ".fits")
    bad = [name for name in tables if Path(name).suffix not in suffixes]
    if bad:  # checked before anything is written
        raise ValueError(f"tables {bad}: expected {', '.join(suffixes)} names")
    top = dict(metrics) if headline is None else headline_metrics(metrics, headline)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    for fname, table in tables.items():
        suffix = Path(fname).suffix
        with atomic_path(reports_dir / fname) as tmp:
            if suffix == ".parquet":
                table.to_parquet(tmp, index=False)
            elif suffix == ".csv":
                table.to_csv(tmp, index=False)
            else:  # astropy: the format from the final name, not the temporary one
                fmt = "ascii.ecsv" if suffix == ".ecsv" else "fits"
                _astropy_table(table, units).write(tmp, format=fmt, overwrite=True)
    write_json(reports_dir / FULL_METRICS, dict(metrics))
    write_json(metrics_path, top, sort_keys=headline is None)


def print_summary(
    title: str, rows: Iterable[Iterable[Any]], columns: Iterable[str] = ("metric", "value")
) -> None:
    """Print the summary table of an evaluation on standard error (rich).

    Parameters
    ----------
    title : str
    rows : iterable of rows
        Cells; floats are shown with 4 significant digits.
    columns : iterable of str
        Column titles; all but the first are right-aligned.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from astrobatch.progress import interactive

    # a terminal gets rules; a batch log (SLURM, dvc exp run --queue) plain aligned columns
    table = Table(title=title, box=box.SIMPLE_HEAD if interactive() else None)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    Console(stderr=True, color_system=None if not interactive() else "auto").print(table)
