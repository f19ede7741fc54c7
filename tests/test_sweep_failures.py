"""Sweeps lose nothing: a job that crashes is recorded as failed and the others finish; two sweeps started
together never share a directory. Real `dl-run -m` processes, started side by side."""

from __future__ import annotations

import json
import os
import re
import subprocess
from conftest import DL_RUN

CRASHY = '''
def build(fail: bool = False):
    """Train on the data as it is; with fail=true, crash at the third batch, as a bug would."""
    seen = [0]

    def augment(x):
        seen[0] += 1
        if fail and seen[0] == 3:
            raise ValueError("the user's augmentation broke")
        return x
    return augment
'''
TINY = ("dataset=digits", "model.hidden=[8]", "trainer.epochs=1", "trainer.progress=false")  # augmentations need images


def test_a_crashed_job_is_recorded_the_others_finish_and_sweeps_never_share_a_directory(tmp_path):
    (tmp_path / "crashy.py").write_text(CRASHY)
    (tmp_path / "conf" / "augmentation").mkdir(parents=True)
    (tmp_path / "conf" / "augmentation" / "crashy.yaml").write_text(
        "# dl-run --config-dir conf augmentation=crashy\n_target_: crashy.build\nfail: false\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    sweeps = [
        subprocess.Popen([DL_RUN, "-m", "--config-dir", "conf", "augmentation=crashy", "augmentation.fail=true,false",
                          *TINY], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env),
        subprocess.Popen([DL_RUN, "-m", "seed=0,1", *TINY], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env),
    ]
    outputs = [p.communicate(timeout=300)[0] for p in sweeps]
    crashed, fine = sweeps

    # Each sweep directory is named for its own process: started in the same second, they still differ.
    sweep_dirs = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 2
    assert {d.name.rsplit("_", 1)[1] for d in sweep_dirs} == {str(crashed.pid), str(fine.pid)}

    assert fine.returncode == 0, outputs[1]
    assert crashed.returncode == 1, outputs[0]  # non-zero at the end, after every job ran
    (crash_sweep,) = [d for d in sweep_dirs if d.name.endswith(f"_{crashed.pid}")]
    jobs = {d.name: json.loads((d / "metrics.json").read_text()) for d in crash_sweep.iterdir() if d.is_dir()}
    failed = [m for name, m in jobs.items() if "fail=true" in name.lower()]
    finished = [m for name, m in jobs.items() if "fail=false" in name.lower()]
    assert failed[0]["status"] == "failed"
    assert failed[0]["error"] == "ValueError: the user's augmentation broke"
    assert finished[0]["status"] == "completed" and finished[0]["epochs_run"] == 1
    assert "sweep: 1 finished job(s), 1 failed" in outputs[0]
    summary = (crash_sweep / "summary.csv").read_text()
    assert "failed" in summary and "ValueError: the user's augmentation broke" in summary
    assert re.search(r"failed: .*augmentation.fail=True.*: ValueError: the user's augmentation broke", outputs[0])
