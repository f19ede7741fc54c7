"""What the user sees in the terminal: the config tree, the model summary, progress, the results."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

if TYPE_CHECKING:  # torch takes seconds to import: an error message must not wait for it
    import torch

    from dlrun.diagnostics.summary import LayerRow

# Piped output (CI logs, subprocess tests) gets a wider page than rich's 80-column default.
console = Console(highlight=False, width=None if Console().is_terminal else 120)


def print_error(message: str) -> None:
    """One paragraph, no traceback, on stderr."""
    # escape: a message is text, never markup (trust_code=[my_code.build] would vanish as a style tag)
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]Error:[/] {escape(message)}", markup=True)


def print_warning(message: str) -> None:
    console.print(f"[bold yellow]Warning:[/] {escape(message)}", soft_wrap=True)


def verdict_panel(verdict) -> None:
    """The loss-curve verdict (course 2 §4.2) with its numbers and the course's remedies."""
    from rich.panel import Panel

    color = "green" if verdict.case == "healthy" else "yellow"
    numbers = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in verdict.numbers.items())
    body = f"{verdict.summary}\n[dim]based on: {numbers}[/]"
    if verdict.remedies:
        body += "\n" + "\n".join(f"- {r}" for r in verdict.remedies)
    console.print(Panel(body, title=f"[bold {color}]curves: {verdict.case}[/]", title_align="left"))


def config_tree(cfg: Mapping[str, Any]) -> None:
    tree = Tree("[bold]config[/]")

    def add(node: Tree, value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            branch = node.add(f"[cyan]{key}[/]")
            for k, v in value.items():
                add(branch, v, k)
        else:
            node.add(f"[cyan]{key}[/]: {value!r}" if isinstance(value, str) else f"[cyan]{key}[/]: {value}")

    for key, value in cfg.items():
        add(tree, value, key)
    console.print(tree)


def model_table(rows: list[LayerRow], total: int, trainable: int, input_shape: tuple[int, ...]) -> None:
    table = Table(title=f"model (input {tuple(input_shape)})", title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape", justify="right")
    table.add_column("parameters", justify="right")
    formulas = any(row.formula for row in rows)
    if formulas:  # conv and pooling layers: the size by the course formula, checked against the measured one
        # a 1-D network's layers give (channels, length): its formula is over the sequence's length
        side = "L" if all(len(row.output_shape) == 2 for row in rows if row.formula) else "W"
        table.add_column(f"{side}_out = ⌊({side}_in - 1 + 2·padding - dilation·(kernel - 1)) / stride + 1⌋  "
                         f"(course 3 §2.1)")
    for row in rows:
        cells = [row.name, row.kind, str(row.output_shape), f"{row.parameters:,}"]
        if formulas:
            cells.append((row.formula or "") + ("" if row.formula_matches else "  [red]≠ measured[/]"))
        table.add_row(*cells)
    table.add_section()
    frozen = f" ({total - trainable:,} frozen)" if trainable != total else ""
    table.add_row("Total", "", "", f"{total:,} parameters{frozen}")
    console.print(table)


class EpochProgress:
    """A progress bar for the current epoch with the live loss, and one line per finished epoch.

    The bar appears only once an epoch has lasted `show_after` seconds. A shorter epoch would be over
    before the bar's first redraw (4 a second), and while a live bar is up each epoch line redraws it:
    for the default experiment's 50 epochs of 25 ms, that drawing added a fifth to the training time.
    """

    def __init__(self, enabled: bool = True, refresh_every: int = 10, show_after: float = 0.5) -> None:
        self.enabled = enabled
        self.refresh_every = refresh_every
        self.show_after = show_after
        self._progress: Progress | None = None
        self._task = None
        self._epoch = ("", 0)  # this epoch's description and number of batches
        self._done, self._epoch_began = 0, 0.0

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        """A new epoch of `batches` batches, `done` of them already (a run resumed mid-epoch)."""
        self._epoch, self._done, self._epoch_began = (f"epoch {epoch}/{epochs}", batches), done, time.perf_counter()
        if self._progress is not None:  # one bar, reset each epoch: drawn by the next refresh
            self._progress.reset(self._task, total=batches, completed=done, description=self._epoch[0], loss="…")

    def advance(self, loss: torch.Tensor, step: int) -> None:
        if not self.enabled:
            return
        self._done += 1
        if step % self.refresh_every:
            if self._progress is not None:
                self._progress.update(self._task, advance=1)
            return
        if self._progress is None:
            if time.perf_counter() - self._epoch_began < self.show_after or not console.is_terminal:
                return
            self._show()
        # Reading the loss value syncs with the device, so it is shown every few steps only.
        self._progress.update(self._task, completed=self._done, loss=f"{loss.item():.4f}")

    def _show(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]}"), console=console, transient=True,
            refresh_per_second=4,  # redrawing costs CPU the training could use; 4 a second reads as smooth
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(self._epoch[0], total=self._epoch[1], completed=self._done, loss="…")

    def end_epoch(self, epoch: int, metrics: Mapping[str, float], is_best: bool) -> None:
        if not self.enabled:
            return
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "lr")
        console.print(f"epoch {epoch:>3}  {shown}{'  [green]*best[/]' if is_best else ''}")


def _fmt(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value)
    return "" if value is None else str(value)


def results_table(results: Mapping[str, Mapping[str, float]], title: str = "results") -> None:
    """Rows are splits (train, val, test), columns are metrics."""
    metrics = list(dict.fromkeys(m for split in results.values() for m in split))
    table = Table(title=title, title_justify="left")
    table.add_column("split" if set(results) <= {"train", "val", "test"} else "run", overflow="fold")
    for metric in metrics:
        table.add_column(metric, justify="right", no_wrap=True)  # numbers and verdicts stay on one line
    for split, values in results.items():
        table.add_row(split, *(_cell(values[m]) if m in values else "" for m in metrics))
    console.print(table)


def profile_table(rows: list[Mapping[str, Any]]) -> None:
    """trainer.profile=true: each phase of the process with its calls, wall and CPU seconds (issue #21)."""
    whole = rows[-1]["wall"] or sum(r["wall"] for r in rows if r["depth"] == 0)
    table = Table(title="where the seconds went (trainer.profile=true)", title_justify="left")
    for name, justify in (("phase", "left"), ("calls", "right"), ("wall s", "right"), ("CPU s", "right"),
                          ("% of wall", "right")):
        table.add_column(name, justify=justify, no_wrap=name != "phase")
    for r in rows:
        share = f"{100 * r['wall'] / whole:.1f}" if whole and r["wall"] is not None else ""
        wall = "" if r["wall"] is None else f"{r['wall']:.3f}"
        table.add_row("  " * r["depth"] + r["phase"], "" if r["calls"] is None else str(r["calls"]), wall,
                      f"{r['cpu']:.3f}", share)
    console.print(table)
