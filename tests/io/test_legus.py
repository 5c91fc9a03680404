"""Tests of the LEGUS catalogue reader (astrobatch.io.legus)."""

from __future__ import annotations

import numpy as np
import pytest

from astrobatch.errors import InputError
from astrobatch.io.legus import COLUMNS, read_legus_catalogue, select_clusters
from tests.conftest import ROOT

CATALOGUE = ROOT / "data" / "external" / "cluster_age" / "ngc628_Catalog.csv"


def _row(source_id, f275w=22.0, n_filters=5, class_mode=1, age=1e7, mass=1e4, ebv=0.1):
    phot = [f275w, 0.1 if f275w < 60 else f275w, 22.1, 0.05, 22.2, 0.04, 22.3, 0.04, 22.4, 0.04]
    sed = [age, 2 * age, age / 2, mass, 2 * mass, mass / 2, ebv, ebv + 0.1, 0.0]
    rest = [0.1] * 5 + [1.2, 0.8, n_filters, class_mode, float(class_mode)]
    return [source_id, 100.0, 200.0, 24.17, 15.78, *phot, 1.5, *sed, *rest]


def _write(path, rows, leading=True, comments=()):
    header = ",".join(f"Column{i + 1}" for i in range(len(COLUMNS) + int(leading)))
    lines = ["\ufeff" + header]
    for i, r in enumerate(rows):
        cells = ",".join(str(v) for v in r)
        lines.append(("," + cells) if leading else cells)
        if i in comments:
            lines.append("#" + "," * len(COLUMNS))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_parse_names_sentinels_comments_and_pointings(tmp_path):
    rows = [
        _row(1),
        _row(2, f275w=99.999),  # not detected
        _row(3, f275w=66.666, n_filters=4, class_mode=2),  # not in the field
        _row(4, n_filters=0, class_mode=0, age=0, mass=0, ebv=0),  # no SED fit
        _row(1, class_mode=4),  # second pointing: ids restart
        _row(2, class_mode=3, age=3e9),
    ]
    path = _write(tmp_path / "cat.csv", rows, comments={3})
    text = path.read_text().splitlines()
    text.insert(3, "#," + ",".join(str(v) for v in _row(99)))  # a commented-out source
    path.write_text("\n".join(text) + "\n")
    df = read_legus_catalogue(path)
    assert list(df.columns) == ["pointing", *COLUMNS, "log_age"]
    assert len(df) == 6 and 99 not in df["source_id"].tolist()
    assert df["pointing"].tolist() == [0, 0, 0, 0, 1, 1]
    assert "mag_F438W" in df.columns  # ACS F435W named by the channel
    assert np.isnan(df.loc[1, "mag_F275W"]) and np.isnan(df.loc[1, "err_F275W"])
    assert np.isnan(df.loc[2, "mag_F275W"]) and df.loc[2, "mag_F336W"] == pytest.approx(22.1)
    assert np.isnan(df.loc[3, ["age_yr", "mass", "ebv", "log_age"]].astype(float)).all()
    assert df.loc[0, "log_age"] == pytest.approx(7.0)
    assert df["source_id"].dtype == np.int64 and df["class_mode"].dtype == np.int64
    sel = select_clusters(df)
    # classes 1-3 with n_filters >= 4: rows 0, 1, 2 and the second pointing's class-3 source
    assert sel["source_id"].tolist() == [1, 2, 3, 2]
    assert sel["pointing"].tolist() == [0, 0, 0, 1]


def test_parse_without_leading_column(tmp_path):
    df = read_legus_catalogue(_write(tmp_path / "c.csv", [_row(7)], leading=False))
    assert df["source_id"].tolist() == [7] and df["n_filters"].tolist() == [5]


def test_errors_name_file_and_column(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_legus_catalogue(tmp_path / "missing.csv")
    bad = tmp_path / "short.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match=r"short\.csv.*key columns.*expected 35") as e:
        read_legus_catalogue(bad)
    assert e.value.key == "columns"
    row = _row(1)
    row[COLUMNS.index("ci")] = "abc"
    with pytest.raises(InputError, match="ci") as e:
        read_legus_catalogue(_write(tmp_path / "nan.csv", [row]))
    assert e.value.path.endswith("nan.csv")
    bad_first = tmp_path / "first.csv"
    _write(bad_first, [_row(1)])
    bad_first.write_text(bad_first.read_text().replace("\n,1,", "\nxx,1,"))
    with pytest.raises(InputError, match="empty index column"):
        read_legus_catalogue(bad_first)


@pytest.mark.skipif(not CATALOGUE.is_file(), reason="LEGUS NGC 628 catalogue not present")
def test_real_ngc628_catalogue():
    df = read_legus_catalogue(CATALOGUE)
    # 3080 + 593 sources in two pointings, 14 commented out by the authors
    assert len(df) == 3659
    assert df["pointing"].value_counts().to_dict() == {0: 3080, 1: 579}
    assert not df.duplicated(["pointing", "source_id"]).any()
    for col in ("mag_F275W", "mag_F336W", "mag_F438W", "mag_F555W", "mag_F814W"):
        assert df[col].max() < 40  # no sentinel left
    sel = select_clusters(df)
    assert len(sel) == 1262
    assert set(sel["class_mode"]) == {1, 2, 3} and sel["n_filters"].min() >= 4
    assert sel["log_age"].between(6.0, 9.5).all()
    assert int(np.isnan(sel["mag_F275W"]).sum()) == 14
    assert np.isfinite(sel[["mag_F336W", "mag_F438W", "mag_F555W", "mag_F814W"]]).all().all()
