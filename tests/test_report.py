"""The results report (astrobatch.report, `astrobatch report`): numbers from the metrics files,
baselines and ratios, studies not run, figures embedded, the markdown twin, headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from astrobatch import report as rp

ROOT = Path(__file__).resolve().parents[1]


class _Numbers(HTMLParser):
    """Collect ``data-metric`` / ``data-ratio`` elements (attribute, text) and image sources."""

    def __init__(self):
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []  # (kind, reference, text)
        self.images: list[str] = []
        self._open: list[tuple[str, str] | None] = []
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
            return
        ref = ("metric", a["data-metric"]) if "data-metric" in a else (
            ("ratio", a["data-ratio"]) if "data-ratio" in a else None)  # fmt: skip
        self._open.append(ref)
        if ref:
            self._text = []

    def handle_endtag(self, tag):
        if tag == "img" or not self._open:
            return
        ref = self._open.pop()
        if ref:
            self.cells.append((*ref, "".join(self._text).strip()))

    def handle_data(self, data):
        self._text.append(data)


def check_report_numbers(html: str, root: Path) -> int:
    """Assert every number of the report equals its source in root's metrics files (the
    headline file, else the full one) and every ratio the quotient of its two sources;
    returns how many were checked."""
    sources = {}
    for mfile in (root / "metrics").glob("*.json"):
        study = mfile.stem
        full = root / "reports" / study / "metrics_full.json"
        sources[study] = {**(json.loads(full.read_text()) if full.is_file() else {}),
                          **json.loads(mfile.read_text())}  # fmt: skip
    p = _Numbers()
    p.feed(html)
    assert p.cells, "no numbers tagged in the report"
    for kind, ref, text in p.cells:
        study, key, *base = ref.split("|")
        value = sources[study][key]
        if kind == "ratio":
            value = value / sources[study][base[0]]
        assert text == rp.fmt(value), (ref, text, value)
    # every headline metric of every study that ran is in the report
    shown = {(r.split("|")[0], r.split("|")[1]) for k, r, _ in p.cells if k == "metric"}
    for mfile in (root / "metrics").glob("*.json"):
        for key in json.loads(mfile.read_text()):
            assert (mfile.stem, key) in shown, f"{mfile.stem}: {key} not in the report"
    return len(p.cells)


def _png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot(np.random.default_rng(seed).normal(size=10))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture
def project(tmp_path):
    """Two studies that ran (metrics, full metrics, a figure, a real table), one that did not."""
    from astropy.table import Table

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "alpha.json").write_text(json.dumps({
        "test/mae": 0.0763765, "baseline/median/test/mae": 0.2394, "test/coverage_68": 0.66,
        "real/mae": 0.1424, "test/bias": -0.0075, "n_test": 412.0,
    }))  # fmt: skip
    (tmp_path / "reports" / "alpha").mkdir(parents=True)
    (tmp_path / "reports" / "alpha" / "metrics_full.json").write_text(json.dumps({
        "baseline/mean/test/mae": 0.3, "baseline/mean/real/mae": 0.5, "val/mae": 0.07,
    }))  # fmt: skip
    (tmp_path / "metrics" / "beta.json").write_text(json.dumps({"test/r": 0.83}))
    for study, n in (("alpha", 2), ("beta", 1)):
        for i in range(n):
            _png(tmp_path / "plots" / study / f"fig_{i}.png", i)
    (tmp_path / "reports" / "real").mkdir()
    t = Table({"id": ["a", "b"], "mass": [1.0, 2.0]})
    t["mass"].unit = "solMass"
    t.meta["inputs"] = ["data/external/alpha"]
    t.write(tmp_path / "reports" / "real" / "alpha.ecsv")
    (tmp_path / "params.yaml").write_text("alpha:\n  simulate: {n_runs: 48, seed: 1}\n")
    return tmp_path


STUDIES = {n: {"question": f"{n}?", "help": f"{n} study.", "cli_name": n}
           for n in ("alpha", "beta", "gamma")}  # fmt: skip


def test_report_numbers_baselines_and_studies_not_run(project):
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    ctx = rp.build_context(project, STUDIES, params, project / "params.yaml",
                           report_dir=Path("reports"), experiments=False)  # fmt: skip
    html_path, md_path = rp.write_report(ctx, project / "reports")
    html, md = html_path.read_text(), md_path.read_text()
    assert check_report_numbers(html, project) >= 10
    alpha = ctx["studies"][0]["sections"]
    # the headline metric with both baselines, the second one from the full file
    (head,) = alpha["headline"]
    assert head["key"] == "test/mae"
    assert {b["name"]: b["ratio"] for b in head["baselines"]} == pytest.approx(
        {"median": 0.0763765 / 0.2394, "mean": 0.0763765 / 0.3}
    )
    assert [r["key"] for r in alpha["real"]] == ["real/mae"]
    assert alpha["real"][0]["baselines"][0]["ratio"] == pytest.approx(0.1424 / 0.5)
    assert [r["key"] for r in alpha["calibration"]] == ["test/coverage_68"]
    # the study with no metrics file is shown as not run, not as an error
    assert [s["status"] for s in ctx["studies"]] == ["run", "run", "not run"]
    assert "not run (no <code>metrics/gamma.json</code>)" in html
    assert "| [gamma](#gamma) | not run" in md
    # figures: embedded in the HTML (data URIs that decode to the PNG files), linked in the md
    p = _Numbers()
    p.feed(html)
    assert len(p.images) == 3 and all(s.startswith("data:image/png;base64,") for s in p.images)
    import base64

    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in p.images}
    assert embedded == {f.read_bytes() for f in (project / "plots").rglob("*.png")}
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(links) == 3 and all((project / "reports" / link).is_file() for link in links)
    # self-contained: no resource from anywhere else
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    # data and provenance
    assert "<code>n_runs</code> = 48" in html and "seed" not in ctx["studies"][0]["simulated"]
    assert "2 rows in <code>reports/real/alpha.ecsv</code>" in html and "mass [solMass]" in html
    digest = __import__("hashlib").sha256((project / "params.yaml").read_bytes()).hexdigest()
    assert ctx["meta"]["params_digest"] == digest[:16] and digest[:16] in html


def test_a_changed_metric_changes_the_report(project):
    """The numbers are read, not typed: change the file, the report follows."""
    args = (project, STUDIES, {}, project / "params.yaml")
    before = rp.render(rp.build_context(*args, experiments=False))[0]
    m = json.loads((project / "metrics" / "beta.json").read_text())
    m["test/r"] = 0.5
    (project / "metrics" / "beta.json").write_text(json.dumps(m))
    after = rp.render(rp.build_context(*args, experiments=False))[0]
    assert 'data-metric="beta|test/r">0.83<' in before and 'data-metric="beta|test/r">0.5<' in after


def test_experiment_tables_summarise_the_sweeps():
    import pandas as pd

    from astrobatch.sweeps import Sweep

    sweep = Sweep.model_validate({
        "study": "alpha", "grids": [{"alpha.model": ["a", "b"], "alpha.seed": [1, 2]}],
        "compare": [{"metric": "test/mae", "param": "alpha.model",
                     "baselines": ["baseline/median/test/mae"]},
                    {"metric": "test/absent", "param": "alpha.model"}],
    })  # fmt: skip
    df = pd.DataFrame({
        "kind": ["experiment"] * 4 + ["workspace"],
        "alpha.model": ["a", "a", "b", "b", "a"], "alpha.seed": [1, 2, 1, 2, 0],
        "test/mae": [0.1, 0.3, 0.5, 0.7, 9.0], "baseline/median/test/mae": [1.0] * 5,
    })  # fmt: skip
    (table,) = rp.experiment_tables("alpha", {"s": sweep, "other": sweep.model_copy(
        update={"study": "beta"})}, df)  # fmt: skip
    assert [(r["param"], r["n"]) for r in table["rows"]] == [("a", 2), ("b", 2)]
    assert [r["mean"] for r in table["rows"]] == pytest.approx([0.2, 0.6])  # workspace left out
    assert table["baselines"] == {"baseline/median/test/mae": 1.0}


def test_report_cli_bad_params_file_exits_2(tmp_path, monkeypatch):
    from astrobatch.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["report", "--params", "missing.yaml"])
    assert r.exit_code == 2 and "missing.yaml" in r.output
    assert not (tmp_path / "reports").exists()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip


def render_in_chromium(html: Path, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``html`` after headless Chromium loaded it offline (a screenshot too)."""
    exe = chromium()
    if exe is None:
        pytest.skip("CHROMIUM NOT INSTALLED (Debian package chromium; .ci/run installs it)")
    profile = ["--user-data-dir=" + str(tmp_path / "chromium-profile")]
    if screenshot is not None:
        subprocess.run([exe, *CHROMIUM_FLAGS, *profile, "--window-size=1280,2000",
                        f"--screenshot={screenshot}", html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)  # fmt: skip
    r = subprocess.run([exe, *CHROMIUM_FLAGS, *profile, "--virtual-time-budget=10000",
                        "--dump-dom", html.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.slow
def test_report_renders_offline_in_chromium_with_every_image(project, tmp_path):
    ctx = rp.build_context(project, STUDIES, {}, project / "params.yaml", experiments=False)
    html, _ = rp.write_report(ctx, project / "reports")
    dom = render_in_chromium(html, tmp_path, screenshot=tmp_path / "shot.png")
    m = re.search(r'data-images="(\d+)" data-images-loaded="(\d+)"', dom)
    assert m, "the page's load script did not run"
    assert int(m.group(1)) == int(m.group(2)) == 3
    assert (tmp_path / "shot.png").stat().st_size > 1000
