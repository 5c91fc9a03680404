"""One results report across the studies: ``reports/index.html`` and ``reports/README.md``.

``astrobatch report`` (the last DVC stage, ``report``) reads what the studies' stages left:

- ``metrics/<study>.json``: the headline metrics. A metric ``X`` with baselines
  ``baseline/<name>/X`` is a *headline row*, shown with every baseline and the ratio
  ``X / baseline``; ``real/...``, ``cross_galaxy/...`` and ``.../real/...`` keys are the
  real-data results; keys with ``coverage`` are the calibration; the rest are listed as they are.
- ``reports/real/<study>.ecsv``: the ``predict`` table of the study's real sample (its rows
  and inputs).
- ``plots/<study>/*.png``: the key figures, embedded in the HTML page (data URIs, so the page
  is one self-contained file that works offline and from a cluster file system) and linked
  relative to ``reports/README.md``.
- ``params.yaml``: the simulated data sizes (``<study>.simulate``) and the params digest.
- The experiments recorded in the repository (``dvc exp show --json``), summarised per sweep of
  ``sweeps.yaml`` as ``astrobatch compare`` does, when there are any.

Every number comes from those files, never typed in: numbers in the HTML carry
``data-metric="<study>|<key>"`` (or ``data-ratio="<study>|<key>|<baseline key>"``) so a test can
check each against its source. A study whose metrics file is missing is shown as not run.
Rendered with Jinja2 (``astrobatch/templates/report.html.j2`` and ``report.md.j2``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astrobatch.evaluate.experiments import format_cell
from astrobatch.io.atomic import atomic_path

log = logging.getLogger("astrobatch.report")

#: ``simulate`` params named like sizes that are not data sizes.
NOT_SIZES = {"n_workers", "n_jobs", "n_threads"}

#: Key prefixes / parts that mark real-data results.
REAL_MARKERS = ("real/", "cross_galaxy/")


def fmt(value: Any) -> str:
    """A metric as the report prints it: integers whole, floats to 4 significant digits.

    Examples
    --------
    >>> fmt(19.0), fmt(0.0763765), fmt(138.597), fmt(None), fmt(float("nan"))
    ('19', '0.07638', '138.6', '-', 'nan')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if v.is_integer() and abs(v) < 1e6:  # counts whole, not 1.234e+04
            return str(int(v))
        return format_cell(v)  # the experiment tables' 4 significant digits
    return str(value)


def is_real(key: str) -> bool:
    """Whether metric ``key`` is a real-data result (``real/...``, ``cross_galaxy/...``)."""
    return key.startswith(REAL_MARKERS) or "/real/" in key


Sections = dict[str, list[dict[str, Any]]]


def classify_metrics(metrics: Mapping[str, Any], full: Mapping[str, Any] | None = None) -> Sections:
    """Sort a study's headline metrics into the report's sections, each with its baselines.

    Parameters
    ----------
    metrics : mapping of str to number
        The headline metrics (``metrics/<study>.json``).
    full : mapping of str to number, optional
        The study's full metrics (``reports/<study>/metrics_full.json``), where the baselines
        of a headline metric are looked up too.

    Returns
    -------
    dict
        ``headline`` (metrics that have at least one baseline), ``real``, ``calibration`` and
        ``other``: rows ``{key, value, baselines: [{name, key, value, ratio}]}``, where a
        baseline of ``X`` is any ``baseline/<name>/X`` and ``ratio`` is ``X / baseline``
        (None for a zero or non-numeric baseline). Baseline keys appear only inside the row
        of their metric (or under ``other`` when that metric is not a headline one).
        Order: that of the headline file.

    Examples
    --------
    >>> m = {"test/mae": 0.1, "baseline/median/test/mae": 0.4, "real/mae": 0.2, "n": 3}
    >>> s = classify_metrics(m, {"baseline/mean/real/mae": 0.5})
    >>> [(b["name"], b["ratio"]) for b in s["headline"][0]["baselines"]]
    [('median', 0.25)]
    >>> [(r["key"], r["baselines"][0]["ratio"]) for r in s["real"]]
    [('real/mae', 0.4)]
    """
    pool = {**(full or {}), **metrics}
    baselines: dict[str, list[dict[str, Any]]] = {}
    for key, value in pool.items():
        if not key.startswith("baseline/"):
            continue
        name, _, target = key[len("baseline/") :].partition("/")
        if target in metrics and not target.startswith("baseline/"):
            x = metrics[target]
            ok = isinstance(value, int | float) and isinstance(x, int | float) and value != 0
            baselines.setdefault(target, []).append(
                {"name": name, "key": key, "value": value,
                 "ratio": float(x) / float(value) if ok else None}
            )  # fmt: skip
    attached = {b["key"] for rows in baselines.values() for b in rows}
    out: dict[str, list[dict[str, Any]]] = {"headline": [], "real": [], "calibration": [],
                                            "other": []}  # fmt: skip
    for key, value in metrics.items():
        if key in attached:
            continue
        row = {"key": key, "value": value, "baselines": baselines.get(key, [])}
        if is_real(key) and not key.startswith("baseline/"):
            out["real"].append(row)
        elif row["baselines"]:
            out["headline"].append(row)
        elif "coverage" in key:
            out["calibration"].append(row)
        else:
            out["other"].append(row)
    return out


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}", v)]
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        out = []
        for i, v in enumerate(value):
            tag = v.get("name", i)
            out += _flatten(f"{prefix}.{tag}", {k: x for k, x in v.items() if k != "name"})
        return out
    return [(prefix.lstrip("."), value)]


def simulated_sizes(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sizes of a study's simulated data: the ``n_*`` and ``*_per_*`` entries of its
    ``simulate`` params (surveys and other lists of named entries flattened by name).

    Examples
    --------
    >>> simulated_sizes({"n_runs": 48, "seed": 1, "surveys": [{"name": "sdss", "n_galaxies": 9}]})
    {'n_runs': 48, 'surveys.sdss.n_galaxies': 9}
    """
    out = {}
    for key, value in _flatten("", section or {}):
        leaf = key.rsplit(".", 1)[-1]
        size = leaf.startswith("n_") or "_per_" in leaf
        if size and leaf not in NOT_SIZES and isinstance(value, int):
            out[key] = value
    return out


def real_sample(root: Path, path: Path) -> dict[str, Any] | None:
    """Rows, columns and inputs of a ``predict`` table (:mod:`astrobatch.io.predictions`).

    Parameters
    ----------
    root : pathlib.Path
        The project folder.
    path : pathlib.Path
        The table (ECSV or FITS), relative to ``root`` (shown so in the report).

    Returns
    -------
    dict or None
        ``{path, rows, columns ("name [unit]"), inputs}``; None when the file is absent.

    Raises
    ------
    OSError, ValueError
        A table astropy cannot read (the ``predict`` stage wrote and checked it).
    """
    if not (root / path).is_file():
        return None
    from astropy.table import Table

    t = Table.read(root / path)
    inputs = t.meta.get("inputs") or t.meta.get("INPUTS") or []
    if isinstance(inputs, str):
        inputs = [s for s in inputs.split(";") if s]
    cols = [f"{c} [{t[c].unit}]" if str(t[c].unit or "") else c for c in t.colnames]
    return {"path": str(path), "rows": len(t), "columns": cols, "inputs": list(inputs)}


def figures(folder: Path, report_dir: Path) -> list[dict[str, str]]:
    """The PNG figures of a study, for both report files.

    Parameters
    ----------
    folder : pathlib.Path
        ``plots/<study>``; absent: no figures.
    report_dir : pathlib.Path
        Where the report is written (the markdown links are relative to it).

    Returns
    -------
    list of dict
        ``{name, uri, rel}`` per PNG, sorted by file name: a caption from the stem, a
        ``data:image/png;base64`` URI (the HTML embeds it, so the page needs no other file)
        and the POSIX path relative to ``report_dir``.
    """
    import os

    out = []
    for p in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        uri = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
        rel = Path(os.path.relpath(p, report_dir)).as_posix()
        out.append({"name": p.stem.replace("_", " "), "uri": uri, "rel": rel})
    return out


def experiment_tables(study: str, sweeps: Mapping[str, Any], df: Any) -> list[dict[str, Any]]:
    """Comparison tables of the recorded experiments, one per ``compare`` of each sweep of
    ``study`` (as ``astrobatch compare`` summarises them); comparisons with no matching
    experiment are left out.

    Parameters
    ----------
    study : str
    sweeps : mapping of str to astrobatch.sweeps.Sweep
        The sweeps of ``sweeps.yaml``.
    df : pandas.DataFrame
        Experiments, from :func:`astrobatch.evaluate.compare.load_experiments`.

    Returns
    -------
    list of dict
        ``{sweep, metric, param, hue, rows: [{param, hue, n, mean, std}], baselines}``.
    """
    from astrobatch.errors import InputError
    from astrobatch.evaluate.compare import baseline_values, filter_rows, summarise

    tables = []
    if "kind" in df.columns:
        df = df[df["kind"] == "experiment"]
    for name, sweep in sweeps.items():
        if sweep.study != study:
            continue
        for c in sweep.compare:
            try:
                rows = filter_rows(df, c.where)
                summary = summarise(rows, c.metric, c.param, c.hue)
                base = baseline_values(rows, c.baselines) if c.baselines else {}
            except (InputError, KeyError, ValueError) as err:
                log.info("report: %s %s vs %s: no table (%s)", name, c.metric, c.param, err)
                continue
            tables.append({
                "sweep": name, "metric": c.metric, "param": c.param, "hue": c.hue,
                "rows": [{"param": r[c.param], "hue": r[c.hue] if c.hue else None,
                          "n": int(r["n"]), "mean": r["mean"], "std": r["std"]}
                         for _, r in summary.iterrows()],
                "baselines": base,
            })  # fmt: skip
    return tables


def load_recorded_experiments(root: Path) -> tuple[Any, str | None]:
    """``(experiments, note)``: the experiments of ``dvc exp show --json`` run in ``root``
    (None and a note when there are none or DVC cannot list them)."""
    from astrobatch.errors import InputError
    from astrobatch.evaluate.compare import load_experiments

    try:
        df = load_experiments(None, repo=root)
    except InputError as err:
        return None, f"experiments not listed: {err}"
    if "kind" not in df.columns or not (df["kind"] == "experiment").any():
        return None, "no experiments recorded in this repository (dvc exp run / astrobatch sweep)"
    return df, None


def git_revision(root: Path) -> str:
    """``git rev-parse --short HEAD`` of ``root`` (``+dirty`` with uncommitted changes to
    tracked files), or ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def build_context(root: Path, studies: Mapping[str, Mapping[str, str]], params: Mapping,
                  params_path: Path, sweeps: Mapping[str, Any] | None = None,
                  report_dir: Path = Path("reports"),
                  experiments: bool = True) -> dict[str, Any]:  # fmt: skip
    """Everything the templates show, read from the project's files.

    Parameters
    ----------
    root : pathlib.Path
        The project folder (metrics/, plots/, reports/ relative to it).
    studies : mapping of str to mapping
        Study name -> ``{"question", "help", "cli_name"}``, in report order.
    params : mapping
        The parsed ``params.yaml``.
    params_path : pathlib.Path
        Its path (the digest is of its bytes).
    sweeps : mapping, optional
        The sweeps of ``sweeps.yaml`` (for the experiment tables).
    report_dir : pathlib.Path
        Where the report goes, relative to ``root`` (figure links are relative to it).
    experiments : bool
        List the recorded experiments (``dvc exp show``).

    Returns
    -------
    dict
        ``meta`` (revision, params digest, date, version) and ``studies`` (one dict each).
    """
    from astrobatch import __version__

    df, exp_note = (None, "experiments not listed (--no-experiments)")
    if experiments:
        df, exp_note = load_recorded_experiments(root)
    out = []
    for name, info in studies.items():
        mpath = root / "metrics" / f"{name}.json"
        study: dict[str, Any] = {"name": name, **info, "metrics_path": f"metrics/{name}.json"}
        section = params.get(name) or {}
        study["simulated"] = simulated_sizes(section.get("simulate"))
        study["real_sample"] = real_sample(root, Path("reports") / "real" / f"{name}.ecsv")
        study["figures"] = figures(root / "plots" / name, root / report_dir)
        fpath = root / "reports" / name / "metrics_full.json"
        if not mpath.is_file():
            study.update(status="not run", sections=None)
        else:
            metrics = json.loads(mpath.read_text())
            full = json.loads(fpath.read_text()) if fpath.is_file() else None
            study.update(status="run", sections=classify_metrics(metrics, full))
        study["experiments"] = experiment_tables(name, sweeps or {}, df) if df is not None else []
        study["experiments_note"] = exp_note if not study["experiments"] else None
        if df is not None and not study["experiments"]:
            study["experiments_note"] = "no experiments of this study's sweeps recorded"
        out.append(study)
    meta = {
        "revision": git_revision(root),
        "params_digest": hashlib.sha256(params_path.read_bytes()).hexdigest()[:16],
        "params_path": str(params_path),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    return {"meta": meta, "studies": out}


def render(context: Mapping[str, Any]) -> tuple[str, str]:
    """``(html, markdown)`` of the report, from the package's Jinja2 templates."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("astrobatch", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt
    return (env.get_template("report.html.j2").render(**context),
            env.get_template("report.md.j2").render(**context))  # fmt: skip


def write_report(context: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Render and write ``out_dir/index.html`` and ``out_dir/README.md`` (each atomically,
    both rendered before either is replaced)."""
    html, md = render(context)
    paths = (out_dir / "index.html", out_dir / "README.md")
    for path, text in zip(paths, (html, md), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
