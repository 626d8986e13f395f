"""``effscale export``: the paper's family against the official presets, study exports that
reload and build, effdet-format members that effdet builds with our parameter count, atomic
writes and one-line errors."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest
import torch

from effscale.detector.complexity import COUNTING_CONVENTION, count_complexity
from effscale.detector.config import BackboneConfig, FpnConfig, load_config, preset
from effscale.detector.effdet_config import config_from_effdet
from effscale.detector.effdet_weights import effdet_state_from_effscale
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC, round_resolution
from effscale.search.cli import main
from effscale.search.commands.export import parse_phi_range
from effscale.search.export import (
    effdet_backbone_name,
    effdet_config,
    effdet_unsupported,
    load_effdet_config,
)
from effscale.search.family import OFFICIAL_BACKBONES, build_configs, derive_family
from effscale.search.output import MARKER, atomic_directory
from effscale.search.plots import plot_ap_vs_macs
from effscale.search.runners.optuna_runner import run_study
from effscale.search.storage import open_storage, resolve_storage_url
from effscale.search.study_file import load_study_file
from effscale.search.trials import choose_trial
from tests.detector_tests.random_weights import randomize_batchnorms, relative_difference
from tests.search_tests.conftest import (
    STUDIES,
    SURROGATE_TEST_SETTINGS,
    as_training,
    edit_study,
)

GOLDEN = json.loads(
    (Path(__file__).resolve().parents[1] / "golden" / "complexity.json").read_text()
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_params(config) -> int:
    with torch.device("meta"):
        return _params(build_model(config))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------- paper and presets


def test_paper_family_grows_builds_and_matches_golden_d0(tmp_path):
    out = tmp_path / "paper"
    assert main(["export", "--paper", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    names = [f"d{phi}" for phi in range(8)]
    assert list(manifest["members"]) == names
    params = [manifest["members"][n]["num_params"] for n in names]
    macs = [manifest["members"][n]["macs"] for n in names]
    assert all(a < b for a, b in zip(params, params[1:])), params
    assert all(a < b for a, b in zip(macs, macs[1:])), macs
    assert (params[0], macs[0]) == (GOLDEN["d0"]["params"], GOLDEN["d0"]["macs"])
    assert (params[-1], macs[-1]) == (91_320_870, 490_024_775_200)
    family = derive_family(PAPER_SPEC, range(8))
    for member in family.members:
        loaded = load_config(out / f"{member.name}.toml")
        assert loaded == member.config
        assert (
            _meta_params(loaded)
            == member.complexity.params
            == manifest["members"][member.name]["num_params"]
        )
        dims = loaded.image_size[0], loaded.fpn.channels, loaded.fpn.repeats, loaded.head.repeats
        phi = member.phi
        assert dims == (
            512 + 128 * phi,
            [64, 88, 120, 160, 216, 288, 384, 520][phi],
            3 + phi,
            3 + phi // 3,
        )
    assert load_config(out / "d0.toml") == preset("d0")


def test_paper_rules_reproduce_the_presets_where_they_agree():
    compound = derive_family(PAPER_SPEC, range(8))
    official = derive_family(PAPER_SPEC, range(8), backbone_table="official")
    same = [m.name for m in compound.members if m.config == preset(m.name)]
    assert same == ["d0"]
    for m in compound.members[1:4:2]:  # d1 and d3 differ in the backbone alone
        assert m.config.replace(backbone=preset(m.name).backbone) == preset(m.name)
    assert [m.name for m in official.members if m.config == preset(m.name)] == ["d0", "d1", "d3"]
    d2, d4 = official.members[2].config, official.members[4].config
    assert (d2.fpn.channels, d4.fpn.channels) == (120, 216)  # the release uses 112 and 224
    assert d2.replace(fpn=FpnConfig(channels=112, repeats=5)) == preset("d2")
    assert d4.replace(fpn=FpnConfig(channels=224, repeats=7)) == preset("d4")
    for m in official.members[5:]:
        assert m.config != preset(m.name)
        assert m.config.backbone == preset(m.name).backbone
    assert OFFICIAL_BACKBONES[7] == OFFICIAL_BACKBONES[6] == (1.8, 2.6)


def test_official_table_export_via_the_cli_equals_the_presets(tmp_path):
    out = tmp_path / "official"
    assert (
        main(
            ["export", "--paper", "--backbone-table", "official", "--phi", "0-4", "--out", str(out)]
        )
        == 0
    )
    for name in ("d0", "d1", "d3"):
        assert load_config(out / f"{name}.toml") == preset(name)
        assert count_complexity(load_config(out / f"{name}.toml")).to_dict() == GOLDEN[name]
    rows = list(csv.DictReader((out / "family.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["d0", "d1", "d2", "d3", "d4"]
    assert [int(r["bifpn_width"]) for r in rows] == [64, 88, 120, 160, 216]
    assert [int(r["params"]) for r in rows][1] == GOLDEN["d1"]["params"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone_table"] == "official"


def test_manifest_and_tables(tmp_path):
    out = tmp_path / "fam"
    assert (
        main(
            [
                "export",
                "--alpha",
                "1.25",
                "--beta",
                "1.08",
                "--gamma",
                "1.12",
                "--resolution-rule",
                "compound",
                "--phi",
                "2-4",
                "--prefix",
                "m",
                "--num-classes",
                "20",
                "--format",
                "json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["effscale_version"] == version("effscale")
    assert datetime.fromisoformat(manifest["created"]).utcoffset().total_seconds() == 0
    assert manifest["counting_convention"] == COUNTING_CONVENTION
    assert manifest["coefficients"] == {
        "alpha": 1.25,
        "beta": 1.08,
        "gamma": 1.12,
        "width_growth": 1.35,
        "depth_step": 1.0,
        "fusion": "fastattn",
    }
    assert manifest["source"] == "coefficients" and manifest["trial_number"] is None
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir())
    for phi in (2, 3, 4):
        name = f"m{phi}"
        config = load_config(out / f"{name}.json")
        meta = manifest["members"][name]
        cost = count_complexity(config)
        assert config.num_classes == 20 and config.name == name
        assert meta["_file"] == f"{name}.json" and meta["num_params"] == cost.params
        assert meta["_ops"] == pytest.approx(cost.macs / 1e9, abs=1e-6)
        assert meta["min_size"] == [round(512 * 1.12**phi / 8) * 8] * 2
    rows = list(csv.DictReader((out / "family.csv").read_text().splitlines()))
    assert list(rows[0]) == [
        "name",
        "phi",
        "image_size",
        "backbone_width",
        "backbone_depth",
        "bifpn_width",
        "bifpn_depth",
        "head_depth",
        "fusion",
        "params",
        "gmacs",
        "activations",
    ]
    assert float(rows[0]["backbone_width"]) == round(1.08**2, 4)
    assert float(rows[0]["backbone_depth"]) == round(1.25**2, 4)
    md = (out / "family.md").read_text()
    assert "| m3 | 3 |" in md and "GMACs" in md


def test_phi_ranges():
    assert parse_phi_range("0-7") == tuple(range(8))
    assert parse_phi_range("2-4") == (2, 3, 4)
    assert parse_phi_range(" 3 ") == (3,)
    for bad in ("5-3", "x", "1-2-3", "0-13", "-1"):
        with pytest.raises(ValueError, match="--phi"):
            parse_phi_range(bad)


# ---------------------------------------------------------------------------------- effdet


def test_effdet_format_builds_in_effdet_with_our_parameter_count(tmp_path):
    effdet = pytest.importorskip("effdet")
    import effscale.detector.timm_backbone  # noqa: F401 - registers effscale_efficientnet

    out = tmp_path / "effdet"
    assert main(["export", "--paper", "--phi", "0-3", "--format", "effdet", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # beta**phi, alpha**phi decode to B0, B2 and B3 at phi = 0, 1, 2; phi = 3 to no B-model,
    # so d3 names effscale's timm backbone (issue 16: every member loads in effdet)
    assert [manifest["members"][n].get("effdet_backbone") for n in ("d0", "d1", "d2", "d3")] == [
        "tf_efficientnet_b0",
        "tf_efficientnet_b2",
        "tf_efficientnet_b3",
        "effscale_efficientnet",
    ]
    assert manifest["effdet_unsupported"] == {}
    assert "import effscale.detector.timm_backbone" in (out / "family.md").read_text()
    for name in ("d0", "d1", "d2", "d3"):
        config = load_effdet_config(out / f"{name}.effdet.json")
        with torch.device("meta"):
            model = effdet.EfficientDet(config, pretrained_backbone=False)
        assert _params(model) == manifest["members"][name]["num_params"]
        assert _params(model) == _meta_params(load_config(out / f"{name}.toml"))


@pytest.mark.parametrize("fusion", ["attn", "sum"])
def test_effdet_fusion_and_odd_sizes_match(fusion):
    effdet = pytest.importorskip("effdet")
    from omegaconf import OmegaConf

    config = preset("d1").replace(
        image_size=(160, 224), fpn=FpnConfig(channels=88, repeats=4, fusion=fusion)
    )
    assert effdet_backbone_name(config.backbone) == "tf_efficientnet_b1"
    with torch.device("meta"):
        theirs = effdet.EfficientDet(
            OmegaConf.create(effdet_config(config)), pretrained_backbone=False
        ).eval()
        ours = build_model(config).eval()
        images = torch.empty(1, 3, 160, 224)
        their_cls, _ = theirs(images)
        our_cls, _ = ours(images)
    assert _params(theirs) == _params(ours)
    assert [t.shape for t in their_cls] == [t.shape for t in our_cls]
    assert [tuple(t.shape[-2:]) for t in our_cls] == [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]


def test_effdet_config_names_effscales_backbone_where_timm_registers_none():
    config = derive_family(PAPER_SPEC, [3]).members[0].config
    assert effdet_backbone_name(config.backbone) is None  # B0-B8 and L2 decode otherwise
    assert effdet_unsupported(config) == ()
    h = effdet_config(config)
    assert h["backbone_name"] == "effscale_efficientnet"
    assert h["backbone_args"] == {
        "drop_path_rate": 0.0,
        "width_multiplier": 1.331,
        "depth_multiplier": 1.728,
        "padding": "same",
    }
    assert h["pad_type"] == "same"


# ------------------------------------------------------------------------------ study exports


def _write_study(folder: Path, changes: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = edit_study(
        (STUDIES / "surrogate_compound.toml").read_text(),
        {"study.storage": '"journal:///study.journal"', **changes},
    )
    path = folder / "study.toml"
    path.write_text(text)
    return path


def _trials(path: Path):
    d = load_study_file(path)
    storage = open_storage(resolve_storage_url(d.storage_url, base_dir=d.folder))
    return optuna.load_study(study_name=d.study.name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[Path, int]:
    """A finished surrogate study of 9 trials whose last one (an enqueued alpha 1.6, beta 1.4:
    alpha·beta² = 3.14 with gamma >= 1) is infeasible; returns the file and that trial number."""
    path = _write_study(tmp_path_factory.mktemp("surrogate"), {"study.n_trials": "8"})
    run_study(load_study_file(path), quiet=True)
    d = load_study_file(path)
    storage = open_storage(resolve_storage_url(d.storage_url, base_dir=d.folder))
    optuna.load_study(study_name=d.study.name, storage=storage).enqueue_trial(
        {"alpha": 1.6, "beta": 1.4}
    )
    run_study(d, n_trials=9, quiet=True)
    last = max(_trials(path), key=lambda t: t.number)
    assert last.state.name == "PRUNED" and last.user_attrs["feasible"] is False
    return path, last.number


def test_a_finished_study_exports_reloads_and_builds(finished_study, tmp_path, capsys):
    path, _ = finished_study
    trials = _trials(path)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    out = tmp_path / "family"
    # the backbone depth multiplier alpha**phi must stay <= 8: the default 0-7 may be too far
    top = min(7, int(math.log(8) / math.log(best.params["alpha"])))
    assert top < 7  # the case of issue 18: the default export stopped at d7
    capsys.readouterr()
    # a range the user gives must be legal throughout
    assert main(["export", str(path), "--phi", "0-7", "--out", str(out)]) == 2
    depth = round(best.params["alpha"] ** (top + 1), 4)
    why = f"backbone.depth_multiplier: must be a number in [0.05, 8], got {depth}"
    assert (
        f"member d{top + 1} (φ = {top + 1}) is not a legal detector ({why}); use --phi 0-{top} "
        "or smaller coefficients"
    ) in _one_error_line(capsys)
    assert not out.exists()
    # the default range stops at the last legal member, and says so
    assert main(["export", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    left = [f"d{phi}" for phi in range(top + 1, 8)]
    assert f"left out {', '.join(left)}: d{top + 1} is not a legal detector ({why})" in printed
    assert sorted(p.name for p in out.glob("d*.toml")) == [f"d{phi}.toml" for phi in range(top + 1)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["left_out"]) == left and manifest["left_out"][left[0]] == why
    assert manifest["trial_number"] == best.number
    assert manifest["study"]["name"] == "surrogate-compound"
    assert manifest["study"]["storage"] == f"journal:///{path.parent / 'study.journal'}"
    c = manifest["coefficients"]
    assert (c["alpha"], c["beta"], c["gamma"]) == (
        best.params["alpha"],
        best.params["beta"],
        best.user_attrs["gamma"],
    )
    for phi in range(top + 1):
        config = load_config(out / f"d{phi}.toml")
        assert config.num_classes == 90
        assert _meta_params(config) == manifest["members"][f"d{phi}"]["num_params"]
    # anchored at the base (D0 at 512 px): phi = 0 is D0 itself
    assert load_config(out / "d0.toml") == preset("d0")
    d1 = load_config(out / "d1.toml")
    assert d1.image_size[0] == round_resolution(512 * c["gamma"])
    assert d1.backbone.width_multiplier == round(c["beta"], 4)
    assert (out / "study.png").read_bytes()[:8] == PNG_MAGIC


def test_the_proxy_anchor_reproduces_the_trained_model(finished_study, tmp_path):
    path, _ = finished_study
    d = load_study_file(path)
    chosen = choose_trial(_trials(path), objectives=d.study.objectives)
    out = tmp_path / "proxy"
    assert (
        main(
            [
                "export",
                str(path),
                "--trial",
                str(chosen.number),
                "--anchor",
                "proxy",
                "--phi",
                "0-2",
                "--out",
                str(out),
                "--no-plot",
            ]
        )
        == 0
    )
    phi0, phi1 = build_configs(d.base, chosen.point, num_classes=90)
    assert load_config(out / "d0.toml") == phi0.replace(name="d0")
    assert load_config(out / "d1.toml") == phi1.replace(name="d1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"]["d1"]["macs"] == chosen.macs
    assert manifest["study"]["selection"] == "named"
    assert not (out / "study.png").exists()


def test_study_plot_band_is_the_target_around_the_proxy_cost(finished_study):
    path, infeasible = finished_study
    d = load_study_file(path)
    trials = _trials(path)
    chosen = choose_trial(trials, objectives=d.study.objectives)
    data = plot_ap_vs_macs(d, trials, chosen=chosen.number)
    proxy = count_complexity(build_configs(d.base, chosen.point, num_classes=90)[0]).macs
    assert data.proxy_macs == pytest.approx(proxy)
    assert data.band_macs == pytest.approx((1.9 * proxy, 2.1 * proxy))
    assert list(data.infeasible_numbers) == [
        t.number for t in trials if t.user_attrs.get("feasible") is False
    ]
    assert infeasible in data.infeasible_numbers
    assert chosen.number in data.front
    complete = sum(1 for t in trials if t.state.name == "COMPLETE")
    assert len(data.numbers) == complete


def test_two_objective_study_exports_a_pareto_trial(tmp_path, capsys):
    path = _write_study(
        tmp_path / "mo", {"study.n_trials": "10", "study.objectives": '["ap", "macs"]'}
    )
    run_study(load_study_file(path), quiet=True)
    trials = _trials(path)
    from effscale.search.trials import pareto_front

    front = pareto_front(trials)
    best_on_front = max(front, key=lambda t: t.values[0])
    out = tmp_path / "best"
    assert main(["export", str(path), "--phi", "0-1", "--out", str(out), "--no-plot"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trial_number"] == best_on_front.number
    assert manifest["study"]["selection"] == "pareto-best"
    assert manifest["study"]["pareto"] == [t.number for t in front]
    on_front = {t.number for t in front}
    dominated = [t for t in trials if t.state.name == "COMPLETE" and t.number not in on_front]
    if dominated:
        capsys.readouterr()
        assert (
            main(
                [
                    "export",
                    str(path),
                    "--trial",
                    str(dominated[0].number),
                    "--out",
                    str(tmp_path / "x"),
                ]
            )
            == 2
        )
        assert "is not on the Pareto front" in _one_error_line(capsys)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trial", "999"], "has no trial 999 (trials 0-8)"),
        (["--trial", "INFEASIBLE"], "is infeasible"),
        (["--phi", "5-3"], "--phi: range 5-3 has no members"),
        (["--alpha", "1.3"], "--alpha: the coefficients come from STUDY.toml"),
    ],
)
def test_bad_study_input_is_one_line_and_writes_nothing(
    finished_study, tmp_path, capsys, args, message
):
    path, infeasible = finished_study
    args = [str(infeasible) if a == "INFEASIBLE" else a for a in args]
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["export", str(path), *args, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("effscale export: error: ") and message in line, line
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--paper", "--phi", "0-13"], "--phi: 0-13 leaves [0, 12]"),
        (["--backbone-table", "official", "--phi", "6-8"], "official table covers"),
        (["--paper", "--phi", "6-8"], "--phi: the paper's family is D0..D7"),
        (["--paper", "--bifpn-growth", "0.5"], "--bifpn-growth: must be in [1, 4]"),
        (["--paper", "--phi", "0-7", "--bifpn-growth", "2"], "member d7 (φ = 7) is not a legal"),
        (["--beta", "1.1"], "give STUDY.toml, or --alpha, --beta and --gamma"),
        (["--paper", "--trial", "3"], "--trial: needs STUDY.toml"),
    ],
)
def test_bad_coefficient_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["export", *args, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert message in line, line
    assert not out.exists() and _leftovers(tmp_path) == []


def test_no_feasible_trial_is_a_clear_error(tmp_path, capsys):
    path = _write_study(
        tmp_path / "none", {"study.n_trials": "1", "space.alpha": "1.6", "space.beta": "1.4"}
    )
    run_study(load_study_file(path), quiet=True)
    capsys.readouterr()
    assert main(["export", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "has no feasible COMPLETE trial yet" in _one_error_line(capsys)


# --------------------------------------------------------------------------- atomic writes


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "fam"
    assert main(["export", "--paper", "--phi", "0-1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["export", "--paper", "--phi", "0-2", "--out", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["export", "--paper", "--phi", "0-2", "--out", str(out), "--overwrite"]) == 0
    assert (out / "d2.toml").is_file()
    assert json.loads((out / "manifest.json").read_text())["members"].keys() == {"d0", "d1", "d2"}
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--paper", "--phi", "0", "--out", str(empty)]) == 0
    assert (empty / "d0.toml").is_file()


def test_an_error_inside_the_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "fam"
    with atomic_directory(out, command="export") as tmp:
        (tmp / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(out, command="export", overwrite=True) as tmp:
            (tmp / "d0.toml").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "manifest.json"]
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="is a file"):
        with atomic_directory(out / "manifest.json", command="export"):
            pass


def test_overwrite_never_replaces_an_unrelated_folder(tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", "--paper", "--phi", "0", "--out", str(other), "--overwrite"]) == 2
    assert (
        "holds no .effscale-output.json, so it is not an earlier effscale export output"
        in _one_error_line(capsys)
    )
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_a_tiny_trained_study_exports_reloads_and_builds(trained_study, tmp_path):
    out = tmp_path / "family"
    assert (
        main(
            ["export", str(trained_study), "--phi", "0-3", "--format", "effdet", "--out", str(out)]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"]["trial_ap"] > 0
    d0 = load_config(out / "d0.toml")
    assert d0 == preset("d0", num_classes=2)  # anchored at [base] preset d0, data has 2 classes
    effdet = pytest.importorskip("effdet")
    with torch.device("meta"):  # D0's backbone is B0: effdet builds it
        theirs = effdet.EfficientDet(
            load_effdet_config(out / "d0.effdet.json"), pretrained_backbone=False
        )
    assert _params(theirs) == manifest["members"]["d0"]["num_params"] == _meta_params(d0)
    for phi in range(4):
        assert (
            _meta_params(load_config(out / f"d{phi}.toml"))
            == manifest["members"][f"d{phi}"]["num_params"]
        )
    assert (out / "study.png").read_bytes()[:8] == PNG_MAGIC


def tiny_training_text(n_trials: int = 3) -> str:
    """The surrogate study turned into a real training study: D0 at phi = -4 and 64 px, 2 steps
    of 4 images on 16 generated 64-px images of 2 classes, journal storage, one seed and the
    formula cost (at 64 px one 8-px resolution step moves the measured cost by 27%, more than the
    band's width)."""
    text = as_training(
        (STUDIES / "surrogate_compound.toml").read_text(),
        "generate = {train = 16, val = 8, image_size = 64, num_classes = 2}",
        'steps = 2\nbatch_size = 4\ndevice = "cpu"',
    )
    return edit_study(
        text,
        {
            **SURROGATE_TEST_SETTINGS,
            "base.phi_proxy": "-4",
            "base.resolution": "64",
            "base.num_classes": "2",
            "study.n_trials": str(n_trials),
            "study.storage": '"journal:///study.journal"',
        },
    )


_TRAINED: dict[str, Path] = {}


def finished_training_study(tmp_path_factory) -> Path:
    """A finished 3-trial tiny training study (about 15 s on 2 CPU cores), made once per test
    session and shared with test_validate."""
    if "path" not in _TRAINED:
        path = tmp_path_factory.mktemp("trained") / "study.toml"
        path.write_text(tiny_training_text())
        summary = run_study(load_study_file(path), quiet=True)
        assert summary.n_complete >= 2 and summary.n_failed == 0
        _TRAINED["path"] = path
    return _TRAINED["path"]


@pytest.fixture
def trained_study(tmp_path_factory) -> Path:
    """The shared tiny training study (see :func:`finished_training_study`)."""
    return finished_training_study(tmp_path_factory)


# -------------------------------------------------- every member in effdet (issue 16, part 3)


def _top_phi(alpha: float) -> int:
    """The largest φ <= 7 whose backbone depth multiplier alpha**φ stays legal (<= 8)."""
    return min(7, int(math.log(8) / math.log(alpha)))


def _flops_params(capsys, path: Path) -> int:
    capsys.readouterr()
    assert main(["flops", "--config", str(path), "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    return int(record["params"])


def test_every_member_of_a_searched_family_builds_in_effdet(finished_study, tmp_path, capsys):
    effdet = pytest.importorskip("effdet")
    import effscale.detector.timm_backbone  # noqa: F401 - the one import the README documents

    path, _ = finished_study
    best = max((t for t in _trials(path) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    phis = f"0-{_top_phi(best.params['alpha'])}"
    out = tmp_path / "effdet"
    capsys.readouterr()
    assert main(["export", str(path), "--phi", phis, "--format", "effdet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["effdet_unsupported"] == {}
    ours = [
        n for n, m in manifest["members"].items() if m["effdet_backbone"] == "effscale_efficientnet"
    ]
    # the one import those members need is printed with the export
    assert (
        f"{', '.join(ours)} use effscale's timm backbone: run `import effscale.detector." in printed
    )
    backbones = {meta["effdet_backbone"] for meta in manifest["members"].values()}
    assert "effscale_efficientnet" in backbones  # the searched multipliers are timm's for none
    for name, meta in manifest["members"].items():
        assert meta["effdet_file"] == f"{name}.effdet.json"
        with torch.device("meta"):
            theirs = effdet.EfficientDet(
                load_effdet_config(out / meta["effdet_file"]), pretrained_backbone=False
            )
        assert _params(theirs) == meta["num_params"], name
        # every native export loads back through effscale flops --config
        assert _flops_params(capsys, out / meta["effdet_file"]) == meta["num_params"]
        assert _flops_params(capsys, out / f"{name}.toml") == meta["num_params"]
    as_json = tmp_path / "json"
    assert (
        main(["export", str(path), "--phi", "0-1", "--format", "json", "--out", str(as_json)]) == 0
    )
    for name in ("d0", "d1"):
        assert (
            _flops_params(capsys, as_json / f"{name}.json")
            == manifest["members"][name]["num_params"]
        )


@pytest.mark.parametrize(
    "backbone, padding, min_level",
    [((1.37, 1.23), "same", 3), ((1.0, 1.1), "symmetric", 4)],
    ids=["effscale-backbone", "b1-symmetric-min4"],
)
def test_an_exported_member_is_the_same_network_in_effdet(backbone, padding, min_level, tmp_path):
    """Not only the parameter count: effscale's weights by name give effdet's model the same
    outputs (an effscale_efficientnet member, and a registered B1 padded symmetrically from
    level 4)."""
    effdet = pytest.importorskip("effdet")
    import effscale.detector.timm_backbone  # noqa: F401

    width, depth = backbone
    config = preset("d0", num_classes=3).replace(
        backbone=BackboneConfig(width_multiplier=width, depth_multiplier=depth),
        image_size=(96, 128),
        padding=padding,
        min_level=min_level,
    )
    h = effdet_config(config)
    assert config_from_effdet(h) == config  # the effdet config reads back to the member
    (tmp_path / "m.effdet.json").write_text(json.dumps(h))
    torch.manual_seed(0)
    ours = randomize_batchnorms(build_model(config), seed=4).eval()
    theirs = effdet.EfficientDet(load_effdet_config(tmp_path / "m.effdet.json"), False).eval()
    theirs.load_state_dict(effdet_state_from_effscale(config, ours.state_dict()))
    images = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = [*sum(ours(images), [])]
        expected = [*sum(theirs(images), [])]
    assert relative_difference(got, expected) < 1e-4
