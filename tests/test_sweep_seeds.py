"""A sweep over seeds is reported per setting (mean ± sample std, n), and the sweep's figure can be read: a log axis
when the curves span more than a decade, lines named by what differs between the jobs."""

from __future__ import annotations

import csv
import statistics

import pytest

from dlrun.views import figures

TINY = ("trainer.epochs=2", "model.hidden=[8]", "trainer.progress=false", "trainer.device=cpu", "trainer.threads=1",
        "logger=none")


def test_jobs_that_differ_only_in_seed_are_one_row_with_mean_std_and_n(dl_run, tmp_path):
    result = dl_run("-m", "init=zeros,he_normal", "seed=0,1", *TINY, "hydra.sweep.dir=seeds")
    assert result.code == 0, result.output[-3000:]
    # The terminal: one row per setting, best mean first, each metric as mean ± std.
    table = result.stdout.split("mean ± std over n seeds")[1].split("Best:")[0]
    rows = [line for line in table.splitlines() if "init=" in line]
    assert [r.split("│")[1].strip() for r in rows] == ["init=he_normal", "init=zeros"], table
    assert all(r.split("│")[2].strip() == "2" and r.count("±") == 3 for r in rows), table
    # summary.csv keeps a row per job; summary_by_setting.csv holds what they average to.
    jobs = list(csv.DictReader((tmp_path / "seeds" / "summary.csv").open()))
    settings = {r["setting"]: r for r in csv.DictReader((tmp_path / "seeds" / "summary_by_setting.csv").open())}
    assert len(jobs) == 4 and len(settings) == 2
    for init in ("zeros", "he_normal"):
        (name,) = [s for s in settings if f"init={init}" in s]
        losses = [float(j["val/loss"]) for j in jobs if f"init={init} " in j["job"]]
        assert len(losses) == 2 and settings[name]["n"] == "2"
        assert float(settings[name]["val/loss"]) == pytest.approx(statistics.fmean(losses))
        assert float(settings[name]["val/loss std"]) == pytest.approx(statistics.stdev(losses))
    assert (tmp_path / "seeds" / "val_curves.png").stat().st_size > 10_000
    assert "One row per setting" in (tmp_path / "seeds" / "summary.md").read_text()


def test_curves_spanning_decades_get_a_log_axis_and_a_band_per_setting(tmp_path):
    # As dl-run experiment=init_comparison draws them: N(0,1) starts near 800, the others near 2.
    curves = {"init=normal": [(1, 800.0, 0.0), (2, 90.0, 0.0)], "init=he_normal": [(1, 2.1, 0.1), (2, 0.3, 0.05)],
              "init=zeros": [(1, 2.3, 0.0), (2, 2.3, 0.0)]}
    fig = figures.sweep_curves_figure(curves, "validation loss", "t")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(curves)
    assert len(ax.collections) == 1  # one ±1 std band: only he_normal has several seeds
    close = figures.sweep_curves_figure({"a": [(1, 2.0, 0.0)], "b": [(1, 0.5, 0.0)]}, "validation loss", "t")
    assert close.axes[0].get_yscale() == "linear"
    assert figures.save(fig, tmp_path / "curves.png").stat().st_size > 10_000
    figures.save(close, tmp_path / "close.png")
