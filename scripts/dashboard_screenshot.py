"""Screenshots of ``effscale dashboard`` for the README (not run in CI).

Starts ``effscale dashboard`` on a study (by default a demo: ``studies/surrogate_compound.toml``
in solve mode with the paper's cost formula, γ derived within bounds that some points miss,
40 trials of three seeds each and a little noise, run into a temporary folder in seconds), drives headless Chromium to it over the DevTools protocol
(:mod:`tests.search_tests.chromium`) and saves PNGs into ``docs/screenshots/``:

* ``trial_list.png``: the trial list, each infeasible trial badged "Infeasible" next to its
  "Pruned" state, with an infeasible trial open: effscale's card (why it is infeasible, MACs,
  cost ratio) above the note, the user attrs in the same order below;
* ``trial_seeds.png``: a feasible trial of the region: AP with its spread and every seed;
* ``study_plots.png``: the study page scrolled to the hyperparameter importance (the derived γ
  among the parameters) and the feasibility figure (cost ratio per trial, infeasible trials
  marked, the feasible band shaded);
* ``study_note.png``: the study's note: the study file and the effscale version.

Each page is shot once what it shows has rendered (the script waits for those elements, not
for a fixed time). Needs Chromium (Debian: ``apt-get install -y chromium``)::

    python scripts/dashboard_screenshot.py                      # the demo study
    python scripts/dashboard_screenshot.py studies/my.toml --out /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.search_tests.chromium import Chromium, Page, find_chromium  # noqa: E402

DEMO_TRIALS = 40
SIZE = (1400, 900)
#: scroll ELEMENT's nearest scrolling ancestor so that ELEMENT starts just below the app bar
SCROLL = """
(element => {
  let box = element.parentElement;
  while (box && !(box.scrollHeight > box.clientHeight
                  && /(auto|scroll)/.test(getComputedStyle(box).overflowY))) {
    box = box.parentElement;
  }
  box = box || document.scrollingElement;
  box.scrollTop += element.getBoundingClientRect().top - 72;
})(ELEMENT)
"""


def demo_study(folder: Path) -> Path:
    """Write and run the demo study in ``folder``; returns its study file."""
    from effscale.search.runners.optuna_runner import run_study
    from effscale.search.study_file import load_study_file
    from tests.search_tests.conftest import STUDIES, edit_study

    text = edit_study(
        (STUDIES / "surrogate_compound.toml").read_text(),
        {
            "study.name": '"surrogate-demo"',
            "study.n_trials": str(DEMO_TRIALS),
            "study.seeds": "[0, 1, 2]",
            "study.storage": '"journal:///demo.journal"',
            "objective.surrogate.noise": "0.005",
            # the formula's derived gamma leaves these bounds for some (alpha, beta): the demo
            # has infeasible trials to show
            "constraint.kind": '"formula"',
            "space.alpha": "{low = 1.0, high = 1.6}",
            "space.beta": "{low = 1.0, high = 1.4}",
            "space.gamma": "{low = 1.0, high = 1.3}",
        },
    )
    path = folder / "demo.toml"
    path.write_text(text)
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
    base = url.rsplit("/dashboard/", 1)[0]
    deadline = time.monotonic() + 30
    while True:
        try:
            _get_json(f"{base}/api/studies")
            return process, base
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def shoot(page: Page, path: Path, *, ready: str, what: str, scroll_to: str | None = None) -> None:
    """Wait until the JavaScript ``ready`` is truthy, scroll the element that the JavaScript
    ``scroll_to`` gives to the top, let plotly finish drawing and save the viewport to
    ``path``."""
    page.wait_for(f"!!({ready})", timeout=60, what=what)
    if scroll_to is not None:
        page.evaluate(SCROLL.replace("ELEMENT", scroll_to))
    time.sleep(1.0)  # plotly's transitions; the content itself has rendered already
    page.screenshot(path)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"wrote {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", help="study file (default: run the demo study)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "screenshots"),
        help="folder for the PNGs (default: docs/screenshots)",
    )
    parser.add_argument("--chromium", default=find_chromium(), help="the Chromium executable")
    args = parser.parse_args(argv)
    if not args.chromium:
        raise SystemExit("chromium not found; apt-get install -y chromium, or give --chromium")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="effscale-demo-") as folder:
        study = Path(args.study).resolve() if args.study else demo_study(Path(folder))
        process, base = start_dashboard(study)
        try:
            study_id = _get_json(f"{base}/api/studies")["study_summaries"][0]["study_id"]
            summary = _get_json(f"{base}/effscale/api/studies/{study_id}/summary")["trials"]
            infeasible = [t["number"] for t in summary if t["feasible"] is False]
            in_region = [
                t["number"] for t in summary if any(b["label"] == "In region" for b in t["badges"])
            ]
            feasible = [t["number"] for t in summary if t["feasible"]]
            trials = f"{base}/dashboard/studies/{study_id}/trials?numbers="
            card = "document.querySelector('.effscale-summary[data-number=\"{}\"]')"
            with Chromium(args.chromium) as browser:
                if infeasible:
                    page = browser.page(f"{trials}{infeasible[0]}", width=SIZE[0], height=SIZE[1])
                    shoot(
                        page,
                        out / "trial_list.png",
                        ready=card.format(infeasible[0])
                        + " && document.querySelector('.effscale-badges')",
                        what="the infeasible trial's card and the list's badges",
                    )
                    page.close()
                shown = (in_region or feasible)[:1]
                if shown:
                    page = browser.page(f"{trials}{shown[0]}", width=SIZE[0], height=SIZE[1])
                    shoot(
                        page,
                        out / "trial_seeds.png",
                        ready=card.format(shown[0]),
                        what="the feasible trial's card",
                    )
                    page.close()
                page = browser.page(
                    f"{base}/dashboard/studies/{study_id}", width=SIZE[0], height=1120
                )
                figure = "document.getElementById('user-defined-plot:effscale-feasibility')"
                shoot(
                    page,
                    out / "study_plots.png",
                    ready=f"{figure} && {figure}.querySelectorAll('.point').length > 0"
                    " && [...document.querySelectorAll('h6')]"
                    ".some(h => h.textContent === 'Hyperparameter Importance')"
                    " && document.querySelectorAll('.js-plotly-plot').length >= 4",
                    what="the importance plot and the feasibility figure",
                    scroll_to="[...document.querySelectorAll('h6')]"
                    ".find(h => h.textContent === 'Hyperparameter Importance')"
                    ".closest('.MuiCard-root')",
                )
                page.close()
                page = browser.page(
                    f"{base}/dashboard/studies/{study_id}/note", width=SIZE[0], height=1000
                )
                shoot(
                    page,
                    out / "study_note.png",
                    ready="document.body && document.body.innerText.includes('Made by effscale')",
                    what="the study note",
                )
                page.close()
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
