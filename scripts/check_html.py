"""Check the static leaderboard page in a real headless browser: it loads, a column sorts, a filter
filters, and a screenshot is saved to look at.

    python scripts/check_html.py reference/tables/index.html --column 3 --screenshot /tmp/leaderboard.png

Chromium (Debian's ``chromium`` package) loads the page with ``#sort=<column>&dir=asc`` (the page's
own script sorts on load, as a click on the header does), ``--dump-dom`` returns the DOM after the
script ran, and the rows' sort keys are checked to be in order. Exit status 0 when all checks pass.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def browser() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run(url: str, *extra: str, timeout: int = 120) -> str:
    exe = browser()
    if exe is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                             text=True, timeout=timeout)
    if res.returncode:
        raise SystemExit(f"chromium failed ({res.returncode}): {res.stderr[-1500:]}")
    return res.stdout


class Rows(HTMLParser):
    """The first board table's rows: (visible, [data-v of each cell])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[bool, list[str]]] = []
        self.depth_table = 0
        self.done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "board" in (a.get("class") or "") and not self.done:
            self.depth_table = 1
        elif self.depth_table and tag == "tr" and self._in_body:
            self.rows.append(("display: none" not in (a.get("style") or ""), []))
        elif self.depth_table and tag == "tbody":
            self._in_body = True
        elif self.depth_table and tag == "td" and self.rows:
            self.rows[-1][1].append(a.get("data-v", ""))

    _in_body = False

    def handle_endtag(self, tag):
        if tag == "table" and self.depth_table:
            self.depth_table, self.done, self._in_body = 0, True, False


def sorted_rows(dom: str) -> list[tuple[bool, list[str]]]:
    p = Rows()
    p.feed(dom)
    return p.rows


def check(page: Path, column: int, screenshot: Path | None, filter_text: str | None = None) -> list[str]:
    """The problems found (empty: the page sorts and filters)."""
    url = page.resolve().as_uri() + f"#sort={column}&dir=asc"
    dom = run(url, "--dump-dom", "--virtual-time-budget=5000")
    problems = []
    if 'data-ready="1"' not in dom:
        problems.append("the page's script did not run")
    rows = sorted_rows(dom)
    if not rows:
        problems.append("no table rows")
    keys = [r[1][column] for r in rows if len(r[1]) > column and r[1][column] != ""]
    nums = [float(k) for k in keys if re.fullmatch(r"-?[0-9.e+-]+", k)]
    order = nums if len(nums) == len(keys) else keys
    if order != sorted(order):
        problems.append(f"column {column} is not sorted ascending: {order[:6]}")
    if filter_text:
        dom = run(page.resolve().as_uri() + f"#filter={filter_text}", "--dump-dom", "--virtual-time-budget=5000")
        shown = [r for r in sorted_rows(dom) if r[0]]
        if not shown or any(filter_text.lower() not in r[1][0].lower() for r in shown):
            problems.append(f"the filter {filter_text!r} shows rows without it")
    if screenshot is not None:
        run(url, f"--screenshot={screenshot}", "--window-size=1400,1600", "--virtual-time-budget=5000")
        if not screenshot.is_file() or screenshot.stat().st_size < 10_000:
            problems.append("no screenshot was written")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--column", type=int, default=3, help="column index to sort by (0 = method)")
    ap.add_argument("--filter", default="APTQ")
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    problems = check(args.page, args.column, args.screenshot, args.filter)
    for p in problems:
        sys.stderr.write(f"FAIL: {p}\n")
    sys.stdout.write("ok\n" if not problems else "")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
