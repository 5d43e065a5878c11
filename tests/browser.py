"""Headless Chromium for the report tests and screenshots: load a report, read its self-test, take screenshots.

    result = selftest("out/report.html")               # the checks report.js ran (report.html#selftest)
    shots = screenshots("out/report.html", "shots/")    # the top of the page and one PNG per interactive view
    python -m tests.browser out/report.html shots/      # the same from the shell

The report's script, opened as report.html#selftest, drives every view and writes what it checked into
<pre id="vl-selftest">; Chromium's --dump-dom gives us the page after it ran, and its console log (every
console message and uncaught error, on stderr) is returned too.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000")  # fmt: skip


def _chromium(url: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip


def console_messages(stderr: str) -> list[str]:
    """The page's console messages and uncaught errors, from Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def selftest(report: str | Path, width: int = 1280) -> dict:
    """Open `report` with #selftest in a window `width` wide and return what its script checked:
    {"checks", "errors", "layout", "console"}."""
    url = Path(report).absolute().as_uri() + "#selftest"
    proc = _chromium(url, "--dump-dom", f"--window-size={width},1000")
    found = re.findall(r'<pre id="vl-selftest">(\{.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise AssertionError(f"the report's self-test wrote nothing; chromium said: {proc.stderr[-2000:]}")
    result = json.loads(html.unescape(found[-1]))
    result["console"] = console_messages(proc.stderr)
    return result


def screenshots(report: str | Path, out_dir: str | Path, width: int = 1280, top: int = 1000,
                views: tuple[str, ...] = ("vl-scrubber", "vl-heads", "vl-graph", "vl-explorer")) -> dict[str, Path]:
    """PNG screenshots: the first `top` pixels of the page and each interactive view present, cropped from one
    full-page screenshot at `width`."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = selftest(report, width)["layout"]
    full = out / "_page.png"
    height = min(int(layout["page"]) + 20, 30000)
    _chromium(Path(report).absolute().as_uri(), f"--window-size={width},{height}", f"--screenshot={full}")
    page = Image.open(full)
    shots = {"top": out / "top.png"}
    page.crop((0, 0, width, min(top, page.height))).save(shots["top"])
    for v in views:
        if v in layout["at"]:
            y, h = layout["at"][v]
            shots[v] = out / f"{v}.png"
            page.crop((0, max(0, y - 12), width, min(page.height, y + h + 12))).save(shots[v])
    full.unlink()
    return shots


if __name__ == "__main__":
    for name, path in screenshots(sys.argv[1], sys.argv[2]).items():
        print(name, path)
