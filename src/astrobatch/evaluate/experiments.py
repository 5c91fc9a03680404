"""Per-study experiment tables: ``astrobatch exp show <study>``.

``dvc exp show`` tabulates every param and metric of every study (hundreds of columns).
This module reads the same experiments through :func:`dvc.api.exp_show` (never by parsing
the CLI's output) and keeps, for one study: the experiment's name, the study's params
that differ between the rows shown, and the study's headline metrics (the keys of its
``metrics/<study>.json``, at most :data:`astrobatch.study.MAX_HEADLINE`), one row per
experiment, as a Rich table, markdown or CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from astrobatch.errors import InputError

#: Keys of a :func:`dvc.api.exp_show` row that are not params or metrics.
META_KEYS = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")
#: Executor states whose metrics are not the experiment's own.
UNFINISHED = ("Queued", "Running", "Failed")
PARAMS_FILE = "params.yaml"


def _lookup(row: Mapping[str, Any], file: str, key: str) -> Any:
    """A value of ``row`` by key: DVC prefixes ``<file>:`` only when names collide."""
    return row.get(f"{file}:{key}", row.get(key))


def _name(row: Mapping[str, Any]) -> str:
    return str(row.get("Experiment") or row.get("rev") or "?")


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else str(value)


def study_table(
    rows: Sequence[Mapping[str, Any]],
    study: str,
    metric_keys: Iterable[str],
    *,
    metrics_file: str | None = None,
    all_params: bool = False,
) -> pd.DataFrame:
    """One row per experiment of ``study``: name, its differing params, headline metrics.

    Parameters
    ----------
    rows : sequence of mapping
        The output of :func:`dvc.api.exp_show` (``Experiment``, ``rev``, ``typ``, ...
        then flat param and metric keys).
    study : str
        Study name (``star_sets``); its params are the keys under ``<study>.``.
    metric_keys : iterable of str
        The study's headline metric names (columns, in this order).
    metrics_file : str, optional
        The study's metrics file, ``metrics/<study>.json`` by default (DVC prefixes it to
        a key that another file has too).
    all_params : bool
        Keep every param of the study, not only those that differ between the rows.

    Returns
    -------
    pandas.DataFrame
        Columns ``Experiment``, ``rev``, the params (without the ``<study>.`` prefix) and
        the metrics. Rows without any of the study's metrics, and queued, running or failed
        experiments, are left out; so is the workspace row when a commit or experiment
        has the same params and metrics (it is that result, checked out).

    Examples
    --------
    >>> rows = [{"Experiment": None, "rev": "workspace", "State": None, "s.lr": 0.1,
    ...          "s.seed": 1, "test/mae": 0.5},
    ...         {"Experiment": "exp-a", "rev": "abc", "State": "Success", "s.lr": 0.2,
    ...          "s.seed": 1, "test/mae": 0.4}]
    >>> study_table(rows, "s", ["test/mae"]).to_dict("records")
    [{'Experiment': 'workspace', 'rev': 'workspace', 'lr': 0.1, 'test/mae': 0.5}, \
{'Experiment': 'exp-a', 'rev': 'abc', 'lr': 0.2, 'test/mae': 0.4}]
    """
    metrics_file = metrics_file or f"metrics/{study}.json"
    metric_keys = list(dict.fromkeys(metric_keys))
    prefix = f"{study}."
    records = []
    for row in rows:
        if row.get("State") in UNFINISHED:
            continue
        metrics = {k: _lookup(row, metrics_file, k) for k in metric_keys}
        if all(v is None for v in metrics.values()):
            continue
        params = {}
        for key, value in row.items():
            bare = key.split(":", 1)[1] if key.startswith(f"{PARAMS_FILE}:") else key
            if key not in META_KEYS and bare.startswith(prefix):
                params[bare[len(prefix) :]] = value
        records.append({"name": _name(row), "rev": str(row.get("rev")), "params": params,
                        "metrics": metrics})  # fmt: skip
    others = [r for r in records if r["rev"] != "workspace"]
    records = [
        r
        for r in records
        if r["rev"] != "workspace"
        or not any(r["params"] == o["params"] and r["metrics"] == o["metrics"] for o in others)
    ]
    keys = list(dict.fromkeys(k for r in records for k in r["params"]))
    if not all_params:
        keys = [k for k in keys if len({_text(r["params"].get(k)) for r in records}) > 1]
    out = [
        {"Experiment": r["name"], "rev": r["rev"], **{k: r["params"].get(k) for k in keys},
         **r["metrics"]}
        for r in records
    ]  # fmt: skip
    df = pd.DataFrame.from_records(out, columns=["Experiment", "rev", *keys, *metric_keys])
    df.attrs.update(params=keys, metrics=metric_keys)
    return df


def headline_keys(metrics_path: str | Path) -> list[str]:
    """The headline metric names of a study: the keys of its ``metrics/<study>.json``.

    Raises
    ------
    InputError
        The file is missing (the study has not been evaluated) or is not a JSON object.
    """
    path = Path(metrics_path)
    if not path.is_file():
        raise InputError("no metrics yet: run the study first (`dvc repro`)", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON ({err})", path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object of metrics", path)
    return list(data)


def format_cell(value: Any) -> str:
    """A table cell: 4 significant digits for floats, ``-`` for missing values.

    Examples
    --------
    >>> [format_cell(v) for v in (0.123456, 12345.6, None, float("nan"), "a", [1, 2])]
    ['0.1235', '1.235e+04', '-', '-', 'a', '[1, 2]']
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)


def wrap_header(name: str, width: int = 10) -> str:
    """Break a metric or param name into lines of at most ``width`` characters at its
    ``/``, ``.`` and ``_`` separators (kept at line ends), so that a table of a dozen
    metrics fits 160 columns without cutting names.

    Examples
    --------
    >>> print(wrap_header("baseline/median/test/mae_log_mass"))
    baseline/
    median/
    test/mae_
    log_mass
    """
    parts, token = [], ""
    for ch in name:
        token += ch
        if ch in "/._":
            parts.append(token)
            token = ""
    if token:
        parts.append(token)
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(lines)


def render_rich(df: pd.DataFrame, title: str | None = None, width: int = 160) -> str:
    """The table as Rich text (simple rules, wrapped headers), at most ``width`` wide.

    A metric with the same value in every row (of two or more; a baseline on the same test
    set, say) leaves the table for a caption line under it, so that the columns that tell
    the experiments apart keep their full names.
    """
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    metrics = df.attrs.get("metrics", ())
    same = [
        c for c in df.columns
        if c in metrics and len(df) > 1 and df[c].map(format_cell).nunique() == 1
        and format_cell(df[c].iloc[0]) != "-"
    ]  # fmt: skip
    caption = None
    if same:
        caption = "the same in every row: " + ", ".join(
            f"{c} = {format_cell(df[c].iloc[0])}" for c in same
        )
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("Experiment", no_wrap=True)
    cols = [c for c in df.columns if c not in ("Experiment", "rev", *same)]
    for c in cols:
        table.add_column(
            wrap_header(c), justify="right" if c in df.attrs.get("metrics", ()) else "left"
        )
    for rec in df.to_dict("records"):
        table.add_row(rec["Experiment"], *(format_cell(rec[c]) for c in cols))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, legacy_windows=False).print(table)
    text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
    if caption:
        import textwrap

        text += textwrap.fill(caption, width, initial_indent=" ", subsequent_indent="   ") + "\n"
    return text


def render_transposed(df: pd.DataFrame, title: str | None = None, width: int = 160) -> str:
    """The table turned: one row per param and metric, one column per experiment."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("", no_wrap=True)
    for name in df["Experiment"]:
        table.add_column(str(name), justify="right")
    for c in [c for c in df.columns if c not in ("Experiment", "rev")]:
        table.add_row(c, *(format_cell(v) for v in df[c]))
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def render_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown (full names; metrics right-aligned).

    Examples
    --------
    >>> df = pd.DataFrame({"Experiment": ["a"], "rev": ["x"], "test/mae": [0.5]})
    >>> df.attrs["metrics"] = ["test/mae"]
    >>> print(render_markdown(df), end="")
    | Experiment | test/mae |
    |---|---:|
    | a | 0.5 |
    """
    cols = [c for c in df.columns if c != "rev"]
    metrics = set(df.attrs.get("metrics", ()))
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in metrics else "---" for c in cols) + "|"]  # fmt: skip
    for rec in df.to_dict("records"):
        lines.append(
            "| " + " | ".join(format_cell(rec[c]).replace("|", r"\|") for c in cols) + " |"
        )
    return "\n".join(lines) + "\n"
