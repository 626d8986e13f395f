"""Screenshots of ``effscale dashboard`` for the docs (not run in CI).

Starts ``effscale dashboard`` on a study (by default a demo: ``studies/surrogate_compound.toml``
in band mode with objectives AP and MACs, 40 trials, run into a temporary folder in a few
seconds), drives headless Chromium to it and saves PNGs into ``docs/screenshots/``:

* ``pareto_front.png``: the study page with the Pareto front of AP against MACs (the dashboard
  greys out trials whose ``constraints`` are positive; effscale's infeasible trials are pruned
  before scoring, so only feasible ones have values to plot);
* ``trial_list.png``: the trial list with an infeasible trial open, its user attrs
  (``feasible``, ``cost_ratio``, ``infeasible_reason``, ``macs``, ...) showing why;
* ``study_note.png``: the study's note, the study file and the effscale version.

Needs Chromium (Debian: ``apt-get install -y chromium``). It uses Chromium's own
``--headless --screenshot`` with a virtual-time budget for the single-page app to load, so no
WebDriver is needed. Each PNG is checked not to be blank: at least 1% of the page area right
of the sidebar and below the header must be drawn (darker than near-white)::

    python scripts/dashboard_screenshot.py                      # the demo study
    python scripts/dashboard_screenshot.py studies/my.toml --out /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_TRIALS = 40


def demo_study(folder: Path) -> Path:
    """Write and run the demo study in ``folder``; returns its study file."""
    import tomli_w

    from effscale.search.runners.optuna_runner import run_study
    from effscale.search.study_file import load_study_file

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    raw = tomllib.loads((ROOT / "studies" / "surrogate_compound.toml").read_text())
    raw["study"].update(
        name="surrogate-demo",
        n_trials=DEMO_TRIALS,
        objectives=["ap", "macs"],
        storage="journal:///demo.journal",
    )
    raw["constraint"].update(mode="band", tolerance=0.3)
    path = folder / "demo.toml"
    path.write_text(tomli_w.dumps(raw))
    summary = run_study(load_study_file(path), quiet=True)
    print(f"demo study: {summary.n_complete} complete, {summary.n_pruned} pruned (infeasible)")
    return path


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def start_dashboard(study: Path) -> tuple[subprocess.Popen, str]:
    """``effscale dashboard STUDY --port 0`` in a subprocess; returns it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "effscale.search.cli", "dashboard", str(study), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = process.stdout.readline()  # "study 'x' at http://127.0.0.1:PORT/dashboard/ (...)"
    if " at http" not in line:
        process.kill()
        raise SystemExit(f"effscale dashboard did not start: {line}{process.stderr.read()}")
    url = line.split(" at ", 1)[1].split()[0]
    return process, url.rsplit("/dashboard/", 1)[0]


def screenshot(
    chromium: str, url: str, path: Path, *, size: tuple[int, int], budget_ms: int
) -> None:
    """Load ``url`` in headless Chromium and save a PNG of the window to ``path``."""
    with tempfile.TemporaryDirectory(prefix="effscale-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={path}",
                url,
            ],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        content = image.convert("L").crop((80, 80, width, height))  # past sidebar and header
        drawn = sum(content.point(lambda v: 255 if v < 235 else 0).histogram()[255:])
    share = drawn / max(1, content.size[0] * content.size[1])
    if share < 0.01:
        raise SystemExit(
            f"{path} looks blank ({share:.1%} of the page drawn); raise --budget-ms "
            "or check the page in a browser"
        )
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", help="study file (default: run the demo study)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "screenshots"),
        help="folder for the PNGs (default: docs/screenshots)",
    )
    parser.add_argument(
        "--chromium",
        default=shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome"),
        help="the Chromium executable",
    )
    parser.add_argument(
        "--budget-ms",
        type=int,
        default=15000,
        help="virtual time for the page to load and draw (default 15000)",
    )
    args = parser.parse_args(argv)
    if not args.chromium:
        raise SystemExit("chromium not found; apt-get install -y chromium, or give --chromium")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="effscale-demo-") as folder:
        study = Path(args.study).resolve() if args.study else demo_study(Path(folder))
        process, base = start_dashboard(study)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    summaries = _get_json(f"{base}/api/studies")["study_summaries"]
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            study_id = summaries[0]["study_id"]
            detail = _get_json(f"{base}/api/studies/{study_id}")
            infeasible = [
                t["number"] for t in detail["trials"] if any(c > 0 for c in t["constraints"])
            ]
            pages = [
                ("pareto_front.png", f"/dashboard/studies/{study_id}", (1400, 900)),
                ("study_note.png", f"/dashboard/studies/{study_id}/note", (1400, 1000)),
            ]
            shown = infeasible[0] if infeasible else detail["trials"][0]["number"]
            pages.append(
                (
                    "trial_list.png",
                    f"/dashboard/studies/{study_id}/trials?numbers={shown}",
                    (1400, 1350),
                )
            )
            for name, page, size in pages:
                screenshot(
                    args.chromium, base + page, out / name, size=size, budget_ms=args.budget_ms
                )
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
