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
    """What bash offers for TAB at the end of `line`, once Hydra's completion script for dl-run is installed."""
    words = line.split()
    script = (f'eval "$({DL_RUN} --shell-completion install=bash)"; COMP_LINE="{line}"; COMP_POINT={len(line)}; '
              f'COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; hydra_bash_completion; echo "${{COMPREPLY[@]}}"')
    env = {**os.environ, "PATH": f"{Path(DL_RUN).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tab_completion_offers_options_and_keys():
    assert complete("dl-run model=m") == ["model=mlp"]
    assert "trainer.epochs=" in complete("dl-run dataset=digits trainer.ep")
