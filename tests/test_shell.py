"""The shell side: dl-run-board serves a run's TensorBoard on localhost; Hydra's tab completion answers for dl-run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from conftest import DL_RUN

BOARD = str(Path(sys.executable).with_name("dl-run-board"))


def test_board_serves_the_runs_on_localhost_and_prints_the_url(tmp_path):
    run_dir = tmp_path / "outputs" / "2026-01-01" / "12-00-00_1"
    with SummaryWriter(str(run_dir / "tb")) as writer:
        writer.add_scalar("train/loss", 1.0, 1)
    proc = subprocess.Popen([BOARD, "--port", "0", "--latest"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "dl-run-board exited before printing its URL"
            match = re.search(r"(http://localhost:\d+/)", line)
            url = match and match.group(1)
        assert url and str(run_dir) in line
        runs = json.loads(urllib.request.urlopen(url + "data/runs", timeout=30).read())
        assert runs == ["tb"]  # TensorBoard reads the newest run's events
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def complete(line: str) -> list[str]:
    """What bash would offer for TAB at the end of `line`, asked the way Hydra's completion script asks."""
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    out = subprocess.run([DL_RUN, "-sc", "query=bash"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tab_completion_offers_groups_options_and_keys():
    assert "model=mlp" in complete("dl-run model=m") and "model=cnn" not in complete("dl-run model=m")
    assert "trainer.epochs=" in complete("dl-run dataset=digits trainer.ep")
    script = subprocess.run([DL_RUN, "--shell-completion", "install=bash"], capture_output=True, text=True,
                            timeout=60).stdout
    assert "complete -o nospace -o default -F hydra_bash_completion dl-run" in script
