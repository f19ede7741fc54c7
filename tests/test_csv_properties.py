"""Any CSV a user may hand to dataset=csv ends in one of two ways: a clear refusal (a non-zero exit, no traceback, a
message naming a dataset key or the file), or a run whose metrics are all finite. Never a traceback, never exit 0
with NaN metrics.

Hypothesis writes the files: junk cells, odd or repeated header names, encodings (UTF-8 with and without a
byte-order mark, Windows-1252, UTF-16), line endings, separators, quoting, NaN and inf and the missing markers
spreadsheets write, huge numbers (1e308), empty lines and trailing empty columns. Each file is given to a real
`dl-run` process forked from the fork server (conftest.fork_server), tiny model, one epoch. A fixed seed
(derandomize) makes the examples the same on every run: 15 in the default suite, 200 in the slow one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import user_env

ARGS = ["dataset=csv", "dataset.path=data.csv", "dataset.target=y", "trainer.epochs=1", "model.hidden=[4]",
        "trainer.progress=false", "trainer.threads=1", "logger=none", "trainer.device=cpu"]
MARKERS = ["", " ", "NA", "N/A", "#N/A", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "null", "None", "?", "-"]
JUNK = ["abc", "1,5", "1'234", "1.2.3", "0x10", "TRUE", "é", '"', "'", "1e", "--1", "1 2", ";", "\t", "#DIV/0!"]
HUGE = ["1e308", "-1e308", "1.7976931348623157e308", "1e39", "3.4e38", "1e-320", "5e-324", "1e30", "-1e30", "1e400"]
ODD_NAMES = ["", " ", "a", "a", "y ", " y", "é", "a,b", "1.5", "nan", '"q"', "col;2", "\ufeffy", "Y"]
SAFE = dict(max_examples=15, derandomize=True, database=None, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def cells(draw, kind: str) -> str:
    """One cell: mostly a plain number (or a label), sometimes a missing marker, junk or a huge value."""
    roll = draw(st.integers(0, 99))
    if roll < 4:
        return draw(st.sampled_from(MARKERS))
    if roll < 6:
        return draw(st.sampled_from(JUNK))
    if roll < 8:
        return draw(st.sampled_from(HUGE))
    if roll < 9:
        return draw(st.text(max_size=4))
    if kind == "classes":
        return draw(st.sampled_from(["0", "1", "2", "1.0", "0.0", " 2 "]))
    if kind == "labels":
        return draw(st.sampled_from(["cat", "dog", "Cat", "bird", "é"]))
    if kind == "numbers":
        return repr(draw(st.floats(-1e6, 1e6, allow_nan=False)))
    return draw(st.one_of(st.integers(-1000, 1000).map(str), st.floats(-1e4, 1e4).map(lambda v: f"{v:.4g}")))


@st.composite
def csv_files(draw) -> bytes:
    """The bytes of a CSV file with a column 'y' (usually) and one to three features."""
    n_features = draw(st.integers(1, 3))
    names = [draw(st.sampled_from(ODD_NAMES)) if draw(st.integers(0, 9)) == 0 else f"f{j}" for j in range(n_features)]
    names.insert(draw(st.integers(0, n_features)), "y" if draw(st.integers(0, 19)) else draw(st.sampled_from(ODD_NAMES)))
    kind = draw(st.sampled_from(["classes", "labels", "numbers"]))
    n_rows = draw(st.integers(0, 40))
    rows = [[draw(cells(kind if name.strip().lstrip("\ufeff") == "y" else "feature")) for name in names]
            for _ in range(n_rows)]
    if draw(st.integers(0, 9)) == 0:  # a column of huge but finite values: standardised, it must still train
        j = draw(st.integers(0, len(names) - 1))
        for row in rows:
            row[j] = repr(draw(st.floats(-1e30, 1e30, allow_nan=False)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=draw(st.sampled_from([",", ",", ";", "\t"])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])),
                        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    trailing = [""] * draw(st.sampled_from([0, 0, 0, 1, 2]))
    writer.writerow(names + trailing)
    for row in rows:
        writer.writerow(row + trailing)
        if draw(st.integers(0, 19)) == 0:
            writer.writerow([])  # an empty line
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "cp1252", "utf-16"]))
    return buffer.getvalue().encode(encoding, errors="replace")


def finite_metrics(metrics: dict) -> list[str]:
    """The metrics of a finished run that are not finite numbers (R² of a constant split, when a warning said so)."""
    undefined_r2 = any("R² is undefined" in w for w in metrics.get("data_warnings", []))
    bad = []
    for split, values in metrics["evaluation"].items():
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value) and not (name == "r2" and undefined_r2):
                bad.append(f"{split}/{name}={value}")
    return bad


def check(data: bytes, server, root) -> None:
    workdir = root / f"example{len(list(root.iterdir()))}"
    workdir.mkdir()
    (workdir / "data.csv").write_bytes(data)
    proc = server.run(ARGS, workdir, user_env(), timeout=120)
    output = proc.stdout + proc.stderr
    try:
        assert "Traceback" not in output, output
        if proc.returncode != 0:
            assert "dataset." in output or "data.csv" in output, output
        else:
            (metrics_file,) = (workdir / "outputs").rglob("metrics.json")
            metrics = json.loads(metrics_file.read_text())
            assert not finite_metrics(metrics), (finite_metrics(metrics), output)
    except AssertionError:
        print(f"The CSV (bytes): {data!r}")
        raise
    shutil.rmtree(workdir)


@settings(**SAFE)
@given(data=csv_files())
def test_any_csv_is_refused_clearly_or_trains_to_finite_metrics(data, fork_server, tmp_path_factory):
    check(data, fork_server, _root(tmp_path_factory))


@pytest.mark.slow
@settings(**{**SAFE, "max_examples": 200})
@given(data=csv_files())
def test_any_csv_is_refused_clearly_or_trains_to_finite_metrics_many(data, fork_server, tmp_path_factory):
    check(data, fork_server, _root(tmp_path_factory))


_ROOTS: dict[int, object] = {}


def _root(factory):
    """One scratch folder per session for the examples (each removed once it passed)."""
    if id(factory) not in _ROOTS:
        _ROOTS[id(factory)] = factory.mktemp("csv_examples")
    return _ROOTS[id(factory)]
