"""A run directory written by dl-run before its code was reshaped (issue #16) still resumes and evaluates.

tests/fixtures/run_before_one_shape was made by `dl-run trainer.epochs=3 model.hidden=[16]` on the main
branch of 2026-12-07, before the loop, tasks and run directory moved into their packages; its checkpoints
are that version's format. It is copied first: the fixture itself is never written to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_one_shape"


def copied(tmp_path: Path) -> Path:
    run_dir = tmp_path / "old run"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def test_a_run_from_before_the_reshape_resumes_where_it_stopped(tmp_path, dl_run):
    run_dir = copied(tmp_path)
    before = json.loads((run_dir / "metrics.json").read_text())
    result = dl_run(f"resume={run_dir}", "trainer.epochs=5")
    assert result.code == 0, result.output
    assert "Resuming from epoch 3" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4, 5]
    # The first three epochs are the old run's, exactly as it logged them.
    assert metrics["history"][:3] == before["history"]
    assert metrics["test"]["accuracy"] > 0.5


def test_a_run_from_before_the_reshape_evaluates_with_its_best_checkpoint(tmp_path, dl_run):
    run_dir = copied(tmp_path)
    result = dl_run("mode=eval", f"resume={run_dir}")
    assert result.code == 0, result.output
    scored = json.loads((run_dir / "eval_digits.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert scored["checkpoint"].endswith("best.pt")
    assert abs(scored["test"]["accuracy"] - trained["test"]["accuracy"]) < 1e-9
