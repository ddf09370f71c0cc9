"""Look at a report page as a person would: render it in headless Chromium, save a
screenshot, and fail on what they would see broken.

    python tools/check_page.py docs/reports/smollm2.html docs/img/report-smollm2.png

Fails (exit 1, one line per problem) on: a console error or warning from the page's
script, an image that did not load, any request the page makes (it must be
self-contained), a page wider than the window, a table wider than its box (columns a
reader would not see), or a page without figures. Needs
Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``; not run in
CI (the page's structure is unit-tested there, tests/output/test_html.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900, help="window height; the screenshot is the whole page")
    args = ap.parse_args()
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={args.width},{args.height}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=opts)
    problems = []
    try:
        driver.get(Path(args.page).resolve().as_uri())
        logs = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        problems += [f"console {entry['level'].lower()}: {entry['message']}" for entry in logs]
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        problems += [f"image did not load: {src}" for src in broken]
        requests = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        problems += [f"the page requested {r} (it must be self-contained)" for r in requests]
        inner, scroll = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        if scroll > inner:
            problems.append(f"the page is {scroll} px wide in a {inner} px window")
        # every table must fit the box it sits in: a box that scrolls hides columns from a
        # reader who does not scroll it, and from every screenshot and print
        cut = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map((t, i) => "
            "[i, t.scrollWidth, (t.closest('.box') || t.parentElement).clientWidth, "
            "(t.querySelector('th') || {}).textContent || '']).filter(x => x[1] > x[2] + 1)")
        problems += [f"table {i + 1} (first column {head!r}) is {w} px wide in a {box} px box: columns are hidden"
                     for i, w, box, head in cut]
        figures = driver.execute_script("return document.querySelectorAll('figure svg, figure img').length")
        if not figures:
            problems.append("the page has no figure")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, height + 100)
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.png)
    finally:
        driver.quit()
    for p in problems:
        print(f"{args.page}: {p}", file=sys.stderr)
    if not problems:
        print(f"{args.page}: {figures} figure(s), {scroll} px wide in {inner} px, no console message, no request; "
              f"screenshot {args.png}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
