"""``effscale validate``: single-axis scalings solved to the found model's MACs, the Spearman
fidelity, one-line errors, and a real tiny validation run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from effscale.detector.complexity import count_complexity
from effscale.detector.config import config_from_dict, from_scaling
from effscale.search.cli import main
from effscale.search.family import build_configs, family_spec
from effscale.search.output import MARKER
from effscale.search.runners.optuna_runner import run_study
from effscale.search.space import CandidatePoint
from effscale.search.study_file import load_study_file
from effscale.search.trials import top_trials
from effscale.search.validate import (
    MATCH_TOLERANCE,
    matched_variants,
    method_builder,
    paper_point,
    spearman,
)
from tests.search_tests.conftest import STUDIES, edit_study
from tests.search_tests.test_export import PNG_MAGIC, _trials, finished_training_study

FOUND = CandidatePoint(
    alpha=1.3, beta=1.05, gamma=1.26, width_growth=1.35, depth_step=1.0, fusion="fastattn"
)


def _base():
    """The quickstart's proxy base pinned at 96 px, so these figures do not follow the study."""
    return dataclasses.replace(load_study_file(STUDIES / "quickstart.toml").base, resolution=96)


def _dims(config):
    return (
        config.image_size[0],
        config.backbone.width_multiplier,
        config.backbone.depth_multiplier,
        config.fpn.channels,
        config.fpn.repeats,
        config.head.repeats,
    )


def test_each_method_scales_one_axis_to_the_found_cost():
    base = _base()  # D0 at phi = -4, 96 px
    proxy = build_configs(base, FOUND, num_classes=6)[0]
    assert _dims(proxy) == (96, 0.683, 0.4823, 24, 1, 1)
    variants = {v.method: v for v in matched_variants(base, FOUND, 2.0, num_classes=6)}
    assert list(variants) == ["found", "paper", "width", "depth", "resolution"]
    found = variants["found"]
    assert _dims(found.config) == (152, 0.753, 0.8151, 40, 3, 1)
    assert found.macs == found.target_macs == count_complexity(found.config).macs
    assert found.macs / 1e9 == pytest.approx(0.1345, abs=1e-4)
    width, depth, res = variants["width"], variants["depth"], variants["resolution"]
    assert _dims(width.config) == (96, 1.8124, 0.4823, 64, 1, 1)  # widths only
    assert _dims(depth.config) == (96, 0.683, 3.2501, 24, 7, 1)  # depths only
    assert _dims(res.config) == (216, 0.683, 0.4823, 24, 1, 1)  # resolution only
    for v in (width, depth, res):
        assert v.matched and abs(v.ratio - 1) <= MATCH_TOLERANCE, (v.method, v.ratio)
    assert (width.ratio, depth.ratio, res.ratio) == pytest.approx((0.998, 1.003, 0.990), abs=1e-3)
    # with sides on a multiple of 8 the paper's constants match too (at 32 px steps they
    # jumped from 128 to 160 px between phi' = 2.90 and 2.91 and missed the band)
    paper = variants["paper"]
    assert paper.coefficient == "phi" and paper.value == pytest.approx(2.422, abs=1e-3)
    assert paper.matched and paper.ratio == pytest.approx(1.030, abs=1e-3)
    assert paper.config == method_builder(base, "paper", 2.0, found=FOUND, num_classes=6)(
        paper.value
    )
    assert _dims(paper.config)[:1] == (136,)


def test_solved_values_are_the_closest_legal_costs():
    base = _base()
    for v in matched_variants(base, FOUND, 2.0, num_classes=6)[1:]:
        build = method_builder(base, v.method, 2.0, found=FOUND, num_classes=6)
        error = abs(math.log(v.ratio))
        for nearby in (v.value * (1 - 1e-9), v.value * (1 + 1e-9), v.value - 0.05, v.value + 0.05):
            other = count_complexity(build(nearby)).macs / v.target_macs
            assert abs(math.log(other)) >= error - 1e-12, (v.method, nearby, other, v.ratio)


def test_depth_only_scaling_saturates_at_the_legal_limit():
    # phi = 3 from a 1-cell BiFPN needs more than 4 cells per phi (BifpnRule's limit)
    base = _base()
    depth = matched_variants(base, FOUND, 3.0, num_classes=6, methods=("depth",))[0]
    assert not depth.matched and depth.ratio == pytest.approx(0.776, abs=1e-3)
    assert depth.config.fpn.repeats == 13  # 1 + 3 * 4


def test_the_shipped_validation_study_parses():
    d = load_study_file(STUDIES / "validate_scaling.toml")
    assert (d.study.name, d.constraint.kind, d.constraint.mode) == (
        "validate-scaling",
        "measured",
        "solve",
    )
    assert d.objective.kind == "train" and d.data.generate.num_classes == 8
    proxy = build_configs(d.base, FOUND, num_classes=8)[0]
    assert _dims(proxy) == (256, 0.8264, 0.6944, 32, 1, 2)


def test_paper_point():
    assert paper_point("sum") == CandidatePoint(
        alpha=1.2, beta=1.1, gamma=1.15, width_growth=1.35, depth_step=1.0, fusion="sum"
    )


def test_spearman():
    assert spearman([0.1, 0.2, 0.3], [0.3, 0.2, 0.1])[0] == pytest.approx(-1.0)
    rho, p = spearman([0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4])
    assert rho == pytest.approx(0.8) and p == pytest.approx(0.2, abs=1e-9)
    assert spearman([0.1], [0.2]) == (None, None)
    assert spearman([0.1, 0.2], [0.3, 0.3]) == (None, None)
    assert spearman([0.1, 0.2, 0.3], [0.3, None, 0.1])[0] == pytest.approx(-1.0)


# --------------------------------------------------------------------------- command errors


def _study_with_data(folder: Path, n_trials: int = 6) -> Path:
    """The surrogate study plus [data] and [train] (allowed with a surrogate objective), so that
    its trials are instant but validate has a training set-up; 6 trials run."""
    folder.mkdir(parents=True, exist_ok=True)
    text = edit_study(
        (STUDIES / "surrogate_compound.toml").read_text(),
        {
            "study.storage": '"journal:///study.journal"',
            "study.n_trials": str(n_trials),
            "base.phi_proxy": "-4",
            "base.resolution": "64",
            "base.num_classes": "2",
        },
    )
    text += (
        '\n[train]\nsteps = 1\nbatch_size = 4\ndevice = "cpu"\n\n[data]\n'
        "generate = {train = 8, val = 4, image_size = 64, num_classes = 2}\n"
    )
    path = folder / "study.toml"
    path.write_text(text)
    run_study(load_study_file(path), quiet=True)
    return path


@pytest.fixture(scope="module")
def study_with_data(tmp_path_factory) -> Path:
    return _study_with_data(tmp_path_factory.mktemp("validate"))


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_top_trials_are_the_best_feasible_complete(study_with_data):
    trials = _trials(study_with_data)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    ranked = top_trials(trials, 3)
    assert [t.number for t in ranked] == [t.number for t in sorted(done, key=lambda t: -t.value)][
        :3
    ]
    assert all(t.user_attrs["feasible"] for t in ranked)


def test_bad_input_is_one_line_and_writes_nothing(study_with_data, tmp_path, capsys):
    trials = _trials(study_with_data)
    infeasible = [t.number for t in trials if t.user_attrs.get("feasible") is False]
    out = tmp_path / "out"
    cases = [
        (["--trial", "99"], "has no trial 99"),
        (["--phi", "1"], "--phi: must be in (1, 8]"),
        (["--top-k", "2", "--phi", "2", "--trial", str(infeasible[0])], "is infeasible")
        if infeasible
        else (["--phi", "9"], "--phi: must be in (1, 8]"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["validate", str(study_with_data), *args, "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith("effscale validate: error: ") and message in line, line
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(study_with_data), "--methods", "found,bogus"])
    assert exit_info.value.code == 2
    assert "invalid method 'bogus'" in _one_line(capsys)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    assert main(["validate", str(study_with_data), "--out", str(taken)]) == 2
    assert "exists and is not empty; pass --overwrite" in _one_line(capsys)


def test_a_study_without_data_cannot_be_validated(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text((STUDIES / "surrogate_compound.toml").read_text())
    assert main(["validate", str(path)]) == 2
    assert "has no [data] section, and validate trains models" in _one_line(capsys)


# ------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_validate_trains_every_method_and_writes_table_and_plot(tmp_path_factory, tmp_path):
    path = finished_training_study(tmp_path_factory)
    out = tmp_path / "validation"
    assert (
        main(["validate", str(path), "--phi", "2", "--top-k", "3", "--out", str(out), "--quiet"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "fidelity.csv",
        "validation.csv",
        "validation.json",
        "validation.md",
        "validation.png",
    ]
    rows = list(csv.DictReader((out / "validation.csv").read_text().splitlines()))
    assert [r["method"] for r in rows] == ["found", "paper", "width", "depth", "resolution"]
    for r in rows:
        assert 0.0 <= float(r["ap"]) <= 1.0 and float(r["gmacs"]) > 0
    summary = json.loads((out / "validation.json").read_text())
    d = load_study_file(path)
    trials = _trials(path)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert summary["trial_number"] == best.number
    found = family_spec(
        d.base,
        CandidatePoint(
            alpha=best.params["alpha"],
            beta=best.params["beta"],
            gamma=best.user_attrs["gamma"],
            width_growth=1.35,
            depth_step=1.0,
            fusion="fastattn",
        ),
    )
    found_config = from_scaling(found, 2, num_classes=2, name="found-phi2")
    assert summary["target_macs"] == count_complexity(found_config).macs
    assert summary["configs"]["found"] == found_config.to_dict()
    fidelity = list(csv.DictReader((out / "fidelity.csv").read_text().splitlines()))
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    assert [int(r["trial"]) for r in fidelity] == [t.number for t in complete][:3]
    assert fidelity[0]["ap"] == rows[0]["ap"]  # the best trial's model is the found one
    rho = summary["fidelity"]["spearman_rho"]
    assert rho is None or -1.0 <= rho <= 1.0
    assert (out / "validation.png").read_bytes()[:8] == PNG_MAGIC
    assert "Spearman ρ" in (out / "validation.md").read_text()
    assert config_from_dict(summary["configs"]["width"]).name == "width-phi2"
