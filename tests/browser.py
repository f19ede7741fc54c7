"""Headless Chromium for tests that must look at a rendered page: a server on a free localhost port, one page load,
its DOM and a screenshot. No driver and nothing downloaded: Debian's `chromium` package (installed by .ci/run).

    with serve_tensorboard(tmp_path / "outputs") as url:
        dom = render(url, screenshot=tmp_path / "board.png")
    assert texts_of(dom, ".group-title")[1] == "loss"      # ".class" or a tag name, as in CSS
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_binary() -> str:
    """The headless browser's path; the calling test is skipped, with the install command, when there is none."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: `apt-get install -y chromium` (Debian) gives the headless browser")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@contextmanager
def serve(command: list[str], ready_url: str, timeout: float = 90.0,
          ready: Callable[[bytes], bool] = lambda body: True) -> Iterator[subprocess.Popen]:
    """Run a server process until the block ends, once ready_url answers 200 with a body `ready` accepts; its output
    goes to a temporary file, shown if it never gets ready."""
    with tempfile.TemporaryDirectory(prefix="server-") as scratch, open(Path(scratch) / "output.log", "wb") as output:
        log = Path(output.name)
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                body = _answers(ready_url)
                if body is not None and ready(body):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{command[0]} did not answer at {ready_url} within {timeout:.0f} s "
                                         f"(exit code {process.poll()}); its output:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_tensorboard(logdir: Path, timeout: float = 90.0) -> Iterator[str]:
    """TensorBoard on logdir at a free localhost port, yielding its URL once it has found at least one run."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
               "--host", "127.0.0.1", "--reload_interval", "1"]
    url = f"http://127.0.0.1:{port}/"
    with serve(command, url + "data/runs", timeout, ready=lambda body: bool(json.loads(body))):
        yield url


def render(url: str, screenshot: Path | None = None, window: tuple[int, int] = (1400, 1000),
           budget_ms: int = 15000, timeout: float = 120.0) -> str:
    """The page's DOM after one headless load with budget_ms of virtual time for its scripts; a PNG if asked."""
    # Virtual time lets the page's timers and fetches settle without waiting on the wall clock; one process
    # writes both the DOM and the screenshot, so the two show the same load.
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                   f"--virtual-time-budget={budget_ms}", f"--window-size={window[0]},{window[1]}", "--dump-dom"]
        if screenshot is not None:
            command.append(f"--screenshot={screenshot}")
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or "<body" not in done.stdout:
        raise AssertionError(f"chromium could not render {url} (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


class _ElementTexts(HTMLParser):
    """Collects the text inside every element that a selector names: ".class" or a tag name."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"})

    def __init__(self, selector: str) -> None:
        super().__init__(convert_charrefs=True)
        self.selector = selector
        self.found: list[str] = []
        self._open: list[tuple[int, list[str]]] = []  # (depth, text parts) of each matching element still open
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        self._depth += 1
        classes = (dict(attrs).get("class") or "").split()
        if self.selector == tag or (self.selector.startswith(".") and self.selector[1:] in classes):
            self._open.append((self._depth, []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if self._open and self._open[-1][0] == self._depth:
            _, parts = self._open.pop()
            self.found.append(" ".join("".join(parts).split()))
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        for _, parts in self._open:
            parts.append(data)


def texts_of(dom: str, selector: str) -> list[str]:
    """The whitespace-collapsed text of each element that selector (".class" or a tag) names, in the order they close."""
    parser = _ElementTexts(selector)
    parser.feed(dom)
    return parser.found
