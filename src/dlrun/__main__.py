"""`python -m dlrun ...` runs dl-run: what torchrun starts in each process (torchrun -m dlrun ...)."""

from dlrun import startup_collector

startup_collector.pause()  # as the dl-run script does

from dlrun.cli import main  # noqa: E402

main()
