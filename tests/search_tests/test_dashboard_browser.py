"""``effscale dashboard`` in a real headless Chromium (Debian's ``chromium``, driven over the
DevTools protocol by :mod:`tests.search_tests.chromium`): the rendered page, not only the API.

On a solve-mode surrogate study with three seeds per point it checks that every infeasible trial
carries an "Infeasible" badge in the trial list (and no feasible one does), that a trial's
feasibility, MACs, cost ratio and AP with its seeds are on screen without scrolling, that the
feasibility figure plots the infeasible trials, and that the derived γ is a plotted parameter.

Chromium: ``EFFSCALE_TEST_CHROMIUM`` (``.ci/run`` installs Debian's package and sets it, unless
``EFFSCALE_CI_SKIP_CHROMIUM=1``) or ``chromium`` on ``PATH``. Without one the tests skip, except
under CI (``CI`` set), where they fail; so does an ``EFFSCALE_TEST_CHROMIUM`` that is not an
executable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from effscale.search.trials import is_feasible, load_study
from tests.search_tests.chromium import Chromium, find_chromium
from tests.search_tests.conftest import STUDIES, edit_study
from tests.search_tests.test_dashboard import first_line, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def chromium_or_skip() -> str:
    """The Chromium to use; skips when there is none outside CI, fails inside it."""
    given = os.environ.get("EFFSCALE_TEST_CHROMIUM")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"EFFSCALE_TEST_CHROMIUM={given} is not an executable")
        return given
    found = find_chromium()
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("no chromium under CI: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("no chromium on PATH (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def served(surrogate_study_module):
    """A finished solve-mode study with three seeds, served by ``effscale dashboard``:
    (base URL, trials)."""
    path = surrogate_study_module
    definition = load_study_file(path)
    run_study(definition, quiet=True)
    trials = load_study(definition).get_trials(deepcopy=False)
    assert {is_feasible(t) for t in trials} == {True, False}, "the study needs both kinds"
    process = subprocess.Popen(
        [sys.executable, "-m", "effscale.search.cli", "dashboard", str(path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = first_line(process, timeout=90)
        assert "http://127.0.0.1:" in line, line + process.stderr.read()
        base = line.split(" at ", 1)[1].split("/dashboard/")[0]
        wait_for(f"{base}/api/studies")
        yield base, trials
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stdout.close()
        process.stderr.close()


@pytest.fixture(scope="module")
def surrogate_study_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    text = edit_study(
        (STUDIES / "surrogate_compound.toml").read_text(),
        {
            "study.n_trials": "12",
            "study.seeds": "[0, 1, 2]",
            "study.storage": '"journal:///browser.journal"',
            "objective.surrogate.noise": "0.005",
            # the formula's derived gamma leaves these bounds for many (alpha, beta): the
            # study has infeasible trials to show
            "constraint.kind": '"formula"',
            "space.alpha": "{low = 1.0, high = 1.6}",
            "space.beta": "{low = 1.0, high = 1.4}",
            "space.gamma": "{low = 1.0, high = 1.25}",
        },
    )
    path = folder / "browser.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def browser():
    with Chromium(chromium_or_skip()) as chromium:
        yield chromium


#: the list items of the trial list: [number, [chip labels], [effscale badge labels]]
LIST_ITEMS = """
[...document.querySelectorAll('.MuiListItemText-primary')]
  .filter(p => /^Trial \\d+$/.test(p.textContent))
  .map(p => {
    const item = p.closest('.MuiListItemButton-root');
    return [Number(p.textContent.slice(6)),
            [...item.querySelectorAll('.MuiChip-label')].map(c => c.textContent),
            [...item.querySelectorAll('.effscale-badge')].map(c => c.textContent)];
  })
"""

#: the trial page's effscale card: its text, whether it lies inside the window, the scroll
CARD = """
(() => {
  const card = document.querySelector('.effscale-summary');
  if (!card) return null;
  const box = card.getBoundingClientRect();
  return {number: Number(card.dataset.number), text: card.innerText,
          inView: box.top >= 0 && box.bottom <= window.innerHeight && box.height > 0,
          scrollY: window.scrollY};
})()
"""

#: the "User Attributes" row: its lines, and which of them show inside its scroll box
USER_ATTRS = """
(() => {
  const label = [...document.querySelectorAll('p, span, div')]
    .find(e => e.childElementCount === 0 && e.textContent === 'User Attributes');
  if (!label) return null;
  const box = label.nextElementSibling;
  const frame = box.getBoundingClientRect();
  return [...box.firstElementChild.children].map(line => {
    const r = line.getBoundingClientRect();
    return [line.textContent, r.bottom <= Math.min(frame.bottom, window.innerHeight) + 1];
  });
})()
"""


def trial_page(browser, base, study_id, number):
    page = browser.page(f"{base}/dashboard/studies/{study_id}/trials?numbers={number}")
    card = page.wait_for(
        f"(() => {{ const c = {CARD.strip()}; return c && c.number === {number} ? c : null; }})()",
        what=f"the effscale card of trial {number}",
    )
    return page, card


def test_trial_list_and_page_show_feasibility_cost_and_seeds(served, browser):
    base, trials = served
    infeasible = sorted(t.number for t in trials if not is_feasible(t))
    by_number = {t.number: t for t in trials}

    page, card = trial_page(browser, base, 0, infeasible[0])
    items = page.wait_for(
        f"(() => {{ const i = {LIST_ITEMS.strip()}; "
        "return i.some(x => x[2].length) ? i : null; })()",
        what="badges in the trial list",
    )
    assert sorted(n for n, _, _ in items) == sorted(by_number)  # all twelve are listed
    for number, chips, badges in items:
        assert ("Infeasible" in badges) == (number in infeasible), (number, chips, badges)
        if number in infeasible:
            assert chips[0] == "Pruned"  # Optuna's state stays as stored, the badge is added

    # the infeasible trial's page: why, MACs and cost ratio, on screen without scrolling
    trial = by_number[infeasible[0]]
    assert card["inView"] and card["scrollY"] == 0
    assert "Infeasible" in card["text"]
    assert trial.user_attrs["infeasible_reason"] in card["text"]
    assert f"{trial.user_attrs['macs'] / 1e9:.3f} GMACs" in card["text"]
    assert f"cost ratio {trial.user_attrs['cost_ratio']:.4f}" in card["text"]
    lines = page.evaluate(USER_ATTRS)
    assert [text.split(" ", 1)[0] for text, _ in lines[:4]] == [
        "feasible",
        "infeasible_reason",
        "macs",
        "cost_ratio",
    ]
    assert all(visible for _, visible in lines[:4]) and lines[0][0] == "feasible False"
    params = page.evaluate("document.body.innerText")
    assert f"gamma {trial.user_attrs['gamma']}" in params  # the derived γ, as a parameter
    page.close()

    # a feasible trial: AP with its three seeds
    best = max(
        (t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.user_attrs["ap_mean"]
    )
    page, card = trial_page(browser, base, 0, best.number)
    assert card["inView"] and card["scrollY"] == 0 and "Infeasible" not in card["text"]
    attrs = best.user_attrs
    assert f"AP {attrs['ap_mean']:.4f} ± {attrs['ap_std']:.4f}" in card["text"]
    assert "over 3 seeds" in card["text"]
    low, high = attrs["ap_ci95"]
    assert f"95% CI [{low:.4f}, {high:.4f}]" in card["text"]
    for seed, ap in zip(attrs["seeds"], attrs["ap_per_seed"]):
        assert f"seed {seed}: {ap:.4f}" in card["text"]
    assert f"cost ratio {attrs['cost_ratio']:.4f}" in card["text"]
    page.close()


def test_plots_show_infeasible_trials_and_the_derived_gamma(served, browser):
    base, trials = served
    infeasible = sorted(t.number for t in trials if not is_feasible(t))
    feasible = sorted(t.number for t in trials if is_feasible(t))

    page = browser.page(f"{base}/dashboard/studies/0", height=1400)
    traces = page.wait_for(
        "(() => { const p = document.getElementById('user-defined-plot:effscale-feasibility');"
        " return p && p.data ? p.data.map(t => [t.name, t.x, t.y]) : null; })()",
        what="the feasibility figure",
    )
    shown = {name: (x, y) for name, x, y in traces}
    assert shown["infeasible (pruned before scoring)"][0] == infeasible
    assert shown["feasible"][0] == feasible
    ratios = {t.number: t.user_attrs["cost_ratio"] for t in trials}
    assert shown["infeasible (pruned before scoring)"][1] == [ratios[n] for n in infeasible]
    drawn = page.evaluate(
        "document.getElementById('user-defined-plot:effscale-feasibility')"
        ".querySelectorAll('.scatterlayer .point').length"
    )
    assert drawn == len(trials)  # every marker is drawn, not only listed
    page.close()

    # the slice plot, switched to the derived γ in its "Parameter" menu, plots every scored
    # trial at its stored γ
    page = browser.page(f"{base}/dashboard/studies/0/analytics", height=1400)
    page.wait_for(
        "(() => { const s = [...document.querySelectorAll('[role=combobox]')]"
        ".find(e => e.textContent === 'Param alpha'); if (!s) return false;"
        " s.dispatchEvent(new MouseEvent('mousedown', {bubbles: true})); return true; })()",
        what="the slice plot's parameter menu",
    )
    page.wait_for(
        "(() => { const o = [...document.querySelectorAll('li[role=option]')]"
        ".find(e => e.textContent === 'Param gamma'); if (!o) return false;"
        " o.click(); return true; })()",
        what="gamma among the slice plot's parameters",
    )
    plotted = page.wait_for(
        "(() => { const p = document.getElementById('plot-slice');"
        " const x = p && p.layout && p.layout.xaxis.title.text === 'Param gamma' && p.data"
        " ? p.data.flatMap(t => t.x || []) : []; return x.length ? x : null; })()",
        what="the slice plot over gamma",
    )
    scored = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(plotted) == sorted(t.user_attrs["gamma"] for t in scored)
    page.close()
