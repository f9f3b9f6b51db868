"""How the web page feels, measured in one run on this machine (not a test).

``grata-segmenter web`` is started as a user starts it and driven in Debian's
headless chromium by Playwright, on a 512 x 512 sample:

* server start to listening (the announced address), and its memory then;
* page open to the first frame of the slice view (the view's first picture);
* mouse-up of a paint stroke to the next frame of the view, and to the updated
  voxel count in the panel (median of several strokes);
* the run: click on Adapt & Segment to the segments shown, against the same
  command line run on its own (``grata-segmenter adapt``, same steps and seed);
* the server's memory after the run, and whether torch was ever loaded into it
  (it must not be: the engine runs in its own process).

    .venv/bin/python benchmarks/web_page.py --steps 5 --strokes 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples" / "phantom_B_0.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_src(page) -> str:
    return page.locator(".remote-controlled-area img.image-display-area").first.get_attribute("src") or ""


def wait_new_frame(page, old: str, timeout: float = 10.0) -> float:
    start = time.perf_counter()
    page.wait_for_function(
        "old => { const i = document.querySelector('.remote-controlled-area img.image-display-area');"
        " return i && i.getAttribute('src') && i.getAttribute('src') !== old; }", arg=old, timeout=timeout * 1000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--strokes", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "web_page_cpu"))
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="grata-web-bench-"))
    shutil.copy(SAMPLE, data / "eye.png")
    port = free_port()
    results: dict = {"machine": f"{os.cpu_count()} CPUs", "image": "512 x 512 RGB", "steps": args.steps}

    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "GraTaSegmenterLib.cli", "web", "--port", str(port),
                               "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    url = None
    while url is None:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("the server ended before listening")
        match = re.search(r"is at (http://\S+/)", line)
        url = match.group(1) if match else None
    results["server_start_to_listening_s"] = time.perf_counter() - t0
    results["server_rss_idle_mib"] = rss_mib(server.pid)
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-"),
                                                           executable_path="/usr/bin/chromium", args=FLAGS,
                                                           headless=True, viewport={"width": 1400, "height": 850})
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector(".remote-controlled-area img.image-display-area[src]", timeout=60_000)
            results["page_open_to_first_frame_s"] = time.perf_counter() - t0

            page.locator(".v-field", has=page.locator("#grata-data-select")).click()
            page.get_by_role("option", name="eye.png", exact=True).click()
            page.locator("#grata-open").click()
            page.wait_for_selector("#grata-message:has-text('Opened eye.png')")
            page.get_by_text("Adaptation settings").click()
            page.locator("#grata-steps").fill(str(args.steps))
            page.get_by_text("Adaptation settings").click()
            t0 = time.perf_counter()
            page.locator("#grata-adapt").click()
            page.wait_for_selector("#grata-segments", timeout=600_000)
            results["page_run_click_to_segments_s"] = time.perf_counter() - t0
            results["server_rss_after_run_mib"] = rss_mib(server.pid)

            page.locator("button:has(.mdi-brush)").first.click()
            box = page.locator(".remote-controlled-area").first.bounding_box()
            side = min(box["width"], box["height"])
            left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
            to_frame, to_count = [], []
            for i in range(args.strokes):
                x, y = left + (0.1 + 0.1 * i) * side, top + 0.12 * side
                count = page.locator(".grata-voxels").first.inner_text()
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x + 0.02 * side, y, steps=4)
                time.sleep(0.5)  # the brush's own frames settle
                old = frame_src(page)
                t0 = time.perf_counter()
                page.mouse.up()
                to_frame.append(wait_new_frame(page, old))
                page.wait_for_function("c => document.querySelector('.grata-voxels').innerText !== c", arg=count)
                to_count.append(time.perf_counter() - t0)
            results["paint_mouse_up_to_frame_s_median"] = statistics.median(to_frame)
            results["paint_mouse_up_to_count_s_median"] = statistics.median(to_count)
            results["paint_strokes"] = args.strokes
            context.close()
        results["torch_loaded_in_server"] = torch_loaded(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    out = Path(tempfile.mkdtemp(prefix="grata-cli-bench-"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "GraTaSegmenterLib.cli", "adapt", str(data / "eye.png"), "-o", str(out),
                    "--steps", str(args.steps)], check=True, capture_output=True)
    results["cli_run_s"] = time.perf_counter() - t0
    results["page_run_over_cli"] = results["page_run_click_to_segments_s"] / results["cli_run_s"]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(results, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items())
    Path(args.out + ".md").write_text("| measure | value |\n| --- | --- |\n" + rows + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
