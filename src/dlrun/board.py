"""`dl-run-board [DIR]`: TensorBoard on a run or sweep directory, bound to this machine only, with its URL printed."""

from __future__ import annotations

import argparse
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


if __name__ == "__main__":
    main()
