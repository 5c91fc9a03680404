"""Tests of the LEGUS catalogue reader (astrobatch.io.legus)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from astrobatch.errors import InputError
from astrobatch.io.legus import (
    COLUMNS,
    PHOTOMETRY_COLUMNS,
    SED_COLUMNS,
    SENTINELS,
    TAB_HYBRID_EXTRA_COLUMNS,
    legus_format,
    read_legus_catalogue,
    select_clusters,
)
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


# ---------------------------------------------------------------------------------------------
# MAST HLSP .tab layout
# ---------------------------------------------------------------------------------------------

NGC1566 = (
    ROOT / "data" / "external" / "cluster_age"
    / "hlsp_legus_hst_wfc3_ngc1566_multiband_v1_padagb-mwext-avgapcor.tab.gz"
)  # fmt: skip


def _hybrid(row, method=3, human=None, ml=1, verified=0, reclassified=0):
    """A 39-column row: 33 columns of ``row``, the hybrid class, then columns 35-39."""
    chosen = {0: ml, 1: verified, 3: human, 4: human, 6: reclassified}
    human = row[COLUMNS.index("class_mode")] if human is None else human
    chosen[3] = chosen[4] = human
    return [*row[:33], float(chosen[method]), method, float(human), float(ml), float(verified),
            float(reclassified)]  # fmt: skip


def _write_tab(path, rows, lines_before=()):
    text = [*lines_before, *("  ".join(str(v) for v in r) for r in rows)]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def test_tab_same_frame_as_csv_with_sentinels_and_no_fit(tmp_path):
    rows = [
        _row(1),
        _row(2, f275w=99.999),  # not detected
        _row(3, f275w=66.666, n_filters=4, class_mode=2),  # not in the field
        _row(4, n_filters=0, class_mode=0, age=0, mass=0, ebv=0),  # no SED fit
        _row(5, f275w=44.444, class_mode=3, age=3e9),  # CI-based aperture correction undefined
    ]
    tab = _write_tab(tmp_path / "cat.tab", rows, lines_before=["# a comment", ""])
    assert legus_format(tab) == "tab"
    df = read_legus_catalogue(tab)
    assert list(df.columns) == ["pointing", *COLUMNS, "log_age"]
    assert df["pointing"].tolist() == [0] * 5
    assert np.isnan(df.loc[[1, 2, 4], "mag_F275W"]).all()
    assert np.isnan(df.loc[1, "err_F275W"]) and df.loc[2, "mag_F336W"] == 22.1
    assert np.isnan(df.loc[3, ["age_yr", "mass", "ebv", "log_age"]].astype(float)).all()
    assert df.loc[4, "log_age"] == pytest.approx(np.log10(3e9))
    csv = read_legus_catalogue(_write(tmp_path / "cat.csv", rows))
    pd.testing.assert_frame_equal(df, csv)  # same names, dtypes and values
    assert read_legus_catalogue(tab, format="tab").equals(df)


def test_tab_hybrid_layout_and_its_checks(tmp_path):
    rows = [
        _hybrid(_row(1, class_mode=2), method=3),  # three humans: their mode
        _hybrid(_row(2), method=0, human=0, ml=3),  # ML only
        _hybrid(_row(3), method=1, human=0, ml=4, verified=2),  # ML verified by one human
        _hybrid(_row(4), method=6, human=4, ml=4, reclassified=1),  # former class 4
    ]
    df = read_legus_catalogue(_write_tab(tmp_path / "h.tab", rows))
    assert list(df.columns) == ["pointing", *COLUMNS, "log_age", *TAB_HYBRID_EXTRA_COLUMNS]
    assert df["class_mode"].tolist() == [2, 3, 2, 1]
    assert df["class_method"].tolist() == [3, 0, 1, 6]
    assert df["class_ml"].tolist() == [1, 3, 4, 4]
    assert df["class_mean"].isna().all()  # no mean class in this layout
    csv = read_legus_catalogue(_write(tmp_path / "c.csv", [_row(1)]))
    assert (df[csv.columns].dtypes == csv.dtypes).all()
    assert (df[list(TAB_HYBRID_EXTRA_COLUMNS)].dtypes == np.int64).all()
    assert select_clusters(df)["source_id"].tolist() == [1, 2, 3, 4]

    bad = [*rows[:1], [*rows[1][:33], 2.0, *rows[1][34:]]]  # ML-only row whose class is not ML's
    with pytest.raises(InputError, match=r"bad\.tab.*class_ml \(col37\).*line 2") as e:
        read_legus_catalogue(_write_tab(tmp_path / "bad.tab", bad))
    assert e.value.key == "col34"
    flag = [[*rows[0][:34], 5, *rows[0][35:]]]
    with pytest.raises(InputError, match="classification-method flag") as e:
        read_legus_catalogue(_write_tab(tmp_path / "flag.tab", flag))
    assert e.value.key == "col35"
    cls = [[*rows[0][:35], 7.0, *rows[0][36:]]]
    with pytest.raises(InputError, match="class_mode_human") as e:
        read_legus_catalogue(_write_tab(tmp_path / "cls.tab", cls))
    assert e.value.key == "col36"


def test_tab_errors_name_file_column_and_expectation(tmp_path):
    short = _write_tab(tmp_path / "short.tab", [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(
        InputError, match=r"short\.tab.*key columns.*expected 35 .*or 39.*got 3"
    ) as e:
        read_legus_catalogue(short)
    assert e.value.key == "columns"
    ragged = _write_tab(tmp_path / "ragged.tab", [_row(1), _row(2)[:-1]])
    with pytest.raises(InputError, match=r"ragged\.tab.*expected 35 .*got 34 in line 2"):
        read_legus_catalogue(ragged)
    row = _row(1)
    row[COLUMNS.index("ci")] = "abc"
    with pytest.raises(InputError, match=r"nan\.tab.*column 'ci', got 'abc' in line 1") as e:
        read_legus_catalogue(_write_tab(tmp_path / "nan.tab", [_row(2), row][1:]))
    assert e.value.key == f"col{COLUMNS.index('ci') + 1}"
    good = _write_tab(tmp_path / "good.tab", [_row(1)])
    with pytest.raises(InputError, match="expected format 'auto', 'csv' or 'tab'") as e:
        read_legus_catalogue(good, format="fits")
    assert e.value.key == "format"
    with pytest.raises(InputError, match=r"good\.tab.*expected 35 catalogue columns"):
        read_legus_catalogue(good, format="csv")  # the wrong layout forced: a clear error
    one = tmp_path / "one.txt"
    one.write_text("\n12345\n")
    with pytest.raises(InputError, match="single field"):
        read_legus_catalogue(one)
    empty = tmp_path / "empty.tab"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty file"):
        read_legus_catalogue(empty)


def test_gzip_is_detected_by_content(tmp_path):
    tab = _write_tab(tmp_path / "c.tab", [_row(1), _row(2, f275w=99.999)])
    csv = _write(tmp_path / "c.csv", [_row(1), _row(2, f275w=99.999)])
    for plain, name in ((tab, "tab_gz_without_suffix"), (csv, "c.csv.gz")):
        packed = tmp_path / name
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        assert legus_format(packed) == legus_format(plain)
        pd.testing.assert_frame_equal(read_legus_catalogue(packed), read_legus_catalogue(plain))


@pytest.mark.skipif(not NGC1566.is_file(), reason="vendored LEGUS NGC 1566 catalogue not present")
def test_real_ngc1566_tab():
    df = read_legus_catalogue(NGC1566)
    text = gzip.decompress(NGC1566.read_bytes()).decode().splitlines()
    assert len(df) == len(text) == 2752 and (df["pointing"] == 0).all()
    # line 4 of the file, value by value as written there
    line4 = dict(zip(
        [*COLUMNS[:34], *TAB_HYBRID_EXTRA_COLUMNS],
        [4, 2866.000, 5817.751, 65.00608, -54.90799, 23.96900, 0.15900, 24.47500, 0.31200,
         24.29800, 0.10300, 23.46100, 0.04700, 22.01800, 0.05700, 1.53200, 1.000e07, 1.100e07,
         9.000e06, 2.949e04, 3.840e04, 2.360e04, 0.79000, 0.86000, 0.74000, 0.38440, -0.57440,
         -0.01440, 0.00870, 0.00560, 3.36539, 0.01777, 5, 1.0, 3, 1.0, 1.0, 0.0, 0.0],
        strict=True,
    ))  # fmt: skip
    got = df.iloc[3]
    assert text[3].split()[0] == "4"
    for name, value in line4.items():
        assert got[name] == value, name
    assert np.isnan(got["class_mean"]) and got["log_age"] == pytest.approx(7.0)
    # line 1: F275W magnitude and error 99.999 (not detected), Nflt = 0 (no SED fit)
    first = df.iloc[0]
    assert text[0].split()[5:7] == ["99.99900", "99.99900"] and text[0].split()[32] == "0"
    assert np.isnan(first[["mag_F275W", "err_F275W"]].astype(float)).all()
    assert first["mag_F336W"] == 21.635 and first["err_F336W"] == 0.095
    assert first["n_filters"] == 0 and np.isnan(first[list(SED_COLUMNS)].astype(float)).all()
    # line 42: a 4-band fit; residual 200 marks the F336W band left out (kept as in the CSV)
    assert df.iloc[41]["source_id"] == 42 and df.iloc[41]["n_filters"] == 4
    assert df.iloc[41]["residual_F336W"] == 200.0 and df.iloc[41]["err_F336W"] == 0.726
    # sanity of the whole file (independent oracle: numpy on the raw text)
    raw = np.loadtxt(text)
    fit = df["n_filters"] >= 4
    assert df.loc[fit, "age_yr"].between(1e6, 1.5e10).all() and df.loc[fit, "mass"].gt(0).all()
    assert df["class_mode"].between(0, 4).all() and set(df["class_method"]) <= {0, 1, 3, 4, 6}
    assert df["ra"].sub(65.0).abs().lt(0.1).all() and df["dec"].add(54.94).abs().lt(0.1).all()
    phot = df[list(PHOTOMETRY_COLUMNS)].to_numpy()
    assert not np.isclose(phot[..., None], SENTINELS, atol=5e-4).any()  # no sentinel left
    assert (df[[c for c in PHOTOMETRY_COLUMNS if c.startswith("mag_")]].max() < 40).all()
    sel = select_clusters(df)
    expected = np.isin(raw[:, 33], [1, 2, 3]) & (raw[:, 32] >= 4)
    assert len(sel) == int(expected.sum()) > 1000
    assert sel["source_id"].tolist() == raw[expected, 0].astype(int).tolist()
    if CATALOGUE.is_file():  # the CSV layout gives the same names and dtypes
        csv = read_legus_catalogue(CATALOGUE)
        assert list(df.columns[: csv.shape[1]]) == list(csv.columns)
        assert (df[csv.columns].dtypes == csv.dtypes).all()
