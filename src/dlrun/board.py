"""`dl-run-board [DIR]`: TensorBoard on a run or sweep directory, bound to this machine only, with its URL printed;
`dl-run-board --mlflow [DIR]`: the MLflow UI on the project's MLflow store (DIR/mlflow.db, default outputs/)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dlrun.views import console


def newest_run(root: Path) -> Path | None:
    """The run or sweep directory under root (e.g. outputs/) whose files changed last."""
    runs = [p.parent for p in root.rglob("tb") if p.is_dir()]
    newest = max(runs, key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None and (newest.parent / "multirun.yaml").is_file():
        return newest.parent  # a job of a sweep: show the whole sweep, its runs side by side
    return newest


def main(argv: list[str] | None = None) -> None:
    """Console script `dl-run-board`."""
    parser = argparse.ArgumentParser(
        prog="dl-run-board", description="Start TensorBoard on dl-run's runs, reachable from this machine only "
        "(from another machine: ssh -L 6006:localhost:6006 <this machine>).")
    parser.add_argument("logdir", nargs="?", default="outputs",
                        help="a run directory, a sweep directory, or outputs/ for every run (the default)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: 6006, or the next free one); 0 picks any free port")
    parser.add_argument("--latest", action="store_true", help="only the newest run or sweep under LOGDIR")
    parser.add_argument("--mlflow", action="store_true", help="the MLflow UI instead, on the MLflow store of LOGDIR "
                        "(outputs/mlflow.db, or the one in or above a run or sweep directory); default port 5000")
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        console.print_error(f"'--port {args.port}': a port is a number from 1 to 65535 (0 picks any free one); "
                            f"TensorBoard's usual one is 6006.")
        sys.exit(2)
    logdir = Path(args.logdir).expanduser()
    if not logdir.is_dir():
        console.print_error(f"'{args.logdir}': no such directory (looked in {logdir.resolve()}). Give a run or sweep "
                            f"directory, or run dl-run-board where outputs/ is.")
        sys.exit(2)
    if args.mlflow:
        sys.exit(mlflow_ui(logdir, args.port))
    if args.latest:
        logdir = newest_run(logdir) or logdir
    from tensorboard import program

    board = program.TensorBoard()
    # localhost only: a training machine's TensorBoard should not be open to its whole network.
    flags = ["dl-run-board", "--logdir", str(logdir.resolve()), "--host", "localhost"]
    if args.port is not None:
        flags += ["--port", str(args.port)]
    try:
        board.configure(argv=flags)
        url = board.launch()
    except Exception as err:  # noqa: BLE001 - a port in use or not allowed: a sentence, not TensorBoard's traceback
        console.print_error(f"TensorBoard could not start on {logdir.resolve()}"
                            f"{f' at port {args.port}' if args.port is not None else ''}: {err}. Give another port "
                            f"with --port N (1 to 65535), or --port 0 for any free one.")
        sys.exit(2)
    console.console.print(f"TensorBoard on {logdir.resolve()}: {url}\n(Ctrl-C stops it)", soft_wrap=True)
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def mlflow_database(folder: Path) -> Path | None:
    """The MLflow store dl-run keeps for folder: folder/mlflow.db, or the nearest one above it (a run's outputs/)."""
    for candidate in (folder.resolve(), *folder.resolve().parents):
        if (candidate / "mlflow.db").is_file():
            return candidate / "mlflow.db"
    return None


def _free_port(preferred: int) -> int:
    """preferred if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def mlflow_ui(folder: Path, port: int | None) -> int:
    """`mlflow ui` on localhost for the store of folder, after marking the runs whose process is gone as KILLED."""
    from importlib.util import find_spec

    from dlrun.loggers.mlflow import INSTALL, Store, mark_gone_runs, open_client, server_problem

    if find_spec("mlflow") is None:
        console.print_error(f"dl-run-board --mlflow needs the mlflow package, which is not installed: {INSTALL}")
        return 2
    database = mlflow_database(folder)
    if database is None:
        console.print_error(f"'{folder}': no mlflow.db there or in a folder above it (looked from {folder.resolve()} "
                            f"up). Runs logged with logger=mlflow keep it in outputs/mlflow.db; give that folder.")
        return 2
    store = Store(f"sqlite:///{database}", database)
    with store.locked():
        marked = mark_gone_runs(open_client(store))  # a run left RUNNING by a killed process shows as KILLED
    if marked:
        console.console.print(f"Marked {len(marked)} run(s) whose process is gone as KILLED.")
    port = _free_port(5000) if port is None else port
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    # SIGTERM ends the UI as Ctrl-C does: its server processes never outlive dl-run-board.
    signal.signal(signal.SIGTERM, _interrupt)
    # MLflow 3's server also starts a job runner (about ten huey worker processes, for GenAI evaluation jobs) that a
    # look at training runs never uses: off, the UI starts in half the time.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ui = subprocess.Popen(command, env=environment, start_new_session=True)  # its own group: its workers end with it
    try:
        console.console.print(f"Starting the MLflow UI on {database} ...")
        while server_problem(url) is not None:  # its URL is printed once it answers, as TensorBoard's is
            if ui.poll() is not None:
                console.print_error(f"The MLflow UI could not start at port {port} (exit code {ui.returncode}; its "
                                    f"output is above). Give another port with --port N, or --port 0 for any free one.")
                return 2
            time.sleep(0.5)
        console.console.print(f"MLflow UI on {database}: {url}\n(Ctrl-C stops it)", soft_wrap=True)
        sys.stdout.flush()
        return ui.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait()

if __name__ == "__main__":
    main()
