"""Run `dl-run` in fresh processes without paying its imports each time.

Importing torch, Hydra, TensorBoard and scikit-learn is most of a tiny run's cost (about 80% of its CPU
time on this machine). The server is one Python process that imports dl-run once and then, for each
command, forks a child: a real, separate process with its own working directory, environment, argv,
stdout/stderr files and exit code, running the same `dlrun.cli:main` the `dl-run` script runs. The
server itself never runs a torch operation, so no thread pool exists when it forks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = r"""
import atexit, json, os, signal, sys, traceback
import dlrun.cli, dlrun.modes, dlrun.run.training  # the expensive imports, once
# What a run imports lazily, also once: torch._dynamo (with sympy; torch.optim imports it when an optimizer is built),
# TensorBoard's writer, matplotlib and torchvision were ~7 of a tiny run's 9 CPU seconds in each child. No threads start.
import matplotlib.pyplot, tensorboard.plugins.hparams.api_pb2, torch._dynamo, torch.utils.tensorboard, torchvision
import gc
gc.freeze()  # as the dl-run script after its start-up: the children's collections skip these million objects
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the server never waits: children report through files
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    def report(code=None):
        # Runs at the child's exit, after threads (a joblib launcher's workers) were shut down as in any process.
        sys.stdout.flush()
        sys.stderr.flush()
        times = os.times()  # the child's CPU time, its own subprocesses included (conftest's --cpu-costs reads it)
        with open(request["status"] + ".cpu", "w") as f:
            f.write(str(times.user + times.system + times.children_user + times.children_system))
        with open(request["status"] + ".tmp", "w") as f:
            f.write(str(report.code))
        os.replace(request["status"] + ".tmp", request["status"])
    report.code = 1
    atexit.register(report)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the child's own subprocesses must be waitable
    os.setsid()  # its own process group: a timeout kills it with everything it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.argv = ["dl-run", *request["args"]]
    try:
        result = dlrun.cli.main()
        report.code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        report.code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        report.code = 1
    # A normal interpreter exit, as the dl-run script has: thread and atexit hooks run, then report() writes.
    sys.exit(report.code)
"""


def child_cpu_seconds(status: Path) -> float:
    """The CPU seconds a child that has exited spent: the server ignores SIGCHLD, so no os.times() counts them."""
    cpu = status.with_name(status.name + ".cpu")
    return float(cpu.read_text()) if cpu.exists() else 0.0


SERVERS: list[ForkServer] = []  # every server this process started (conftest's --cpu-costs sums their children)


class ForkServer:
    """`run(args, cwd, env, timeout)` -> CompletedProcess, like subprocess.run of the `dl-run` script."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.cpu_seconds = 0.0  # of the children run() has waited for, so far
        SERVERS.append(self)
        self.lock = threading.Lock()
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def start(self, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, dict[str, str]]:
        """Start `dl-run ARGS` and return at once: its process id (also its process group's) and its output files
        (stdout, stderr, and status, which holds its exit code once it has exited normally)."""
        with self.lock:
            self.count += 1
            base = self.scratch / f"command{self.count}"
            files = {name: f"{base}.{name}" for name in ("stdout", "stderr", "status")}
            self.proc.stdin.write(json.dumps({"args": list(args), "cwd": str(cwd), "env": env, **files}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the dl-run fork server died")
        return int(line), files

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
            ) -> subprocess.CompletedProcess:
        pid, files = self.start(args, cwd, env)
        status = Path(files["status"])
        deadline = time.monotonic() + timeout
        while not status.exists():
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                raise subprocess.TimeoutExpired(["dl-run", *args], timeout)
            time.sleep(0.02)
        # The child writes its status last, just before it exits; its output files are complete by then.
        self.cpu_seconds += child_cpu_seconds(status)
        return subprocess.CompletedProcess(["dl-run", *args], int(status.read_text()),
                                           Path(files["stdout"]).read_text(), Path(files["stderr"]).read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)  # its interpreter's exit alone took 15-25 s on a loaded 2-core machine
