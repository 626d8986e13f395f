"""``effscale report`` and :mod:`effscale.search.report`: the plots show exactly the trials of the study
(counts, extremes, the Pareto front, the colours), the Markdown report holds the numbers, and the
output folder is written atomically and never escaped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effscale.search.cli import main
from effscale.search.markdown import code_fence
from effscale.search.output import MARKER, safe_child
from effscale.search.plots import PAPER, plot_ap_vs_macs, plot_coefficients, proxy_macs
from effscale.search.report import render_markdown, write_report
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from effscale.search.trials import best_trial, load_study, pareto_front, trial_coordinates
from tests.search_tests.conftest import STUDIES, SURROGATE_TEST_SETTINGS, edit_study

#: band mode with a wide tolerance: about a third of the random start is feasible
BAND_STUDY = {
    **SURROGATE_TEST_SETTINGS,  # the formula cost, one seed
    "constraint.mode": '"band"',
    "constraint.tolerance": "0.3",
    "study.n_trials": "12",
    "study.objectives": '["ap", "macs"]',
}


def write_band_study(folder: Path, *, storage: str | None = None, n_trials: int = 12) -> Path:
    """A surrogate study (two objectives, band mode) in ``folder``; not run yet."""
    changes = {**BAND_STUDY, "study.n_trials": str(n_trials)}
    if storage is not None:
        changes["study.storage"] = f'"{storage}"'
    path = folder / "band.toml"
    path.write_text(edit_study((STUDIES / "surrogate_compound.toml").read_text(), changes))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 12-trial band study (journal storage): (definition, trials)."""
    path = write_band_study(tmp_path_factory.mktemp("report"), storage="journal:///band.journal")
    definition = load_study_file(path)
    summary = run_study(definition, quiet=True)
    assert summary.n_complete + summary.n_pruned == 12 and summary.n_failed == 0
    trials = load_study(definition).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    infeasible = [t for t in trials if t.user_attrs.get("feasible") is False]
    assert len(complete) >= 3 and len(infeasible) >= 3, "the fixture needs both kinds"
    return definition, trials


def by_gid(figure, gid: str):
    matches = [a for ax in figure.axes for a in ax.get_children() if a.get_gid() == gid]
    assert matches, f"nothing drawn with gid {gid!r}"
    return matches


def test_ap_vs_macs_draws_every_trial_once(finished, tmp_path):
    definition, trials = finished
    data = plot_ap_vs_macs(definition, trials, path=tmp_path / "cost.png")

    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    infeasible = [t for t in trials if t.user_attrs["feasible"] is False]
    assert all(t.state.name == "PRUNED" and t.constraints["cost_ratio"] > 0 for t in infeasible)
    assert data.numbers == tuple(t.number for t in complete)
    assert data.infeasible_numbers == tuple(t.number for t in infeasible)
    assert len(data.numbers) + len(data.infeasible_numbers) == len(trials)
    # the extremes are the trials' own values: AP is objective 0, MACs objective 1
    assert max(data.ap) == max(t.values[0] for t in complete)
    assert min(data.ap) == min(t.values[0] for t in complete)
    assert min(data.macs) == min(t.values[1] for t in complete)
    assert max(data.infeasible_macs) == max(t.user_attrs["macs"] for t in infeasible)
    assert set(data.front) == {t.number for t in pareto_front(trials)}

    # what the figure holds: points at (GMACs, AP), ticks at the infeasible GMACs
    (feasible,) = by_gid(data.figure, "feasible")
    points = feasible.get_offsets()
    assert points.shape == (len(complete), 2)
    np.testing.assert_allclose(points[:, 0], [t.values[1] / 1e9 for t in complete])
    np.testing.assert_allclose(points[:, 1], [t.values[0] for t in complete])
    (ticks,) = by_gid(data.figure, "infeasible")
    np.testing.assert_allclose(
        ticks.get_offsets()[:, 0], [t.user_attrs["macs"] / 1e9 for t in infeasible]
    )
    (front,) = by_gid(data.figure, "front")
    assert len(front.get_offsets()) == len(data.front)
    xlow, xhigh = data.figure.axes[0].get_xlim()  # no tick is clipped away
    assert xlow < min(ticks.get_offsets()[:, 0]) and xhigh > max(ticks.get_offsets()[:, 0])

    # the band: the cost-ratio band [1.4, 2.6] times the proxy's MACs
    base = proxy_macs(definition)
    assert 1e8 < base < 1e10
    assert data.band_macs == pytest.approx((1.4 * base, 2.6 * base))
    assert data.band_exact is False  # formula constraint
    with Image.open(tmp_path / "cost.png") as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_coefficient_maps_colour_each_trial_by_its_ap(finished, tmp_path):
    definition, trials = finished
    data = plot_coefficients(definition, trials, path=tmp_path / "coefficients.png")

    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    assert data.numbers == tuple(t.number for t in complete)
    assert data.alpha == tuple(t.params["alpha"] for t in complete)
    assert data.gamma == tuple(t.params["gamma"] for t in complete)
    assert len(data.infeasible) == len(trials) - len(complete)
    assert data.best == best_trial(trials).number and data.cells == ()
    panels = by_gid(data.figure, "feasible")
    assert len(panels) == 3  # α×β, α×γ, β×γ
    np.testing.assert_allclose(
        panels[0].get_offsets(), [(t.params["alpha"], t.params["beta"]) for t in complete]
    )
    np.testing.assert_allclose(
        panels[2].get_offsets(), [(t.params["beta"], t.params["gamma"]) for t in complete]
    )
    np.testing.assert_allclose(panels[1].get_array(), [t.values[0] for t in complete])
    (crosses, *_) = by_gid(data.figure, "infeasible")
    assert len(crosses.get_offsets()) == len(data.infeasible)


def test_report_command_writes_pngs_and_markdown(finished, tmp_path, capsys):
    definition, trials = finished
    out = tmp_path / "report"
    assert main(["report", str(definition.path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "ap_vs_macs.png",
        "coefficients.png",
        "region.png",
        "report.md",
    ]
    for name in ("ap_vs_macs.png", "coefficients.png", "region.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 300
            assert len(image.convert("RGB").getcolors(1 << 16) or ()) > 50  # not blank
    assert "12 trials" in capsys.readouterr().out

    text = (out / "report.md").read_text()
    best = best_trial(trials)
    c = trial_coordinates(best)
    assert f"found (trial #{best.number})" in text
    assert (
        f"| α (depth) | {c['alpha']:.4f} | {PAPER['alpha']:.4f} | "
        f"{c['alpha'] / PAPER['alpha']:.4f} |" in text
    )
    assert "| BiFPN width growth per φ | 1.3500 | 1.3500 | 1.0000 |" in text
    assert f"| #{best.number} | {c['alpha']:.4f} |" in text and f"{best.values[0]:.4f}" in text
    for heading in (
        "## Best trials",
        "## Objective: AP (maximize)",
        "## Objective: MACs (minimize)",
        "### Pareto front (AP up, MACs down)",
        "## Study file",
    ):
        assert heading in text
    front = text.split("### Pareto front")[1].split("##")[0]
    assert front.count("\n| #") == len(pareto_front(trials))
    assert definition.text.strip() in text
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    assert (
        f"trials: 12 ({complete} complete, {12 - complete} pruned of which "
        f"{12 - complete} infeasible, 0 failed" in text
    )


def test_report_out_is_atomic_and_refuses_non_empty(finished, tmp_path, capsys):
    definition, trials = finished
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["report", str(definition.path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # --overwrite replaces only a report of this study: never the user's folder (issue 15)
    with pytest.raises(ValueError, match="holds no .effscale-output.json"):
        write_report(definition, trials, out=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    mine = tmp_path / "mine"
    write_report(definition, trials, out=mine)
    written = write_report(definition, trials, out=mine, overwrite=True)
    assert sorted(p.name for p in written.files) == [
        MARKER,
        "ap_vs_macs.png",
        "coefficients.png",
        "region.png",
        "report.md",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no temporary folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):  # one output-folder rule for all
        write_report(definition, trials, out=tmp_path / "file")


def test_safe_child_keeps_paths_inside(tmp_path):
    assert safe_child(tmp_path, "plot.png") == tmp_path / "plot.png"
    assert safe_child(tmp_path, "sub/plot.png") == tmp_path / "sub" / "plot.png"
    for bad in ("../x.png", "a/../../x", "/etc/passwd", "", "a//b", "C:\\x", "..\\x"):
        with pytest.raises(ValueError, match="leave|outside"):
            safe_child(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="outside"):
        safe_child(tmp_path, "link/x")
    assert code_fence("a\n```\nb") == "````" and code_fence("plain") == "```"


def test_grid_study_draws_cells_with_the_best_ap(surrogate_study, tmp_path):
    path = surrogate_study(
        {
            "study.sampler": '"grid"',
            "study.n_trials": "9",
            "study.storage": '"journal:///grid.journal"',
            "space.alpha": "{low = 1.0, high = 1.4, step = 0.2}",
            "space.beta": "{low = 1.0, high = 1.2, step = 0.1}",
        }
    )
    definition = load_study_file(path)
    run_study(definition, quiet=True)
    trials = load_study(definition).get_trials(deepcopy=False)
    assert len(trials) == 9
    data = plot_coefficients(definition, trials, path=tmp_path / "grid.png")
    assert data.cells == (("alpha", "beta"),)  # gamma is derived (solve mode): points
    (cells,) = by_gid(data.figure, "cells")
    assert len(by_gid(data.figure, "feasible")) == 2
    grid = np.ma.filled(cells.get_array(), np.nan).reshape(3, 3)  # rows β, columns α
    for t in trials:
        if t.state.name == "COMPLETE":
            row = round((t.params["beta"] - 1.0) / 0.1)
            col = round((t.params["alpha"] - 1.0) / 0.2)
            assert grid[row, col] == pytest.approx(t.values[0])
    assert np.nanmax(grid) == pytest.approx(best_trial(trials).values[0])


def test_empty_study_reports_no_feasible_trial(finished, tmp_path):
    definition, _ = finished
    data = plot_ap_vs_macs(definition, [], path=tmp_path / "empty.png")
    assert data.numbers == () and data.front == () and (tmp_path / "empty.png").stat().st_size
    text = render_markdown(definition, [])
    assert "No feasible trial has completed yet." in text
    assert "| α (depth) | – | 1.2000 | – |" in text


def test_report_of_a_missing_study_names_the_fix(tmp_path, capsys):
    path = write_band_study(tmp_path)
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"effscale search {path}" in err  # pasted, it runs
    assert not (tmp_path / "band.db").exists() and not (tmp_path / "r").exists()


def test_report_states_how_the_last_gpu_run_packed_trials(finished):
    definition, trials = finished
    line = (
        "8 trials per GPU (auto): memory allows 41 (3.2 GiB each of 139.7 GiB), CPU cores "
        "allow 15, cap 8"
    )
    assert f"- packing of the last GPU run: {line}" in render_markdown(
        definition, trials, packing=line
    )
    assert "packing of the last GPU run" not in render_markdown(definition, trials)
