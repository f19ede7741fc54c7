"""Data that is odd but usable is used with a word, never silently: what a run warns about (printed, and kept in
metrics.json as data_warnings), what spreadsheets write that is read as meant, and a trained run scoring another
file by column and class names. What is refused outright is in the bad-input catalogue (cases_bad_data.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrun.data.registry import DATASETS
from dlrun.errors import ConfigError

TINY = ("trainer.epochs=1", "model.hidden=[8]", "trainer.progress=false")
FIXTURE = Path(__file__).parent / "fixtures" / "run_before_one_shape"


def table(n: int = 60, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three features on different scales and a text label that they decide."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 30.0, 10.0] + [4.0, 120.0, 30.0]
    labels = ["small" if v < 0 else "large" for v in (x[:, 0] - 4.0) + (x[:, 1] - 120.0) / 30.0]
    return x, labels


def write(path: Path, header: list[str], rows: list[list[object]], *, sep: str = ",", end: str = "\n",
          encoding: str = "utf-8") -> Path:
    path.write_bytes((end.join(sep.join(map(str, r)) for r in [header, *rows]) + end).encode(encoding))
    return path


def build(path: Path, target: str = "y", **keys) -> object:
    return DATASETS.build({"name": "csv", "path": str(path), "target": target, **keys}, seed=0)


# ---- warnings: printed when the run starts and kept in metrics.json -------------------------------------------------

def test_a_class_missing_from_a_split_is_warned_printed_and_kept_in_metrics(dl_run, tmp_path):
    x, labels = table()
    labels[7] = "rare"  # one row: it lies in one split only
    write(tmp_path / "rare.csv", ["a", "b", "c", "y"], [[*row, label] for row, label in zip(x, labels)])
    result = dl_run("dataset=csv", "dataset.path=rare.csv", "dataset.target=y", *TINY)
    assert result.code == 0, result.output
    warnings = result.metrics()["data_warnings"]
    missing = [w for w in warnings if "class 'rare' (1 row)" in w]
    assert len(missing) == 1 and "split" in missing[0], warnings
    assert "Warning:" in result.output and "class 'rare' (1 row)" in result.output
    # Two of the three splits lack it: which ones depends on the seeded shuffle, but one of them is named.
    assert sum(split in missing[0] for split in ("training", "validation", "test")) == 2


def test_drop_missing_leaves_out_the_rows_and_says_how_many(dl_run, tmp_path):
    x, labels = table()
    rows = [[*row, label] for row, label in zip(x, labels)]
    rows[2][0], rows[10][2], rows[11][3] = "nan", "", "NA"
    write(tmp_path / "holes.csv", ["a", "b", "c", "y"], rows)
    refused = dl_run("dataset=csv", "dataset.path=holes.csv", "dataset.target=y", *TINY)
    assert refused.code != 0 and "holes.csv: 3 rows with a missing" in refused.output
    assert "column 'a' line 4; column 'c' line 12; column 'y' line 13" in refused.output
    result = dl_run("dataset=csv", "dataset.path=holes.csv", "dataset.target=y", "dataset.drop_missing=true", *TINY)
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert any("3 of 60 rows left out (dataset.drop_missing=true)" in w for w in metrics["data_warnings"])
    assert "3 of 60 rows left out" in result.output
    data = build(tmp_path / "holes.csv", drop_missing=True)
    assert sum(len(y) for y in (data.splits.y_train, data.splits.y_val, data.splits.y_test)) == 57


def test_eval_json_keeps_the_data_warnings_of_the_file_it_scored(dl_run, tmp_path):
    x, labels = table()
    write(tmp_path / "train.csv", ["a", "b", "c", "y"], [[*row, label] for row, label in zip(x, labels)])
    trained = dl_run("dataset=csv", "dataset.path=train.csv", "dataset.target=y", *TINY)
    assert trained.code == 0, trained.output
    (run_dir,) = trained.run_dirs()
    rows = [[*row, label] for row, label in zip(x, labels)]
    rows[5][1] = ""
    write(tmp_path / "other.csv", ["a", "b", "c", "y"], rows)
    result = dl_run("mode=eval", f"resume={run_dir}", "dataset.path=other.csv", "dataset.drop_missing=true")
    assert result.code == 0, result.output
    scored = json.loads((run_dir / "eval_other.json").read_text())
    assert any("1 of 60 rows left out" in w for w in scored["data_warnings"])


def test_numeric_labels_are_numbers_so_1_and_1_0_are_one_class(tmp_path):
    rows = [[i, i % 4, ["1", "1.0", "2", " 2.00", "3e0"][i % 5]] for i in range(40)]
    data = build(write(tmp_path / "labels.csv", ["a", "b", "y"], rows))
    assert data.info.task == "classification" and data.info.class_names == ["1", "2", "3"]
    assert data.info.num_classes == 3
    halves = build(write(tmp_path / "halves.csv", ["a", "b", "y"], [[i, i % 3, [0.5, 1.0][i % 2]] for i in range(40)]),
                   task="classification")
    assert halves.info.class_names == ["0.5", "1"]


def test_time_series_gaps_are_warned_with_where_and_how_large(tmp_path):
    from datetime import date, timedelta

    days = [date(2024, 1, 1) + timedelta(days=i + 3 * (i >= 40)) for i in range(80)]
    write(tmp_path / "sales.csv", ["day", "sales"], [[d, i % 7] for i, d in enumerate(reversed(days))])
    data = DATASETS.build({"name": "csv_timeseries", "path": str(tmp_path / "sales.csv"), "target": "sales",
                           "time": "day", "input_length": 5}, seed=0)
    (warning,) = data.warnings
    assert "the time column 'day' is not evenly spaced: the usual step is 1 day, but 1 of 79 steps differ" in warning
    assert "4 days between line 42 ('2024-02-09') and line 41 ('2024-02-13')" in warning
    # Leading and trailing holes may be dropped; the warning says how many rows went.
    rows = [[i, "" if i in (0, 79) else i % 7] for i in range(80)]
    write(tmp_path / "ends.csv", ["t", "sales"], rows)
    data = DATASETS.build({"name": "csv_timeseries", "path": str(tmp_path / "ends.csv"), "target": "sales",
                           "time": "t", "input_length": 5, "drop_missing": True}, seed=0)
    assert data.warnings == [f"{tmp_path / 'ends.csv'}: 2 of 80 rows left out (dataset.drop_missing=true), with a "
                             f"missing or non-finite value in column 'sales' lines 2, 81."]


def test_image_files_skipped_for_their_format_are_warned(tmp_path):
    from image_fixtures import write_image_folder

    folder = write_image_folder(tmp_path / "pets", per_class=4)
    (folder / "cat" / "notes.txt").write_text("not an image")
    (folder / "dog" / "photo.heic").write_bytes(b"\x00")
    (folder / "dog" / ".DS_Store").write_bytes(b"\x00")  # what file managers leave: not worth a word
    (folder / "readme.md").write_text("images of pets")
    data = DATASETS.build({"name": "image_folder", "path": str(folder), "image_size": 8, "workers": 0}, seed=0)
    formats, loose = data.warnings
    assert "2 files skipped, not in an image format dl-run reads (.heic: 1, .txt: 1)" in formats
    assert f"e.g. {folder / 'cat' / 'notes.txt'}" in formats and ".png" in formats
    assert "1 file skipped at the top of the folder" in loose and "readme.md" in loose


# ---- what spreadsheets write, read as meant ---------------------------------------------------------------------

def _same_data(a, b) -> None:
    for t, u in zip(a.splits.tensors(), b.splits.tensors()):
        assert torch.allclose(t, u), (t, u)
    assert a.info.class_names == b.info.class_names and a.info.feature_names == b.info.feature_names


SPREADSHEETS = {
    "excel_utf8_bom_crlf": dict(end="\r\n", encoding="utf-8-sig"),
    "windows_1252": dict(encoding="cp1252"),
    "old_mac_cr": dict(end="\r"),
    "tabs": dict(sep="\t"),
    "semicolons_decimal_commas": dict(sep=";"),
}


@pytest.mark.parametrize("kind", SPREADSHEETS)
def test_spreadsheet_csvs_read_as_the_plain_file(tmp_path, kind):
    x, labels = table()
    labels = [label.replace("large", "grand été") for label in labels]
    header = ["surface m²", "b", "c", "y"]
    plain = build(write(tmp_path / "plain.csv", header, [[*r, lab] for r, lab in zip(x, labels)]))
    keys = SPREADSHEETS[kind]
    rows = [[*(f"{v}".replace(".", ",") if keys.get("sep") == ";" else v for v in r), lab]
            for r, lab in zip(x, labels)]
    data = build(write(tmp_path / f"{kind}.csv", header, rows, **keys))
    _same_data(plain, data)
    assert data.info.class_names == ["grand été", "small"]
    if kind == "windows_1252":
        (warning,) = data.warnings
        assert "read as Windows-1252 (Latin-1)" in warning and "CSV UTF-8" in warning
    else:
        assert data.warnings == [] or all("class" in w for w in data.warnings)


def test_quoted_cells_empty_lines_trailing_columns_and_thousands_separators(tmp_path):
    plain = build(write(tmp_path / "plain.csv", ["a", "b", "y"], [[1234.5 * i, i % 7, i % 2] for i in range(40)]))
    body = "".join(f'"{1234.5 * i:,}", {i % 7} ,"{i % 2}",,\n' + ("\n" if i % 9 == 0 else "") for i in range(40))
    (tmp_path / "messy.csv").write_text('"a","b",y,,\n\n' + body + ",,,,\n")
    _same_data(plain, build(tmp_path / "messy.csv"))


# ---- a trained run scoring another file: columns and classes by name ----------------------------------------------

@pytest.fixture(scope="module")
def trained_csv(tmp_path_factory, fork_server):
    from conftest import Result, user_env

    root = tmp_path_factory.mktemp("by_name")
    x, labels = table(120)
    write(root / "train.csv", ["a", "b", "c", "y"], [[*r, lab] for r, lab in zip(x, labels)])
    proc = fork_server.run(["dataset=csv", "dataset.path=train.csv", "dataset.target=y", "trainer.epochs=8",
                            "model.hidden=[16]", "trainer.progress=false"], root, user_env())
    result = Result(proc, root)
    assert result.code == 0, result.output
    (run_dir,) = result.run_dirs()
    return {"root": root, "run_dir": run_dir, "x": x, "labels": labels}


def test_eval_on_another_file_matches_columns_by_name(trained_csv, dl_run):
    root, run_dir, x, labels = trained_csv["root"], trained_csv["run_dir"], trained_csv["x"], trained_csv["labels"]
    write(root / "reordered.csv", ["c", "y", "a", "b"], [[r[2], lab, r[0], r[1]] for r, lab in zip(x, labels)])
    shutil.copy(root / "train.csv", root / "same.csv")
    for name in ("same", "reordered"):
        result = dl_run("mode=eval", f"resume={run_dir}", f"dataset.path={name}.csv", cwd=root)
        assert result.code == 0, result.output
    same = json.loads((run_dir / "eval_same.json").read_text())
    reordered = json.loads((run_dir / "eval_reordered.json").read_text())
    for split in ("train", "val", "test"):  # by position it would score much worse
        assert reordered["evaluation"][split] == pytest.approx(same["evaluation"][split])
    assert "columns are read by name" in result.output


def test_eval_refuses_a_file_missing_a_column_or_with_a_class_the_run_never_saw(trained_csv, dl_run):
    root, run_dir, x, labels = trained_csv["root"], trained_csv["run_dir"], trained_csv["x"], trained_csv["labels"]
    write(root / "no_c.csv", ["a", "b", "d", "y"], [[*r, lab] for r, lab in zip(x, labels)])
    result = dl_run("mode=eval", f"resume={run_dir}", "dataset.path=no_c.csv", cwd=root)
    assert result.code != 0 and "Traceback" not in result.output
    assert "'dataset.path=no_c.csv' lacks the feature column(s) c" in result.output
    write(root / "medium.csv", ["a", "b", "c", "y"],
          [[*r, "medium" if i % 3 == 0 else lab] for i, (r, lab) in enumerate(zip(x, labels))])
    result = dl_run("mode=eval", f"resume={run_dir}", "dataset.path=medium.csv", cwd=root)
    assert result.code != 0 and "Traceback" not in result.output
    assert "has class(es) medium that" in result.output and "the run's classes: large, small" in result.output
    assert not (run_dir / "eval_no_c.json").exists() and not (run_dir / "eval_medium.json").exists()


def test_a_checkpoint_without_names_is_matched_by_position_with_a_warning(tmp_path, dl_run):
    run_dir, copy = tmp_path / "old run", tmp_path / "same old run"
    shutil.copytree(FIXTURE, run_dir)  # written before dl-run saved the names
    shutil.copytree(FIXTURE, copy)
    own = dl_run("mode=eval", f"resume={copy}")
    assert own.code == 0 and "matched to the run's by position" not in own.output
    other = dl_run("mode=eval", f"resume={run_dir}", "dataset.val_fraction=0.2")
    assert other.code == 0, other.output
    assert "matched to the run's by position, not by name" in other.output
    scored = json.loads((run_dir / "eval_digits.json").read_text())
    assert any("by position" in w for w in scored["data_warnings"])


def test_predict_refuses_non_finite_inputs_naming_line_and_column(trained_csv, dl_run):
    root, run_dir = trained_csv["root"], trained_csv["run_dir"]
    write(root / "new.csv", ["b", "a", "c"], [[120, 4, 30], [130, "inf", 31], [110, 3, ""]])
    result = dl_run("mode=predict", f"resume={run_dir}", "predict.input=new.csv", cwd=root)
    assert result.code != 0 and "Traceback" not in result.output
    assert "column 'a' line 3; column 'c' line 4" in result.output
    assert not (root / "new.predictions.csv").exists()
    write(root / "excel.csv", ["b", "a", "c"], [["120,5", 4, 30], ["130,25", "3,5", 31]], sep=";", end="\r\n",
          encoding="utf-8-sig")
    result = dl_run("mode=predict", f"resume={run_dir}", "predict.input=excel.csv", cwd=root)
    assert result.code == 0, result.output
    assert (root / "excel.predictions.csv").read_text().splitlines()[0].startswith("row,predicted")


def test_refusals_name_a_config_key(tmp_path):
    write(tmp_path / "x.csv", ["a", "b", "y"], [[1, 2, 0], [2, 3, 1], [3, "nan", 0]])
    with pytest.raises(ConfigError) as err:
        build(tmp_path / "x.csv")
    assert err.value.key == "dataset.path" and "line 4" in str(err.value)
