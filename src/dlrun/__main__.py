"""`python -m dlrun ...` runs dl-run: what torchrun starts in each process (torchrun -m dlrun ...)."""

from dlrun.cli import main

main()
