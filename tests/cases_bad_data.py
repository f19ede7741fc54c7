"""Bad-input cases about data (tests/test_bad_input.py runs them): CSVs, image folders and time series that must be
refused with a clear message, and the input files those cases name."""

from __future__ import annotations

from pathlib import Path

# What a CSV case trains on: tiny, so that a case that should have been refused does not take long to fail.
CSV = ["dataset=csv", "trainer.epochs=1", "model.hidden=[4]"]
SERIES = ["dataset=csv_timeseries", "dataset.input_length=4", "trainer.epochs=1", "model.hidden=4"]
FOLDER = ["dataset=image_folder", "dataset.image_size=8", "dataset.channels=1", "model=cnn", "trainer.epochs=1"]
IRIS = "sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)"

# (arguments, words the message must contain); {run} is an earlier, finished run in outputs/ (dataset=iris), {damaged}
# one whose checkpoints are both truncated (see test_bad_input.earlier_runs).
CASES: list[tuple[list[str], list[str]]] = [
    # Missing values: refused with the columns and lines, unless dataset.drop_missing=true.
    ([*CSV, "dataset.path=nan.csv", "dataset.target=y"],
     ["nan.csv: 3 rows with a missing or non-finite value", "column 'a' lines 3, 7", "column 'y' line 9",
      "dataset.drop_missing=true"]),
    ([*CSV, "dataset.path=blank_cells.csv", "dataset.target=y"],
     ["blank_cells.csv: 2 rows with a missing", "column 'b' lines 4, 12"]),
    ([*CSV, "dataset.path=markers.csv", "dataset.target=y"],
     ["markers.csv: 4 rows", "column 'a' lines 2, 3, 4, 5", "(empty, NA, N/A, nan, inf)"]),
    ([*CSV, "dataset.path=inf_target.csv", "dataset.target=y", "dataset.task=regression"],
     ["inf_target.csv: 2 rows", "column 'y' lines 5, 6"]),
    ([*CSV, "dataset.path=all_missing.csv", "dataset.target=y", "dataset.drop_missing=true"],
     ["all_missing.csv", "Every row has one: nothing is left to train on"]),
    # Values that are not numbers, or too large to train on.
    ([*CSV, "dataset.path=words.csv", "dataset.target=y"],
     ["words.csv, lines 3, 5, column 'b'", "'many' is not a number", "dataset.features=[...]"]),
    ([*CSV, "dataset.path=swiss.csv", "dataset.target=y"],
     ["swiss.csv, line 2, column 'a'", "'1'234' is not a number", "thousands separator"]),
    ([*CSV, "dataset.path=huge.csv", "dataset.target=y"],
     ["huge.csv, line 4, column 'a'", "1e39", "beyond the largest 32-bit float"]),
    ([*CSV, "dataset.path=huge_target.csv", "dataset.target=y"],
     ["huge_target.csv", "column 'y'", "beyond ±1e15", "Rescale the target"]),
    ([*CSV, "dataset.path=labels.csv", "dataset.target=y", "dataset.task=regression"],
     ["labels.csv", "column 'y'", "'dog' is not a number", "dataset.task=classification"]),
    # Columns that cannot be told apart, or that give the answer away.
    ([*CSV, "dataset.path=twice.csv", "dataset.target=y"],
     ["twice.csv", "names 'a' (columns 1, 3) more than once"]),
    ([*CSV, "dataset.path=unnamed.csv", "dataset.target=y"],
     ["unnamed.csv", "column(s) 2 have no name in the header line"]),
    ([*CSV, "dataset.path=plain.csv", "dataset.target=y", "dataset.features=[a,y]"],
     ["dataset.features", "lists the target column 'y'"]),
    ([*CSV, "dataset.path=plain.csv", "dataset.target=y", "dataset.features=[a,a]"],
     ["dataset.features", "lists a more than once"]),
    # Targets with nothing to learn: one class (1 and 1.0 are the same class), one value.
    ([*CSV, "dataset.path=one_class.csv", "dataset.target=y"],
     ["dataset.target=y", "same class '1'", "at least two classes"]),
    ([*CSV, "dataset.path=constant.csv", "dataset.target=y", "dataset.task=regression"],
     ["dataset.target=y", "same value 2.5", "nothing to learn"]),
    # What spreadsheets write that cannot be read as it is.
    ([*CSV, "dataset.path=utf16.csv", "dataset.target=y"],
     ["dataset.path=utf16.csv", "UTF-16", "CSV UTF-8"]),
    ([*CSV, "dataset.path=not_text.csv", "dataset.target=y"],
     ["dataset.path=not_text.csv", "line 2", "neither UTF-8 nor Windows-1252"]),
    ([*CSV, "dataset.path=ragged_semicolons.csv", "dataset.target=y"],
     ["ragged_semicolons.csv, line 4: 2 cells where the header has 3"]),
    # Time series: repeated time stamps, holes in the middle, time stamps that are not times.
    ([*SERIES, "dataset.path=repeated_days.csv", "dataset.target=sales", "dataset.time=day"],
     ["repeated_days.csv", "repeats a time stamp", "lines 12 and 13 ('2024-01-11')"]),
    ([*SERIES, "dataset.path=hole.csv", "dataset.target=sales", "dataset.time=day", "dataset.drop_missing=true"],
     ["hole.csv", "column 'sales' line 31", "start or the end of a time series only", "Fill those values in"]),
    ([*SERIES, "dataset.path=hole.csv", "dataset.target=sales", "dataset.time=day"],
     ["hole.csv: 1 row with a missing", "column 'sales' line 31", "dataset.drop_missing=true"]),
    ([*SERIES, "dataset.path=dotted_days.csv", "dataset.target=sales", "dataset.time=day"],
     ["dotted_days.csv, line 2, column 'day'", "'01.01.2024'", "ISO date"]),
    ([*SERIES, "dataset.path=huge_series.csv", "dataset.target=sales"],
     ["huge_series.csv", "column 'sales'", "beyond ±1e15"]),
    # Image folders: a damaged file is named (with the default DataLoader workers), one class is not a classifier.
    ([*FOLDER, "dataset.path=truncated_images"],
     ["cannot read the image truncated_images/dog/1.png", "truncated", "Remove or replace that file"]),
    ([*FOLDER, "dataset.path=fake_images"], ["cannot read the image fake_images/cat/0.png", "not an image"]),
    ([*FOLDER, "dataset.path=truncated_images", "dataset.in_memory=false"],
     ["cannot read the image truncated_images/dog/1.png"]),
    ([*FOLDER, "dataset.path=one_class_images"], ["dataset.path=one_class_images", "one class sub-folder (cat)"]),
    # A trained run given new data: non-finite inputs, another file whose columns or classes are not the run's.
    (["mode=predict", "resume={run}", "predict.input=iris_nan.csv"],
     ["predict.input=iris_nan.csv", "column 'sepal width (cm)' line 3", "column 'petal width (cm)' line 4"]),
    (["mode=eval", "resume={run}", "dataset=csv", "dataset.path=iris_three.csv", "dataset.target=species"],
     ["dataset.path=iris_three.csv", "lacks the feature column(s) petal width (cm)"]),
    (["mode=eval", "resume={run}", "dataset=csv", "dataset.path=iris_roses.csv", "dataset.target=species"],
     ["dataset.path=iris_roses.csv", "has class(es) rose", "never saw", "setosa, versicolor, virginica"]),
]


def _rows(n: int, cell=lambda i, column: f"{(i * (column + 3)) % 11}") -> str:
    return "".join(f"{cell(i, 0)},{cell(i, 1)},{i % 2}\n" for i in range(n))


def _write_images(folder: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (8, 8), color=40 * c + 10 * i).save(folder / name / f"{i}.png")


def _series(n: int, value=lambda i: f"{i % 7 + 0.1 * i:.2f}", day=lambda i: i) -> str:
    from datetime import date, timedelta

    return "day,sales\n" + "".join(f"{date(2024, 1, 1) + timedelta(days=day(i))},{value(i)}\n" for i in range(n))


def make_inputs(workdir: Path) -> None:
    """Write the files these cases name into the case's working folder."""
    import numpy as np
    from PIL import Image

    files = {
        "nan.csv": "a,b,y\n" + _rows(30, lambda i, c: "nan" if c == 0 and i in (1, 5) else f"{i + c}").replace(
            "7,8,1\n", "7,8,inf\n"),
        "blank_cells.csv": "a,b,y\n" + _rows(30, lambda i, c: "" if c == 1 and i in (2, 10) else f"{i * c}"),
        "markers.csv": "a,b,y\n" + _rows(30, lambda i, c: ["NA", "N/A", "#N/A", "-inf"][i] if c == 0 and i < 4
                                         else f"{i - c}"),
        "inf_target.csv": "a,b,y\n" + "".join(f"{i},{i % 5},{'inf' if i in (3, 4) else i * 0.5}\n" for i in range(30)),
        "all_missing.csv": "a,b,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(30)),
        "words.csv": "a,b,y\n" + _rows(30, lambda i, c: "many" if c == 1 and i in (1, 3) else f"{i}"),
        "swiss.csv": "a,b,y\n1'234,5,0\n" + _rows(30),
        "huge.csv": "a,b,y\n" + _rows(2) + "1e39,1,0\n" + _rows(30),
        "huge_target.csv": "a,b,y\n" + "".join(f"{i},{i % 5},{i * 1.5e20}\n" for i in range(30)),
        "labels.csv": "a,b,y\n" + "".join(f"{i},{i % 5},{'cat' if i % 2 else 'dog'}\n" for i in range(30)),
        "twice.csv": "a,b,a,y\n" + "".join(f"{i},{i},{i},{i % 2}\n" for i in range(30)),
        "unnamed.csv": "a,,y\n" + _rows(30),
        "plain.csv": "a,b,y\n" + _rows(30),
        "one_class.csv": "a,b,y\n" + "".join(f"{i},{i % 5},{'1' if i % 2 else '1.0'}\n" for i in range(30)),
        "constant.csv": "a,b,y\n" + "".join(f"{i},{i % 5},2.5\n" for i in range(30)),
        "ragged_semicolons.csv": "a;b;y\n1,5;2;0\n2,5;3;1\n3,5;4\n" + _rows(30).replace(",", ";"),
        "repeated_days.csv": _series(60, day=lambda i: i - (i > 10)),
        "hole.csv": _series(60, value=lambda i: "" if i == 29 else f"{i}"),
        "dotted_days.csv": "day,sales\n01.01.2024,3\n02.01.2024,4\n",
        "huge_series.csv": "sales\n" + "".join(f"{i * 1e16}\n" for i in range(60)),
        "iris_nan.csv": f"{IRIS}\n5.1,3.5,1.4,0.2\n4.9,nan,1.4,0.2\n4.7,3.2,1.3,\n",
        "iris_three.csv": "sepal length (cm),sepal width (cm),petal length (cm),species\n"
                          + "".join(f"{4 + i % 5},{3 + i % 3},{1 + i % 4},{['setosa', 'versicolor', 'virginica'][i % 3]}\n"
                                    for i in range(30)),
        "iris_roses.csv": f"{IRIS},species\n" + "".join(f"{4 + i % 5},{3 + i % 3},{1 + i % 4},{i % 2},"
                                                       f"{['setosa', 'versicolor', 'rose'][i % 3]}\n" for i in range(30)),
    }
    for name, text in files.items():
        (workdir / name).write_text(text)
    (workdir / "utf16.csv").write_bytes(("a,b,y\n" + _rows(30)).encode("utf-16"))
    (workdir / "not_text.csv").write_bytes(b"a,b,y\n1,\x81\x8d,0\n")
    _write_images(workdir / "truncated_images")
    damaged = workdir / "truncated_images" / "dog" / "1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(damaged)
    damaged.write_bytes(damaged.read_bytes()[:600])  # cut short: the header reads, the pixels do not
    _write_images(workdir / "fake_images")
    (workdir / "fake_images" / "cat" / "0.png").write_text("not a picture")
    _write_images(workdir / "one_class_images", classes=("cat",))
