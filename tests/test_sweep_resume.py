"""A sweep stopped half-way (SIGKILL, Ctrl-C; in-process or in joblib workers) and continued with
`dl-run resume=<sweep dir>` keeps its completed jobs untouched, resumes the interrupted one from its checkpoint and
ends with every job's weights and metrics equal to a sweep that never stopped. Every sweep here is the real
`dl-run` script as a subprocess; the user's slow augmentation (tests/test_resume.py) makes a job last long enough to
be stopped while it trains."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import user_env
from dlrun.engine import checkpoint
from dlrun.errors import ConfigError
from dlrun.run import sweep_resume
from test_resume import write_slow_augmentation

# Six jobs of three epochs on the digits, deterministic on one CPU thread; job 3 is stopped after its first epoch's
# checkpoint. (TensorBoard's curves across a resume are tested on single runs, in test_resume.py.)
GRID = ("optimizer.lr=0.02,0.005,0.001", "model.dropout=0.0,0.2")
ARGS = ("augmentation=slow", "dataset=digits", "model.hidden=[8]", "trainer.epochs=3", "trainer.batch_size=96",
        "trainer.deterministic=true", "trainer.device=cpu", "trainer.threads=1", "trainer.progress=false", "logger=none")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fork_server) -> Path:
    """The user's slow augmentation, and the six-job sweep that was never stopped (baseline/)."""
    root = write_slow_augmentation(tmp_path_factory.mktemp("sweep_resume"))
    done = fork_server.run(["-m", "--config-dir", "conf", *GRID, *ARGS, "hydra.sweep.dir=baseline"], root, user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def jobs_of(sweep: Path) -> dict[int, Path]:
    return {int(d.name.split("_", 1)[0]): d for d in sweep.iterdir() if d.is_dir() and d.name[0].isdigit()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stop_while_job_3_trains(fork_server, workdir: Path, sweep: Path, signum: int, *extra: str) -> tuple[str, int]:
    """Start the sweep and send `signum` to it (to its whole process group, as a terminal's Ctrl-C reaches a
    launcher's workers too) once job 3 has written its first checkpoint, before it ends; its output and exit code
    (None when it was killed)."""
    pid, files = fork_server.start(["-m", "--config-dir", "conf", *GRID, *ARGS, *extra, f"hydra.sweep.dir={sweep}"],
                                   workdir, user_env())
    status, deadline = Path(files["status"]), time.monotonic() + 240
    while not any(sweep.glob("3_*/checkpoints/last.pt")):
        assert not status.exists() and time.monotonic() < deadline, Path(files["stdout"]).read_text()
        time.sleep(0.005)
    os.killpg(pid, signum)
    while _alive(pid):
        assert time.monotonic() < deadline, "the sweep did not stop"
        time.sleep(0.02)
    output = Path(files["stdout"]).read_text() + Path(files["stderr"]).read_text()
    return output, int(status.read_text()) if status.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_same_as_uninterrupted(workdir: Path, sweep: Path) -> None:
    baseline, ours = jobs_of(workdir / "baseline"), jobs_of(sweep)
    assert sorted(ours) == sorted(baseline) == list(range(6))
    for number, job in ours.items():
        assert job.name == baseline[number].name
        mine, theirs = (checkpoint.load(d / "checkpoints" / "last.pt")["model"] for d in (job, baseline[number]))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f"job {number}: weights differ"
        metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (job, baseline[number]))
        for key in ("history", "evaluation", "best", "test", "steps", "epochs_run", "overrides", "status"):
            assert metrics[key] == expected[key], f"job {number}: {key}"
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 7 and sum(",completed," in r for r in rows) == 6  # the summary covers old and new jobs


def assert_resumes(dl_run, workdir: Path, sweep: Path, command: list[str]) -> str:
    """Resume the stopped sweep: jobs 0-2 are kept byte for byte, job 3 resumes from its checkpoint, 4-5 run."""
    jobs = jobs_of(sweep)
    assert sorted(jobs) == [0, 1, 2, 3] and not (jobs[3] / "metrics.json").exists()
    kept = {n: digest(jobs[n] / "metrics.json") for n in (0, 1, 2)}
    kept_weights = {n: digest(jobs[n] / "checkpoints" / "last.pt") for n in (0, 1, 2)}
    resumed = dl_run(*command, cwd=workdir)
    assert resumed.code == 0, resumed.output
    out = resumed.stdout
    assert all(re.search(rf"job {n} \(.*\): completed before, not run again", out) for n in (0, 1, 2)), out
    assert len(re.findall(r"Resuming from epoch \d+, step [1-9]\d*", out)) == 1, out  # job 3, from its checkpoint
    assert {n: digest(jobs[n] / "metrics.json") for n in (0, 1, 2)} == kept
    assert {n: digest(jobs[n] / "checkpoints" / "last.pt") for n in (0, 1, 2)} == kept_weights
    assert_same_as_uninterrupted(workdir, sweep)
    assert not (sweep / sweep_resume.LOCK).exists()
    return resumed.output


def test_a_grid_killed_while_job_3_trains_resumes_to_the_uninterrupted_result(workdir, fork_server, dl_run):
    sweep = workdir / "killed"
    output, code = stop_while_job_3_trains(fork_server, workdir, sweep, signal.SIGKILL)
    assert code is None, output
    assert (sweep / sweep_resume.LOCK).exists()  # left by the killed process: stale, taken over by the resume
    # With -m or without (the other tests): the same. conf/ names code, so it is given again.
    assert_resumes(dl_run, workdir, sweep, ["-m", f"resume={sweep}", "--config-dir", "conf"])


@pytest.mark.slow  # the same resume as after a SIGKILL; Ctrl-C of one run and its printed command: test_resume.py
def test_ctrl_c_stops_the_sweep_and_prints_the_command_that_resumes_it(workdir, fork_server, dl_run):
    sweep = workdir / "ctrl-c"
    output, code = stop_while_job_3_trains(fork_server, workdir, sweep, signal.SIGINT)
    assert code == 130, output
    command = shlex.split(re.search(r"Resume with:  (dl-run .*)", output).group(1))
    assert command == ["dl-run", f"resume={sweep}", "--config-dir", str(workdir / "conf")]
    assert_resumes(dl_run, workdir, sweep, command[1:])


# Slow: the in-process grid test runs the same per-job decision (job_on_resume); this one adds joblib's workers.
@pytest.mark.slow
def test_a_joblib_sweep_killed_while_job_3_trains_resumes_in_its_workers(workdir, fork_server, dl_run):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = workdir / "joblib"
    launcher = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=1")
    output, code = stop_while_job_3_trains(fork_server, workdir, sweep, signal.SIGKILL, *launcher)
    assert code is None, output
    # The sweep's own launcher, from its record: the jobs run in a joblib worker again.
    out = assert_resumes(dl_run, workdir, sweep, [f"resume={sweep}", "--config-dir", "conf"])
    assert "Joblib.Parallel" in out, out


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_changed_grid_or_new_values_are_refused_naming_them_and_nothing_changes(workdir, dl_run):
    sweep = workdir / "baseline"
    before = tree(sweep)
    changed = dl_run(f"resume={sweep}", "optimizer.lr=0.02,0.005,0.001,0.0005", cwd=workdir)
    assert changed.code == 2 and "Traceback" not in changed.output
    assert "optimizer.lr=0.02,0.005,0.001 -> optimizer.lr=0.02,0.005,0.001,0.0005" in changed.stderr
    added = dl_run(f"resume={sweep}", "seed=0,1,2", "trainer.epochs=5", cwd=workdir)
    assert added.code == 2 and "seed=0,1,2 (not in the sweep); trainer.epochs=3 -> trainer.epochs=5" in added.stderr
    assert "start a new sweep" in added.stderr.replace("\n", " ")
    assert tree(sweep) == before


def test_resume_of_a_folder_that_is_not_a_sweep_says_so_and_changes_nothing(workdir, dl_run, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("not a run\n")
    refused = dl_run("-m", f"resume={folder}", cwd=tmp_path)
    assert refused.code == 2 and "Traceback" not in refused.output
    assert "is neither a dl-run run directory with a checkpoint" in refused.stderr
    assert "nor a sweep's folder" in refused.stderr and "multirun.yaml" in refused.stderr
    assert tree(folder) == {"todo.txt": digest(folder / "todo.txt")} and len(list(tmp_path.iterdir())) == 1
    job = next(iter(jobs_of(workdir / "baseline").values()))  # one run: -m asks for a sweep
    one_run = dl_run("-m", f"resume={job}", cwd=tmp_path)
    assert one_run.code == 2 and "is one run, not a sweep" in one_run.stderr


def test_a_sweep_whose_jobs_another_dl_run_is_running_is_refused(tmp_path, dl_run):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['optimizer.lr=0.1,0.01']\n    hydra: []\n")
    sweep_resume.lock(sweep)  # this test's process holds it, as a running sweep would
    try:
        refused = dl_run(f"resume={sweep}", cwd=tmp_path)
        assert refused.code == 2 and f"another dl-run (process {os.getpid()} on {socket.gethostname()}" in \
            refused.stderr.replace("\n", " ")
        with pytest.raises(ConfigError, match="is running this sweep's jobs"):
            sweep_resume.lock(sweep)
    finally:
        sweep_resume.unlock(sweep)
    assert not (sweep / sweep_resume.LOCK).exists()
    # A lock whose process is gone (killed) is stale: the next one takes it over.
    (sweep / sweep_resume.LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    sweep_resume.lock(sweep)
    assert json.loads((sweep / sweep_resume.LOCK).read_text())["pid"] == os.getpid()
    sweep_resume.unlock(sweep)


def test_a_job_that_failed_on_its_input_stays_failed_unless_asked_to_retry(dl_run, tmp_path):
    tiny = ("model.hidden=[8]", "trainer.epochs=1", "trainer.progress=false", "trainer.device=cpu", "logger=none")
    first = dl_run("-m", "optimizer.lr=0.01,-1", *tiny, "hydra.sweep.dir=sweep")
    assert first.code == 2, first.output
    failed = next((tmp_path / "sweep").glob("1_*/failed.json"))  # kept in the job's folder: the resume reads it
    record = digest(failed)
    kept = dl_run("resume=sweep")
    assert kept.code == 2 and "job 1 (optimizer.lr=-1" in kept.stdout and kept.stdout.count("not run again") == 2
    assert "sweep: 1 finished job(s), 1 failed" in kept.stdout and digest(failed) == record
    retried = dl_run("resume=sweep", "sweep.retry_failed=true")
    assert retried.code == 2 and retried.stdout.count("not run again") == 1  # job 0 only: job 1 ran again
    assert "positive" in retried.stderr and "positive" in json.loads(failed.read_text())["error"]


def test_a_preset_whose_grid_changed_since_the_sweep_is_refused_before_any_job(workdir, dl_run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(workdir / "baseline", sweep)
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    record["hydra"]["sweeper"]["params"] = {"seed": "0,1"}  # as if the preset it ran had swept two seeds
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))
    before = tree(sweep)
    refused = dl_run(f"resume={sweep}", "--config-dir", "conf", cwd=workdir)
    assert refused.code == 2 and "Traceback" not in refused.output
    assert "hydra.sweeper.params: {'seed': '0,1'} -> None" in refused.stderr.replace("\n", " ")
    assert tree(sweep) == before and "job 0" not in refused.stdout
