"""Per-study experiment tables (astrobatch.evaluate.experiments) on dvc.api.exp_show rows."""

from __future__ import annotations

import json

import pytest

from astrobatch.errors import InputError
from astrobatch.evaluate.experiments import (
    headline_keys,
    render_markdown,
    render_rich,
    study_table,
    wrap_header,
)
from astrobatch.studies.cluster_age.evaluate import HEADLINE as CA_HEADLINE
from astrobatch.studies.star_sets.evaluate import headline_keys as ss_headline
from astrobatch.studies.stellar_xp.evaluate import headline_keys as xp_headline
from astrobatch.study import MAX_HEADLINE


def _row(name, rev, state=None, **values):
    return {"Experiment": name, "rev": rev, "typ": "x", "Created": None, "parent": None,
            "State": state, "Executor": None, **values}  # fmt: skip


ROWS = [
    _row(None, "workspace", **{"a.lr": 0.1, "a.seed": 1, "a.w": [1, 2], "b.lr": 9,
                               "test/mae": 0.5, "metrics/a.json:n": 3, "metrics/b.json:n": 7}),
    _row(None, "main", **{"a.lr": 0.1, "a.seed": 1, "a.w": [1, 2], "b.lr": 9,
                          "test/mae": 0.5, "metrics/a.json:n": 3, "metrics/b.json:n": 7}),
    _row("exp-one", "abc", "Success", **{"a.lr": 0.2, "a.seed": 1, "a.w": [1, 2], "b.lr": 9,
                                         "test/mae": 0.4, "metrics/a.json:n": 3}),
    _row("queued", "def", "Queued", **{"a.lr": 0.3, "a.seed": 1, "test/mae": 0.1}),
    _row("failed", "ghi", "Failed", **{"a.lr": 0.4, "a.seed": 1, "test/mae": 0.1}),
    _row("other-study", "jkl", "Success", **{"a.lr": 0.1, "b.lr": 1, "val/x": 1.0}),
]  # fmt: skip


def test_study_table_rows_params_and_metrics():
    df = study_table(ROWS, "a", ["test/mae", "n"])
    # workspace = main (dropped), unfinished and metric-less rows dropped
    assert df["Experiment"].tolist() == ["main", "exp-one"]
    assert df.attrs["params"] == ["lr"]  # only the changed param of study a; b's never
    assert df["lr"].tolist() == [0.1, 0.2]
    assert df["test/mae"].tolist() == [0.5, 0.4]
    assert df["n"].tolist() == [3, 3]  # the file-prefixed key of a collision
    full = study_table(ROWS, "a", ["test/mae"], all_params=True)
    assert full.attrs["params"] == ["lr", "seed", "w"]


def test_workspace_kept_when_it_differs():
    rows = [dict(ROWS[0], **{"test/mae": 0.9}), ROWS[1]]
    assert study_table(rows, "a", ["test/mae"])["Experiment"].tolist() == ["workspace", "main"]


@pytest.mark.parametrize(
    "keys",
    [ss_headline("mass"), list(CA_HEADLINE),
     xp_headline(["teff", "logg", "fe_h", "alpha", "age", "parallax"])],
    ids=["star_sets", "cluster_age", "stellar_xp"],
)  # fmt: skip
def test_every_study_table_fits_160_columns(keys):
    assert len(keys) <= MAX_HEADLINE
    rows = [
        _row(f"exp-{i:02d}-long-name", f"r{i}", "Success",
             **{"s.training.lr": 10.0 ** -i, "s.model.hidden_dim": 16 * i},
             **{k: 1234.5678 / (i + 1) for k in keys})
        for i in range(4)
    ]  # fmt: skip
    df = study_table(rows, "s", keys)
    text = render_rich(df, title="s experiments")
    lines = text.splitlines()
    assert max(map(len, lines)) <= 160
    for i in range(4):  # names are never cut
        assert any(line.strip().startswith(f"exp-{i:02d}-long-name") for line in lines)
    assert "1235" in text  # 4 significant digits
    md = render_markdown(df)
    assert md.splitlines()[0].startswith("| Experiment | training.lr | model.hidden_dim |")


def test_metrics_equal_in_every_row_move_under_the_table():
    """A baseline on the same test set is the same for every experiment: it goes to one line
    under the table, the differing metric stays a column, and every param name stays whole."""
    rows = [
        _row(f"exp-{i}", f"r{i}", "Success", **{"s.model.hidden_dim": 16 * (i + 1),
             "test/mae": 0.1 * (i + 1), "baseline/median/test/mae": 0.9})
        for i in range(3)
    ]  # fmt: skip
    df = study_table(rows, "s", ["test/mae", "baseline/median/test/mae"])
    text = render_rich(df, title="s experiments")
    header = "\n".join(text.splitlines()[:6])
    assert "baseline/" not in header and "hidden_dim" in header
    assert text.rstrip().splitlines()[-1].strip() == (
        "the same in every row: baseline/median/test/mae = 0.9"
    )
    one = render_rich(study_table(rows[:1], "s", ["test/mae", "baseline/median/test/mae"]))
    assert "the same in every row" not in one and "baseline/" in one  # one row: all columns


def test_wrap_header_keeps_every_character():
    for name in ("baseline/photometric/test/mdae_log_age", "test/mae_log_mass_over_baseline"):
        wrapped = wrap_header(name)
        assert wrapped.replace("\n", "") == name
        assert all(len(part) <= 12 for part in wrapped.splitlines())


def test_headline_keys_errors(tmp_path):
    with pytest.raises(InputError, match="run the study first"):
        headline_keys(tmp_path / "metrics/x.json")
    (tmp_path / "m.json").write_text("[1]")
    with pytest.raises(InputError, match="JSON object"):
        headline_keys(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"b": 1, "a": 2}))
    assert headline_keys(tmp_path / "m.json") == ["b", "a"]  # the file's order
