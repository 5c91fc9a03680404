"""Compare DVC experiments: ``dvc exp show --json`` to a summary table and a figure.

Every study sweeps parameters with ``dvc exp run -S key=value`` (often one
value per seed) and compares one metric across the sweep. This module turns
the JSON that ``dvc exp show --json`` prints (DVC 3.x) into one row per
experiment (:func:`load_experiments`), groups the rows by the swept parameter
(:func:`summarise`), and writes the result as a GitHub-flavoured markdown
table (:func:`write_markdown`) and a PNG figure (:func:`plot_comparison`).

The JSON of DVC 3.x is a list with one entry per commit (first the
``"workspace"``, then the baseline commit(s))::

    [{"rev": "workspace" | <sha>, "name": <branch> | null, "error": null | {...},
      "data": {"rev", "timestamp",
               "params":  {<file>: {"data": {nested params}} | {"error": {...}}},
               "metrics": {<file>: {"data": {flat or nested metrics}} | {"error": {...}}},
               "deps", "outs", "meta"},
      "experiments": null | [{"name": <exp name>,
                              "executor": null | {"state": "success" | "queued" |
                                                  "running" | "failed", ...},
                              "revs": [<entry like the above, "experiments": null>]}]}]

A failed experiment keeps ``"error": {"msg": "Experiment run failed"}`` but
still carries the metrics of the workspace it was queued from, so rows are
dropped on their error and executor state, not only on missing metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from astrobatch.errors import InputError
from astrobatch.io.atomic import atomic_path

#: Columns that describe a row rather than a parameter or a metric.
META_COLUMNS = ("name", "rev", "kind", "baseline", "timestamp")

#: The params file whose keys are not prefixed (as with ``dvc exp run -S key=value``).
DEFAULT_PARAMS_FILE = "params.yaml"

#: Executor states of experiments that have no results of their own.
_UNFINISHED_STATES = frozenset({"queued", "running", "failed"})

_SUMMARY_STATS = ("n", "mean", "std", "min", "max")


# --------------------------------------------------------------------------- loading


def _dvc_executable() -> str | None:
    """The ``dvc`` command on PATH, else the one installed beside this Python, else None."""
    found = shutil.which("dvc")
    if found:
        return found
    sibling = Path(sys.executable).parent / "dvc"
    return str(sibling) if sibling.is_file() else None


def _run_dvc_exp_show(repo: str | Path | None = None) -> str:
    """Run ``dvc exp show --json`` in ``repo`` (default: the current folder) and return its
    standard output."""
    exe = _dvc_executable()
    where = Path(repo) if repo is not None else Path.cwd()
    if exe is None:
        raise InputError(
            "the `dvc` command was not found on PATH; install DVC, or pass a file written by "
            "`dvc exp show --json > FILE` (--exp-json FILE)",
            path=where,
        )
    try:
        result = subprocess.run(
            [exe, "exp", "show", "--json"],
            capture_output=True,
            text=True,
            check=False,
            cwd=where,
        )
    except OSError as err:
        raise InputError(f"could not run `{exe} exp show --json`: {err}", path=where) from err
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise InputError(
            f"`dvc exp show --json` failed with exit status {result.returncode} (is this a "
            "DVC repository inside a git repository?): " + " | ".join(tail),
            path=where,
        )
    return result.stdout


def _decode(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # Tolerate a line of noise printed before the JSON list.
        start = text.find("[")
        if start > 0:
            try:
                return json.loads(text[start:])
            except json.JSONDecodeError:
                pass
        raise InputError(
            f"not valid JSON ({err}); expected the output of `dvc exp show --json`", path=label
        ) from err


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings to dotted keys; lists become their compact JSON text (hashable)."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{dotted}.")
        elif isinstance(value, list | tuple):
            yield dotted, json.dumps(value)
        else:
            yield dotted, value


def _file_values(section: Any) -> dict[str, dict[str, Any]]:
    """``{file: {"data": {...}}}`` to ``{file: {dotted key: value}}``, skipping errors."""
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(section, Mapping):
        return out
    for file, content in section.items():
        if isinstance(content, Mapping) and isinstance(content.get("data"), Mapping):
            values = dict(_flatten(content["data"]))
            if values:
                out[str(file)] = values
    return out


def _entries(doc: list, label: str) -> Iterator[tuple[dict, str, str | None, str | None]]:
    """Yield ``(entry, kind, baseline rev, executor state)`` for every commit and experiment."""
    for top in doc:
        if not isinstance(top, Mapping) or "rev" not in top:
            raise InputError(
                "expected a list of objects with a 'rev' key, as printed by "
                "`dvc exp show --json` (DVC 3.x)",
                path=label,
            )
        kind = "workspace" if top["rev"] == "workspace" else "baseline"
        yield top, kind, None, None
        for group in top.get("experiments") or []:
            state = (group.get("executor") or {}).get("state")
            for exp in group.get("revs") or []:
                yield exp, "experiment", top["rev"], state


def _parse(doc: Any, label: str) -> list[dict[str, Any]]:
    if not isinstance(doc, list):
        raise InputError(
            f"expected a JSON list (one entry per commit), got {type(doc).__name__}; "
            "is this the output of `dvc exp show --json` from DVC 3.x?",
            path=label,
        )
    rows = []
    for entry, kind, baseline, state in _entries(doc, label):
        if entry.get("error") or state in _UNFINISHED_STATES:
            continue  # failed, queued or running: metrics (if any) are not its own
        data = entry.get("data") or {}
        metrics = _file_values(data.get("metrics"))
        if not metrics:
            continue
        rev = str(entry.get("rev"))
        name = entry.get("name") or ("workspace" if kind == "workspace" else rev[:7])
        rows.append(
            {
                "meta": {
                    "name": name,
                    "rev": rev,
                    "kind": kind,
                    "baseline": baseline,
                    "timestamp": data.get("timestamp"),
                },
                "params": _file_values(data.get("params")),
                "metrics": metrics,
            }
        )
    return rows


def _drop_duplicate_workspace(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the workspace row when a commit or experiment has the same params and metrics."""
    others = [r for r in rows if r["meta"]["kind"] != "workspace"]
    kept = []
    for row in rows:
        if row["meta"]["kind"] == "workspace" and any(
            row["params"] == o["params"] and row["metrics"] == o["metrics"] for o in others
        ):
            continue
        kept.append(row)
    return kept


def _drop_repeated_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Count each result once: rows with the same name, or the same params and metrics
    (one result listed as a commit, an experiment and the workspace) are kept once:
    the commit first, then the experiment."""
    rank = {"baseline": 0, "experiment": 1, "workspace": 2}
    kept: list[dict[str, Any]] = []
    seen_names, seen_results = set(), set()
    for row in sorted(rows, key=lambda r: rank.get(r["meta"]["kind"], 3)):
        key = json.dumps([row["params"], row["metrics"]], sort_keys=True, default=str)
        name = (row["meta"]["kind"], row["meta"]["name"])
        if key in seen_results or name in seen_names:
            continue
        seen_results.add(key)
        seen_names.add(name)
        kept.append(row)
    order = {id(r): i for i, r in enumerate(rows)}
    return sorted(kept, key=lambda r: order[id(r)])


def mixed_params(
    df: pd.DataFrame, keys: Iterable[str], ignore: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Params, other than the grouping ones, that differ inside a group of ``keys``.

    A comparison pools the runs of one group as repetitions; a param that differs
    inside a group (say a learning rate left over from another sweep) makes that pooling
    wrong. Seeds (params whose last component is ``seed``) and ``ignore`` are expected to
    differ.

    Returns
    -------
    dict of str to list of str
        Group label (the key values joined by `` / ``) -> the params that differ in it.

    Examples
    --------
    >>> df = pd.DataFrame({"m": ["a", "a", "b"], "lr": [0.1, 0.2, 0.1], "x.seed": [1, 2, 3]})
    >>> df.attrs["params"] = ["m", "lr", "x.seed"]
    >>> mixed_params(df, ["m"])
    {'a': ['lr']}
    """
    keys = list(keys)
    skip = set(keys) | set(ignore)
    others = [
        c for c in df.attrs.get("params", [])
        if c in df.columns and c not in skip and c.rsplit(".", 1)[-1] != "seed"
    ]  # fmt: skip
    out: dict[str, list[str]] = {}
    if not keys or not others:
        return out
    for values, group in df.groupby(keys, sort=False, dropna=True):
        values = values if isinstance(values, tuple) else (values,)
        differ = [c for c in others if group[c].astype(str).nunique(dropna=False) > 1]
        if differ:
            out[" / ".join(format_value(v) for v in values)] = differ
    return out


def _metric_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Column name of each (file, metric): bare, or ``stem:name`` when files collide."""
    files_of: dict[str, list[str]] = {}
    for row in rows:
        for file, values in row["metrics"].items():
            for key in values:
                files_of.setdefault(key, [])
                if file not in files_of[key]:
                    files_of[key].append(file)
    columns = {}
    for key, files in files_of.items():
        stems = [Path(f).stem for f in files]
        for file, stem in zip(files, stems, strict=True):
            if len(files) == 1 and key not in META_COLUMNS:
                columns[(file, key)] = key
            elif stems.count(stem) == 1 and len(files) > 1:
                columns[(file, key)] = f"{stem}:{key}"
            else:
                columns[(file, key)] = f"{file}:{key}"
    return columns


def _param_column(file: str, key: str) -> str:
    if file == DEFAULT_PARAMS_FILE and key not in META_COLUMNS:
        return key
    return f"{file}:{key}"


def load_experiments(source: str | Path | None, repo: str | Path | None = None) -> pd.DataFrame:
    """Load DVC experiments as one row per workspace, commit and experiment.

    Parameters
    ----------
    source : str or pathlib.Path or None
        A file written by ``dvc exp show --json > FILE`` (DVC 3.x), ``"-"`` for
        standard input, or None to run ``dvc exp show --json`` in ``repo``.
    repo : str or pathlib.Path, optional
        The DVC project where ``dvc exp show`` runs (``source=None``); default: the
        current folder.

    Returns
    -------
    pandas.DataFrame
        One row per distinct result. Columns, in order:

        - ``name`` (experiment name, branch name, short sha or ``"workspace"``),
          ``rev`` (full sha or ``"workspace"``), ``kind`` (``"workspace"``,
          ``"baseline"`` or ``"experiment"``), ``baseline`` (sha of an experiment's
          baseline commit, else None), ``timestamp`` (ISO text or None);
        - parameters, flattened to the dotted keys given to ``dvc exp run -S``
          (``star_sets.model.name``); keys of a params file other than
          ``params.yaml`` are prefixed with it (``extra.yaml:mask.kind``);
          list values are kept as their JSON text;
        - metrics by their flat name (``test/mae``; nested JSON metrics are
          joined with dots as DVC does); a name found in several metrics
          files is prefixed with the file stem (``study:test/mae``), or the
          file path when stems collide too.

        ``df.attrs["params"]`` and ``df.attrs["metrics"]`` list the parameter
        and metric columns. Failed, queued and running experiments and rows
        without metrics are dropped; the workspace row is dropped when a
        commit or experiment has identical params and metrics, and every result is
        counted once (rows with the same params and metrics, or the same name, are
        kept once: commits, then experiments).

    Raises
    ------
    InputError
        If the file is missing or is not ``dvc exp show --json`` output, if
        ``dvc`` is missing or fails, or if no experiment has metrics.

    Examples
    --------
    >>> doc = [{"rev": "workspace", "name": None, "error": None, "experiments": None,
    ...         "data": {"params": {"params.yaml": {"data": {"m": {"name": "a"}}}},
    ...                  "metrics": {"metrics.json": {"data": {"test/mae": 0.5}}}}}]
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "exp.json"
    >>> _ = path.write_text(json.dumps(doc))
    >>> load_experiments(path)[["kind", "m.name", "test/mae"]].to_dict("records")
    [{'kind': 'workspace', 'm.name': 'a', 'test/mae': 0.5}]
    """
    if source is None:
        label = "dvc exp show --json"
        text = _run_dvc_exp_show(repo)
    elif str(source) == "-":
        label = "<stdin>"
        text = sys.stdin.read()
    else:
        label = str(source)
        path = Path(source)
        if not path.is_file():
            raise InputError(
                "file not found; write it with `dvc exp show --json > FILE`", path=path
            )
        text = path.read_text(encoding="utf-8")
    rows = _drop_repeated_results(_drop_duplicate_workspace(_parse(_decode(text, label), label)))
    if not rows:
        raise InputError(
            "no experiment with metrics (failed and queued experiments are skipped); "
            "run `dvc exp run` first",
            path=label,
        )

    metric_cols = _metric_columns(rows)
    records, param_names, metric_names = [], {}, {}
    for row in rows:
        record = dict(row["meta"])
        for file, values in row["params"].items():
            for key, value in values.items():
                column = _param_column(file, key)
                param_names[column] = None
                record[column] = value
        for file, values in row["metrics"].items():
            for key, value in values.items():
                column = metric_cols[(file, key)]
                metric_names[column] = None
                record[column] = value
        records.append(record)
    columns = [*META_COLUMNS, *param_names, *metric_names]
    df = pd.DataFrame.from_records(records, columns=columns)
    df.attrs.update(params=list(param_names), metrics=list(metric_names), source=label)
    return df


# --------------------------------------------------------------------------- summary


def _available(df: pd.DataFrame, what: str) -> str:
    names = df.attrs.get(what) or [c for c in df.columns if c not in META_COLUMNS]
    return ", ".join(names)


def _require(df: pd.DataFrame, column: str, what: str) -> None:
    if column in df.columns:
        return
    similar = [c for c in df.columns if str(c).endswith(f":{column}")]
    hint = f" (did you mean {' or '.join(similar)}?)" if similar else ""
    raise InputError(
        f"no {what} column {column!r}{hint}; available {what}s: {_available(df, what + 's')}",
        path=df.attrs.get("source"),
        key=column,
    )


def filter_rows(df: pd.DataFrame, conditions: Iterable[str]) -> pd.DataFrame:
    """Rows whose parameters equal the given values (``"param=value"`` strings).

    Values are compared as text (:func:`format_value`), so ``0.5``, ``5im`` and
    ``true`` match what ``dvc exp run -S`` was given (booleans in lower case too).

    Raises
    ------
    InputError
        A condition without ``=``, an unknown parameter, or no row left.

    Examples
    --------
    >>> df = pd.DataFrame({"i": ["1im", "5im"], "r": [6.0, 12.0], "s": [True, False]})
    >>> filter_rows(df, ["i=5im", "r=12", "s=false"])["r"].tolist()
    [12.0]
    """
    out = df
    for cond in conditions:
        if "=" not in cond:
            raise InputError(f"expected PARAM=VALUE, got {cond!r}", key="--where")
        key, value = cond.split("=", 1)
        _require(df, key, "param")
        text = out[key].map(lambda v: format_value(v).lower() if isinstance(v, bool) else
                            format_value(v))  # fmt: skip
        out = out[text == value]
    if out.empty:
        raise InputError(f"no experiment matches {list(conditions)}", key="--where")
    return out


def combine_params(df: pd.DataFrame, spec: str) -> str:
    """Add a column for a combination ``a+b+...`` of parameters; return its name.

    The combined value is the parameters' values joined by ``" / "`` (e.g.
    ``"inner / 5im"``), so that configurations that differ in several
    parameters (mask type, input, control) can be compared as categories. A
    spec without ``+`` is returned unchanged.

    Raises
    ------
    InputError
        If one of the parameters is not a column.

    Examples
    --------
    >>> df = pd.DataFrame({"m": ["none", "inner"], "i": ["5im", "1im"]})
    >>> combine_params(df, "m+i"), df["m+i"].tolist()
    ('m+i', ['none / 5im', 'inner / 1im'])
    """
    if "+" not in spec:
        return spec
    parts = spec.split("+")
    for p in parts:
        _require(df, p, "param")
    df[spec] = [
        " / ".join(format_value(v) for v in row) if all(pd.notna(v) for v in row) else None
        for row in df[parts].itertuples(index=False)
    ]
    return spec


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _sort_key(values: pd.Series) -> pd.Series:
    return values if _is_numeric(values) else values.map(format_value)


def format_value(value: Any) -> str:
    """Text of a parameter value: integral floats without ``.0``, others as given.

    Examples
    --------
    >>> [format_value(v) for v in (2.0, 0.25, 3, "deep_sets", True)]
    ['2', '0.25', '3', 'deep_sets', 'True']
    """
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)


def summarise(
    df: pd.DataFrame,
    metric: str,
    param: str,
    hue: str | None = None,
    seed_param: str | None = None,
) -> pd.DataFrame:
    """Mean and spread of ``metric`` for each value of ``param`` (and ``hue``).

    Rows are grouped by ``param`` (and ``hue``); the statistics run over the
    remaining rows of each group, i.e. over repetitions such as seeds. Rows
    where the metric or a grouping parameter is missing are ignored.

    Parameters
    ----------
    df : pandas.DataFrame
        Experiments, as returned by :func:`load_experiments`.
    metric : str
        Metric column (numeric), e.g. ``"test/mae_log_mass"``.
    param : str
        Swept parameter column, e.g. ``"star_sets.model.name"``.
    hue : str, optional
        Second parameter: one group (one line or bar colour) per value.
    seed_param : str, optional
        Seed parameter column; when given, a ``seeds`` column lists the
        distinct seeds of each group (e.g. ``"1, 2, 3"``).

    Returns
    -------
    pandas.DataFrame
        Columns ``param``, [``hue``], ``n`` (int), ``mean``, ``std`` (sample
        standard deviation, ddof=1; NaN when n = 1), ``min``, ``max``,
        [``seeds``]. Sorted by ``param`` then ``hue``: numerically for numeric
        parameters, alphabetically otherwise.

    Raises
    ------
    InputError
        If a column is missing (the message lists the available ones), the
        metric is not numeric, or no row has both the metric and the parameters.

    Examples
    --------
    >>> df = pd.DataFrame({"lr": [0.1, 0.01, 0.1], "test/mae": [1.0, 2.0, 3.0]})
    >>> s = summarise(df, "test/mae", "lr")
    >>> s["lr"].tolist(), s["n"].tolist(), s["mean"].tolist(), s["std"].round(4).tolist()
    ([0.01, 0.1], [1, 2], [2.0, 2.0], [nan, 1.4142])
    """
    _require(df, metric, "metric")
    keys = [param] if hue is None else [param, hue]
    named = keys + ([seed_param] if seed_param else [])
    for key in named:
        _require(df, key, "param")
    if len(set(named)) < len(named):
        raise InputError(f"param, hue and seed_param must be different columns: {named}")
    values = pd.to_numeric(df[metric], errors="coerce")
    if (values.isna() & df[metric].notna()).any():
        raise InputError("metric is not numeric", path=df.attrs.get("source"), key=metric)
    sub = df[named].copy()
    sub["_value"] = values
    sub = sub.dropna(subset=[*keys, "_value"])
    if sub.empty:
        raise InputError(
            f"no experiment has both the metric and {' and '.join(keys)}",
            path=df.attrs.get("source"),
            key=metric,
        )
    aggs: dict[str, tuple[str, Any]] = {
        "n": ("_value", "count"),
        "mean": ("_value", "mean"),
        "std": ("_value", "std"),
        "min": ("_value", "min"),
        "max": ("_value", "max"),
    }
    if seed_param:
        aggs["seeds"] = (seed_param, _join_seeds)
    out = sub.groupby(keys, sort=False).agg(**aggs).reset_index()
    out["n"] = out["n"].astype(int)
    out = out.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True)
    out.attrs.update(metric=metric, param=param, hue=hue)
    return out


def _join_seeds(seeds: pd.Series) -> str:
    distinct = seeds.dropna().unique()
    order = sorted(distinct) if _is_numeric(pd.Series(distinct)) else sorted(distinct, key=str)
    return ", ".join(format_value(s) for s in order)


def baseline_values(df: pd.DataFrame, metrics: Iterable[str]) -> dict[str, float]:
    """Value of each baseline metric: its mean over the rows that report it.

    Parameters
    ----------
    df : pandas.DataFrame
        Experiments, as returned by :func:`load_experiments`.
    metrics : iterable of str
        Baseline metric columns, e.g. ``"baseline/median/test/mae_log_mass"``.

    Returns
    -------
    dict of str to float
        Metric name to mean value, in the given order.

    Raises
    ------
    InputError
        If a metric column is missing (listing the available ones) or has no
        numeric value.
    """
    out = {}
    for metric in metrics:
        _require(df, metric, "metric")
        value = pd.to_numeric(df[metric], errors="coerce").mean()
        if not np.isfinite(value):
            raise InputError(
                "baseline metric has no numeric value", path=df.attrs.get("source"), key=metric
            )
        out[metric] = float(value)
    return out


# --------------------------------------------------------------------------- outputs


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _cell(value: Any) -> str:
    return format_value(value).replace("|", r"\|")


def _check_summary(summary: pd.DataFrame, param: str, hue: str | None) -> None:
    needed = [param, *([hue] if hue else []), *_SUMMARY_STATS]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise InputError(
            f"summary lacks columns {missing}; build it with summarise()", key=missing[0]
        )


def markdown_table(
    summary: pd.DataFrame,
    metric: str,
    param: str,
    hue: str | None = None,
    baselines: Mapping[str, float] | None = None,
) -> str:
    """The markdown text written by :func:`write_markdown`.

    Examples
    --------
    >>> s = pd.DataFrame({"model": ["a"], "n": [2], "mean": [0.5], "std": [0.1],
    ...                   "min": [0.4], "max": [0.6]})
    >>> print(markdown_table(s, "test/mae", "model", baselines={"baseline/mae": 0.9}))
    ## test/mae vs model
    <BLANKLINE>
    | model | test/mae (mean ± std) | n | min | max |
    |---|---:|---:|---:|---:|
    | a | 0.5 ± 0.1 | 2 | 0.4 | 0.6 |
    <BLANKLINE>
    Baselines (mean over the experiments that report them):
    <BLANKLINE>
    - `baseline/mae`: 0.9
    <BLANKLINE>
    """
    _check_summary(summary, param, hue)
    title = f"## {metric} vs {param}" + (f" by {hue}" if hue else "")
    head = [param, *([hue] if hue else []), f"{metric} (mean ± std)", "n", "min", "max"]
    align = ["---"] * (2 if hue else 1) + ["---:"] * 4
    lines = [title, "", "| " + " | ".join(map(_cell, head)) + " |", "|" + "|".join(align) + "|"]
    for rec in summary.to_dict("records"):
        mean_std = _fmt(rec["mean"]) + ("" if rec["n"] < 2 else f" ± {_fmt(rec['std'])}")
        cells = [_cell(rec[param]), *([_cell(rec[hue])] if hue else [])]
        cells += [mean_std, str(int(rec["n"])), _fmt(rec["min"]), _fmt(rec["max"])]
        lines.append("| " + " | ".join(cells) + " |")
    if baselines:
        lines += ["", "Baselines (mean over the experiments that report them):", ""]
        lines += [f"- `{name}`: {_fmt(value)}" for name, value in baselines.items()]
    return "\n".join(lines) + "\n"


def write_markdown(
    summary: pd.DataFrame,
    path: str | Path,
    metric: str,
    param: str,
    hue: str | None = None,
    baselines: Mapping[str, float] | None = None,
) -> str:
    """Write the summary as a GitHub-flavoured markdown table, atomically.

    Parameters
    ----------
    summary : pandas.DataFrame
        Output of :func:`summarise` for the same ``metric``, ``param`` and ``hue``.
    path : str or pathlib.Path
        Markdown file to write (parent folders are created).
    metric, param : str
        Names used in the title and the header.
    hue : str, optional
        Second grouping column of ``summary``.
    baselines : mapping of str to float, optional
        Baseline metric name to value (see :func:`baseline_values`), listed
        below the table.

    Returns
    -------
    str
        The markdown text: a ``##`` title, one table row per group with
        ``mean ± std`` (4 significant digits; std omitted when n = 1), n, min
        and max, then the baselines.

    Raises
    ------
    InputError
        If ``summary`` lacks a needed column.
    """
    text = markdown_table(summary, metric, param, hue, baselines)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


#: Statistic names in metric keys -> words.
_STATS = {"mae": "MAE", "mdae": "MdAE (1.4826 x median |error|)", "rmse": "RMSE",
          "median_ae": "median |error|", "p90_ae": "90th percentile |error|", "bias": "bias",
          "scatter": "scatter", "r2": "R^2", "spearman": "Spearman rank correlation",
          "pearson": "Pearson correlation", "coverage_68": "coverage of [q16, q84]",
          "loss": "loss"}  # fmt: skip
#: Quantities in metric keys -> (words, unit of an error of it).
_QUANTITIES = {"log_mass": ("log10 mass", "dex"), "mass": ("mass", "Msun"),
               "log_age": ("log age", "dex"), "teff": ("Teff", "K"), "logg": ("log g", "dex"),
               "fe_h": ("[Fe/H]", "dex"), "alpha": ("[alpha/Fe]", "dex"),
               "age": ("age", "Gyr"), "parallax": ("parallax", "mas")}  # fmt: skip
#: Param names (last component) -> unit.
_PARAM_UNITS = {"radius": "px", "crop_size": "px", "max_time_myr": "Myr", "lr": "",
                "weight_decay": ""}  # fmt: skip
_DIMENSIONLESS = ("r2", "spearman", "pearson", "coverage_68")


def metric_label(metric: str) -> str:
    """An axis label for a metric key: split, statistic, quantity and unit.

    Examples
    --------
    >>> metric_label("test/mae_log_mass")
    'test MAE of log10 mass [dex]'
    >>> metric_label("baseline/median/test/mae_log_mass")
    'test median baseline MAE of log10 mass [dex]'
    >>> metric_label("study:test/teff/rmse")
    'test RMSE of Teff [K]'
    >>> metric_label("test/mdae_log_age_over_mean_baseline")
    'test MdAE (1.4826 x median |error|) of log age / mean baseline (ratio)'
    """
    name = metric.rsplit(":", 1)[-1]
    parts = name.split("/")
    split, rest = parts[0], parts[1:]
    if split == "baseline" and len(parts) >= 4:  # baseline/<name>/<split>/...
        split, rest = f"{parts[2]} {parts[1]} baseline", parts[3:]
    ratio = None
    if rest and "_over_" in rest[-1]:
        rest[-1], ratio = rest[-1].split("_over_", 1)
    stat = qty = None
    if len(rest) == 2 and rest[0] in _QUANTITIES:  # test/<label>/<stat>
        qty, stat = rest
    elif rest:
        last = rest[-1]
        for s in sorted(_STATS, key=len, reverse=True):
            if last == s or last.startswith(s + "_"):
                stat, qty = s, last[len(s) + 1 :] or None
                break
    if stat is None:
        return metric
    words, unit = _QUANTITIES.get(qty, (qty, "")) if qty else (None, "")
    text = f"{split} {_STATS[stat]}" + (f" of {words}" if words else "")
    if ratio:
        return f"{text} / {ratio.replace('_', ' ')} (ratio)"
    if unit and stat not in _DIMENSIONLESS:
        text += f" [{unit}]"
    return text


def param_label(param: str) -> str:
    """An axis label for a param: its dotted name, with a unit where one is known.

    Examples
    --------
    >>> param_label("cluster_age.mask.radius")
    'cluster_age.mask.radius [px]'
    """
    unit = _PARAM_UNITS.get(param.rsplit(".", 1)[-1].rsplit("+", 1)[-1])
    return f"{param} [{unit}]" if unit else param


def plot_comparison(
    summary: pd.DataFrame,
    path: str | Path,
    metric: str,
    param: str,
    hue: str | None = None,
    baselines: Mapping[str, float] | None = None,
    x_label: str | None = None,
    y_label: str | None = None,
) -> None:
    """Plot the summary as a PNG figure, atomically.

    A numeric ``param`` gives the metric mean against the parameter with
    standard-deviation error bars, one line per ``hue`` value; a categorical
    one gives bars with error bars, grouped by ``hue``. Baselines are dashed
    horizontal lines named in the legend. Drawn on a Matplotlib Agg canvas
    (no display and no global pyplot state).

    Parameters
    ----------
    summary : pandas.DataFrame
        Output of :func:`summarise` for the same ``metric``, ``param`` and ``hue``.
    path : str or pathlib.Path
        PNG file to write (parent folders are created).
    metric, param : str
        The metric and param columns.
    hue : str, optional
        Second grouping column of ``summary``.
    baselines : mapping of str to float, optional
        Baseline metric name to value (see :func:`baseline_values`).
    x_label, y_label : str, optional
        Axis labels; by default :func:`param_label` and :func:`metric_label` (quantity and
        unit read from the names).

    Raises
    ------
    InputError
        If ``summary`` lacks a needed column or is empty.
    """
    _check_summary(summary, param, hue)
    if summary.empty:
        raise InputError("nothing to plot: the summary is empty", key=metric)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    groups = [(None, summary)] if hue is None else list(_hue_groups(summary, hue))
    numeric = _is_numeric(summary[param])
    if numeric:
        for value, sub in groups:
            ax.errorbar(
                sub[param].astype(float),
                sub["mean"],
                yerr=sub["std"].astype(float),  # NaN (n = 1): no error bar
                marker="o",
                capsize=3,
                label=None if value is None else f"{hue} = {format_value(value)}",
            )
    else:
        categories = list(dict.fromkeys(summary[param]))
        x = np.arange(len(categories))
        width = 0.8 / len(groups)
        for i, (value, sub) in enumerate(groups):
            by_cat = sub.set_index(param)
            means = [by_cat["mean"].get(c, np.nan) for c in categories]
            stds = [by_cat["std"].get(c, np.nan) for c in categories]
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                means,
                width,
                yerr=np.asarray(stds, dtype=float),  # NaN (n = 1): no error bar
                capsize=3,
                label=None if value is None else f"{hue} = {format_value(value)}",
            )
        labels = [format_value(c) for c in categories]
        long = sum(len(s) for s in labels) > 40
        ax.set_xticks(x, labels, rotation=25 if long else 0, ha="right" if long else "center")
    for k, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(
            value,
            linestyle="--",
            linewidth=1.2,
            color=f"C{(len(groups) + k) % 10}",
            label=f"{metric_label(name)} = {_fmt(value)}",
        )
    import textwrap

    ax.set_xlabel(x_label or param_label(param))
    ax.set_ylabel("\n".join(textwrap.wrap(f"{y_label or metric_label(metric)}, mean ± std", 45)))
    title = f"{metric} vs {param}" + (f" by {hue}" if hue else "")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    if hue is not None or baselines:
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _hue_groups(summary: pd.DataFrame, hue: str) -> Iterator[tuple[Any, pd.DataFrame]]:
    order = summary[hue].drop_duplicates()
    order = order.sort_values(key=_sort_key, kind="stable")
    for value in order:
        yield value, summary[summary[hue] == value]
