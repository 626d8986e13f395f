"""Study files: the shipped studies parse; every mistake is one line naming the key and the fix;
a malformed file creates no study."""

from __future__ import annotations

from pathlib import Path

import pytest

from effscale.search.cli import main
from effscale.search.space import Choices, Fixed, Range
from effscale.search.study_file import StudyFileError, load_study_file, parse_study_text
from tests.search_tests.conftest import STUDIES, as_training, drop_section, edit_study

SURROGATE = (STUDIES / "surrogate_compound.toml").read_text()


@pytest.mark.parametrize(
    "name", ["quickstart", "surrogate_compound", "efficientnet_compound", "bifpn_width"]
)
def test_shipped_studies_parse(name):
    d = load_study_file(STUDIES / f"{name}.toml")
    assert d.path == (STUDIES / f"{name}.toml").resolve()
    assert d.storage_url == f"sqlite:///{name}.db"
    assert d.target_trials() >= 6


def test_surrogate_study_values():
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    assert (d.study.sampler, d.study.n_trials, d.study.seed) == ("tpe", 60, 0)
    assert d.space.alpha == Range(1.0, 1.45) and d.space.beta == Range(1.0, 1.25)
    assert d.space.gamma == Range(1.0, 1.6) and d.space.width_growth == Fixed(1.35)
    assert (d.constraint.mode, d.constraint.kind, d.constraint.target) == ("solve", "measured", 2.0)
    assert d.study.seeds == (0, 1, 2)
    assert d.objective.surrogate.c == (0.0732, 0.0909, 0.1158)
    assert d.objective.surrogate.p == (2.0, 3.0, 2.5)
    assert d.directions == ("maximize",)


def test_quickstart_trains_on_generated_data():
    d = load_study_file(STUDIES / "quickstart.toml")
    assert d.objective.kind == "train" and d.train.steps == 30 and d.train.device == "cpu"
    assert d.train.seconds is None and d.constraint.kind == "measured" and d.study.seeds == (0, 1)
    g = d.data.generate
    assert (g.train, g.val, g.image_size, g.num_classes) == (160, 40, 128, 2)
    assert d.base.phi_proxy == -4 and d.base.resolution == 128


def test_grid_studies():
    eff = load_study_file(STUDIES / "efficientnet_compound.toml")
    assert eff.grid() == {
        "alpha": [1.0, 1.1, 1.2, 1.3, 1.4],
        "beta": [1.0, 1.05, 1.1, 1.15, 1.2, 1.25],
    }
    assert eff.target_trials() == 30
    assert (eff.execution.gpus, eff.execution.trials_per_gpu) == ((0,), "auto")
    width = load_study_file(STUDIES / "bifpn_width.toml")
    assert width.grid() == {"width_growth": [1.2, 1.25, 1.3, 1.35, 1.4, 1.45]}
    assert width.space.alpha == Fixed(1.2) and width.space.gamma == Range(1.0, 1.5)
    assert width.constraint.mode == "solve" and width.directions == ("maximize",)


def test_lists_become_choices_and_stepped_ranges_points():
    text = edit_study(
        SURROGATE,
        {"space.alpha": "[1.1, 1.2]", "space.beta": "{low = 1.0, high = 1.2, step = 0.1}"},
    )
    d = parse_study_text(text, path="/tmp/s.toml")
    assert d.space.alpha == Choices((1.1, 1.2))
    assert d.space.beta.points() == (1.0, 1.1, 1.2)


def _error(text: str) -> str:
    with pytest.raises(StudyFileError) as info:
        parse_study_text(text, path="/tmp/bad.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad.toml: ")
    return message


@pytest.mark.parametrize(
    "changes, key, fix",
    [
        (
            {"space.alpha": "{low = 1.0, high = 1.6, hi = 2}"},
            "space.alpha.hi",
            "allowed keys are low, high, step",
        ),
        ({"study.n_trials": '"ten"'}, "study.n_trials", "write n_trials = 1"),
        ({"space.alpha": "{low = 1.3, high = 1.2}"}, "space.alpha", "swap them"),
        ({"space.alpha": "{low = 0.9, high = 1.2}"}, "space.alpha.low", "set it within [1, 4]"),
        ({"space.beta": "0.95"}, "space.beta", "below 1 shrinks the model"),
        ({"constraint.tolerance": "0"}, "constraint.tolerance", "tolerance = 0.05"),
        ({"constraint.tolerance": "-0.1"}, "constraint.tolerance", "tolerance = 0.05"),
        ({"constraint.target": "1.0"}, "constraint.target", "target = 2.0"),
        (
            {"study.sampler": '"cmaes"'},
            "study.sampler",
            "choose one of tpe, grid, gp, nsga2, random",
        ),
        ({"study.objectives": '["macs"]'}, "study.objectives", '["ap", "macs"]'),
        ({"space.beta": "[]"}, "space.beta", "list at least one value"),
        ({"space.gamma": "1.15"}, "space.gamma", "gamma = {low = 1.0, high = 2.0}"),
        ({"space.fusion": '"max"'}, "space.fusion", "choose from fastattn, attn, sum"),
        ({"base.phi_proxy": "-9"}, "base.phi_proxy", "such as -2"),
        ({"base.resolution": "100"}, "base.resolution", "use 96"),
        ({"base.backbone_width": "1.0"}, "base.backbone_width", "give either preset or the spec"),
        ({"objective.epochs": "3"}, "objective.epochs", "allowed keys are kind, surrogate"),
        ({"objective.surrogate.noise": "-1"}, "objective.surrogate.noise", "standard deviation"),
    ],
)
def test_one_line_errors_name_key_and_fix(changes, key, fix):
    message = _error(edit_study(SURROGATE, changes))
    assert f"bad.toml: {key}:" in message
    assert fix in message


def test_unknown_section_and_wrong_type():
    assert "bad.toml: spaces: unknown key; allowed keys are study, base" in _error(
        SURROGATE + "\n[spaces]\nalpha = 1.2\n"
    )
    assert "study.seed: must be an integer, got 1.5 (number)" in _error(
        edit_study(SURROGATE, {"study.seed": "1.5"})
    )


def test_missing_surrogate_constants_and_data():
    message = _error(drop_section(SURROGATE, "objective.surrogate"))
    assert "bad.toml: objective.surrogate: missing" in message
    text = (
        drop_section(edit_study(SURROGATE, {"objective.kind": '"train"'}), "objective.surrogate")
        + "\n[train]\nepochs = 1\n"
    )
    message = _error(text)
    assert "bad.toml: data: missing" in message and "[data] generate" in message


def test_training_needs_one_budget():
    text = as_training(SURROGATE).replace("epochs = 1", "epochs = 1\nseconds = 30")
    assert "train.seconds: given together with epochs" in _error(text)
    assert "train: no training budget" in _error(as_training(SURROGATE).replace("epochs = 1", ""))


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(
        StudyFileError, match=r"data\.dir: .*nope is not a folder; point it at a COCO folder"
    ):
        parse_study_text(as_training(SURROGATE, 'dir = "nope"'), path=tmp_path / "s.toml")


def test_band_mode_with_gp_is_refused():
    text = edit_study(SURROGATE, {"constraint.mode": '"band"', "study.sampler": '"gp"'})
    assert 'constraint.mode: band with sampler = "gp"' in _error(text)


def test_grid_needs_steps_and_at_most_its_points():
    assert 'space.alpha: sampler = "grid" needs a list or a range with step' in _error(
        edit_study(SURROGATE, {"study.sampler": '"grid"'})
    )
    text = edit_study(
        SURROGATE,
        {"study.sampler": '"grid"', "space.alpha": "[1.1, 1.2]", "space.beta": "[1.0, 1.1]"},
    )
    assert "study.n_trials: 60 exceeds the 4 grid points" in _error(text)


def test_multi_objective_cannot_prune():
    text = edit_study(SURROGATE, {"study.objectives": '["ap", "macs"]'})
    assert "pruner.kind: Optuna cannot prune multi-objective studies" in _error(
        text + '\n[pruner]\nkind = "median"\n'
    )


def test_pruner_options_are_checked_per_kind():
    assert (
        "pruner.reduction_factor: unknown key; allowed keys are kind, n_startup_trials"
        in _error(SURROGATE + '\n[pruner]\nkind = "median"\nreduction_factor = 3\n')
    )
    d = parse_study_text(
        SURROGATE + '\n[pruner]\nkind = "hyperband"\nmax_resource = "auto"\n', path="/tmp/s.toml"
    )
    assert d.pruner.kwargs() == {"max_resource": "auto"}


def test_invalid_toml_is_one_line():
    assert "bad.toml: toml: not valid TOML" in _error("[study\nname = 1")


def test_malformed_file_creates_no_study(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(edit_study(SURROGATE, {"space.alpha": "{low = 1.0, high = 1.6, hi = 2}"}))
    assert main(["search", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effscale search: error: bad.toml: space.alpha.hi: unknown key")
    assert "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_missing_file_is_an_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope.toml")]) == 2
    assert "study file not found" in capsys.readouterr().err


def test_fingerprint_ignores_n_trials_but_not_space():
    fingerprint = lambda changes: parse_study_text(  # noqa: E731
        edit_study(SURROGATE, changes), path="/tmp/s.toml"
    ).fingerprint()
    assert fingerprint({}) == fingerprint({"study.n_trials": "80"})
    assert fingerprint({}) != fingerprint({"space.alpha": "{low = 1.0, high = 1.5}"})


def test_relative_paths_start_at_the_study_file(tmp_path: Path):
    (tmp_path / "coco").mkdir()
    text = edit_study(
        as_training(SURROGATE, 'dir = "coco"'), {"study.storage": '"journal:///runs/s.journal"'}
    )
    d = parse_study_text(text, path=tmp_path / "s.toml")
    assert d.data.dir == (tmp_path / "coco").resolve()
    assert d.storage_url == "journal:///runs/s.journal"


def test_train_speed_levers_parse_and_reach_the_trainer(tmp_path):
    from effscale.search.objective import train_inputs

    text = as_training(
        SURROGATE,
        train='steps = 5\ncache = "device"\ncuda_graph = false\n'
        'compile = "reduce-overhead"\nchannels_last = true\ncheck_every = 7',
    )
    d = parse_study_text(text, path="/tmp/s.toml")
    assert (
        d.train.cache,
        d.train.cuda_graph,
        d.train.compile,
        d.train.channels_last,
        d.train.fused_optimizer,
        d.train.check_every,
    ) == ("device", False, "reduce-overhead", True, "auto", 7)
    data, settings = train_inputs(d, d.data.__class__(dir=tmp_path))
    assert data.cache == "device"
    assert settings.step_options.to_dict() == {
        "cuda_graph": False,
        "compile": "reduce-overhead",
        "channels_last": True,
        "fused_optimizer": "auto",
        "check_every": 7,
    }
    defaults = parse_study_text(as_training(SURROGATE), path="/tmp/s.toml").train
    assert (defaults.cache, defaults.cuda_graph, defaults.check_every) == ("auto", "auto", "auto")


@pytest.mark.parametrize(
    "line, key",
    [
        ('cache = "gpu"', "train.cache"),
        ('cuda_graph = "yes"', "train.cuda_graph"),
        ("fused_optimizer = 1", "train.fused_optimizer"),
        ('compile = "fast"', "train.compile"),
        ('channels_last = "auto"', "train.channels_last"),
        ("check_every = 0", "train.check_every"),
        ('check_every = "often"', "train.check_every"),
    ],
)
def test_bad_speed_lever_names_the_key(line, key):
    with pytest.raises(StudyFileError, match=key.replace(".", r"\.")):
        parse_study_text(as_training(SURROGATE, train=f"steps = 5\n{line}"), path="/tmp/s.toml")


def test_speed_levers_do_not_change_the_fingerprint():
    fingerprint = lambda train: parse_study_text(  # noqa: E731
        as_training(SURROGATE, train=train), path="/tmp/s.toml"
    ).fingerprint()
    plain = fingerprint("steps = 5")
    assert plain == fingerprint('steps = 5\ncuda_graph = false\ncache = "off"\ncheck_every = 3')
    assert plain != fingerprint("steps = 6")


def test_study_file_choices_match_the_trainer():
    from effscale.detector.train import DATA_CACHES
    from effscale.detector.train_step import COMPILE_MODES
    from effscale.search.definition import CACHES
    from effscale.search.definition import COMPILE_MODES as STUDY_COMPILE_MODES

    assert CACHES == DATA_CACHES and STUDY_COMPILE_MODES == COMPILE_MODES
