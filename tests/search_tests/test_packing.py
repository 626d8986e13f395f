"""``trials_per_gpu = "auto"``: the packing rule, its calibration, the study-file key, the command
line and the runners' resolution, all without a GPU (device memory is passed in)."""

from __future__ import annotations

import argparse
import json

import pytest

from effscale.detector.complexity import count_complexity
from effscale.detector.config import preset
from effscale.search import packing
from effscale.search.cli import main
from effscale.search.commands._types import positive_int_or_auto
from effscale.search.family import build_configs, corner_points
from effscale.search.packing import (
    BYTES_PER_ACTIVATION,
    CONTEXT_BYTES,
    MAX_TRIALS_PER_GPU,
    check_trials_per_gpu,
    choose_trials_per_gpu,
    decide_packing,
    estimate_train_bytes,
    resolve_packing,
    study_train_bytes,
)
from effscale.search.runners import optuna_runner, ray_driver
from effscale.search.storage import resolve_storage_url
from effscale.search.study_file import StudyFileError, load_study_file, parse_study_text
from tests.search_tests.conftest import STUDIES, as_training, edit_study

GIB = 2**30
SURROGATE = (STUDIES / "surrogate_compound.toml").read_text()


def _training_study(tmp_path, *, train_extra: str = "", **changes: str):
    text = as_training(
        edit_study(SURROGATE, changes), train="epochs = 1\nbatch_size = 32" + train_extra
    )
    path = tmp_path / "train.toml"
    path.write_text(text)
    return load_study_file(path)


# ------------------------------------------------------------------------------ calibration


@pytest.mark.parametrize(
    "pixels, measured_gib, activations_m, bytes_each",
    [
        (512, 9.2, 43.5, 7.1),  # effdet tf_efficientdet_d0, 10 classes, H200, bf16, SGD, batch 32
        (256, 2.4, 10.9, 7.4),
    ],
)
def test_calibration_reproduces_from_count_complexity(
    pixels, measured_gib, activations_m, bytes_each
):
    config = preset("d0", num_classes=10).replace(image_size=(pixels, pixels))
    activations = count_complexity(config).activations
    assert round(activations / 1e6, 1) == activations_m
    per_activation = measured_gib * GIB / (32 * activations)
    assert round(per_activation, 1) == bytes_each
    assert per_activation < BYTES_PER_ACTIVATION  # the constant keeps a margin
    estimate = estimate_train_bytes(config, batch_size=32)
    assert measured_gib * GIB < estimate < 1.5 * measured_gib * GIB


def test_estimate_is_activations_params_and_context():
    config = preset("d0").replace(image_size=(256, 256))
    cost = count_complexity(config)
    one = estimate_train_bytes(config, batch_size=1)
    assert one == cost.activations * 8 + 16 * cost.params + CONTEXT_BYTES
    assert estimate_train_bytes(config, batch_size=9) - one == 8 * cost.activations * 8
    with pytest.raises(ValueError, match="batch_size"):
        estimate_train_bytes(config, batch_size=0)


# ------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    "per_trial, gpu, cpus, gpus, expected, limits",
    [
        (10 * GIB, 100 * GIB, 32, 1, 8, (9, 31, 8)),  # cap binds
        (20 * GIB, 100 * GIB, 32, 1, 4, (4, 31, 8)),  # memory binds (90 / 20 = 4.5)
        (1 * GIB, 100 * GIB, 5, 1, 4, (90, 4, 8)),  # cores bind, one kept for the driver
        (1 * GIB, 100 * GIB, 9, 2, 4, (90, 4, 8)),  # cores are shared by the GPUs
        (1 * GIB, 100 * GIB, 1, 1, 1, (90, 1, 8)),  # one core: still one trial
        (200 * GIB, 100 * GIB, 32, 1, 1, (0, 31, 8)),  # too big for the GPU: at least one
    ],
)
def test_the_min_rule(per_trial, gpu, cpus, gpus, expected, limits):
    decision = choose_trials_per_gpu(
        per_trial_bytes=per_trial, gpu_bytes=gpu, cpu_count=cpus, num_gpus=gpus
    )
    assert decision.trials_per_gpu == expected
    assert (decision.by_memory, decision.by_cpu, decision.cap) == limits
    assert decision.trials_per_gpu == max(1, min(limits))


def test_cap_and_usable_fraction_are_parameters():
    kwargs = dict(per_trial_bytes=GIB, gpu_bytes=100 * GIB, cpu_count=64, num_gpus=1)
    assert choose_trials_per_gpu(**kwargs).trials_per_gpu == MAX_TRIALS_PER_GPU == 8
    assert choose_trials_per_gpu(**kwargs, cap=32).trials_per_gpu == 32
    assert choose_trials_per_gpu(**kwargs, cap=64, usable_fraction=0.25).by_memory == 25
    with pytest.raises(ValueError, match="usable_fraction"):
        choose_trials_per_gpu(**kwargs, usable_fraction=0.0)
    for bad in (dict(cpu_count=0), dict(num_gpus=0), dict(cap=0), dict(gpu_bytes=-1)):
        with pytest.raises(ValueError):
            choose_trials_per_gpu(**{**kwargs, **bad})


def test_the_reason_is_one_line_a_user_reads():
    decision = choose_trials_per_gpu(
        per_trial_bytes=round(2.6 * GIB), gpu_bytes=139 * GIB, cpu_count=16, num_gpus=1
    )
    assert decision.reason == (
        "8 trials per GPU (auto): memory allows 48 (2.6 GiB each of 139.0 GiB), CPU cores "
        "allow 15 (16 cores, one kept for the driver, over 1 GPU), cap 8"
    )
    one = choose_trials_per_gpu(
        per_trial_bytes=200 * GIB,
        gpu_bytes=139 * GIB,
        cpu_count=4,
        num_gpus=2,
        cap=4,
        cap_reason="SQLite storage",
    )
    assert one.reason.startswith("1 trial per GPU (auto): memory allows 0 ")
    assert "over 2 GPUs), cap 4 (SQLite storage); one trial may not fit" in one.reason
    free = choose_trials_per_gpu(per_trial_bytes=0, gpu_bytes=0, cpu_count=3, num_gpus=1)
    assert (free.trials_per_gpu, free.by_memory) == (2, 8)
    assert "trials use no GPU memory" in free.reason
    record = free.to_dict()
    assert record["auto"] is True and record["reason"] == free.reason
    assert json.loads(json.dumps(record)) == record  # storable as an Optuna user attr


# ------------------------------------------------------------------------------ study and runners


def test_the_largest_trial_decides(tmp_path):
    d = _training_study(tmp_path)
    low, high = corner_points(d.space, d.constraint)
    sizes = [
        estimate_train_bytes(c, batch_size=32)
        for point in (low, high)
        for c in build_configs(d.base, point, num_classes=90)
    ]
    assert study_train_bytes(d) == max(sizes) == sizes[3]  # φ=1 at the high end, [base] 90
    assert study_train_bytes(d, num_classes=6) < max(sizes)  # the data's count when known
    assert study_train_bytes(load_study_file(STUDIES / "surrogate_compound.toml")) == 0


def test_resolution_with_injected_device_memory(tmp_path):
    d = _training_study(tmp_path)
    per_trial = study_train_bytes(d)
    without_cache = _training_study(tmp_path, train_extra='\ncache = "off"')
    decision = resolve_packing(without_cache, gpus=(0,), gpu_bytes=4 * per_trial, cpu_count=16)
    assert (decision.trials_per_gpu, decision.by_memory, decision.per_trial_bytes) == (
        3,
        3,
        per_trial,
    )
    # cache auto (the default): each trial may also keep 5% of the GPU as its data cache
    ten = dict(gpus=(0,), gpu_bytes=10 * per_trial, cpu_count=16)
    assert resolve_packing(without_cache, **ten).by_memory == 9  # 0.9 × 10
    cached = resolve_packing(d, **ten)
    assert cached.per_trial_bytes == per_trial + int(0.05 * 10 * per_trial)
    assert (cached.trials_per_gpu, cached.by_memory) == (6, 6)  # 0.9 × 10 / 1.5
    sqlite = resolve_storage_url("sqlite:///s.db", base_dir=tmp_path)
    journal = resolve_storage_url("journal:///s.journal", base_dir=tmp_path)
    big = dict(gpu_bytes=1000 * per_trial, cpu_count=64)
    assert resolve_packing(d, gpus=(0,), storage=sqlite, **big).trials_per_gpu == 8
    capped = resolve_packing(d, gpus=(0, 1, 2), storage=sqlite, **big)
    assert (capped.trials_per_gpu, capped.cap) == (2, 2)
    assert "SQLite storage: at most 8 workers over 3 GPUs" in capped.reason
    assert resolve_packing(d, gpus=(0, 1, 2), storage=journal, **big).trials_per_gpu == 8


def test_surrogate_studies_never_query_the_gpu():
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    decision = resolve_packing(d, gpus=(0,), cpu_count=4)  # no GPU here: not asked
    assert (decision.trials_per_gpu, decision.gpu_bytes) == (3, 0)
    options = ray_driver.resolve_options(d, gpus=(0,), trials_per_gpu="auto")
    assert options.gpus_per_trial == 1 / resolve_packing(d, gpus=(0,)).trials_per_gpu


def test_the_auto_run_prints_and_stores_its_decision(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "3"})
    d = load_study_file(path)
    assert d.execution.trials_per_gpu == "auto"
    summary = optuna_runner.run_study(d, gpus=(0,), cpu_count=2)
    assert summary.packing == (
        "1 trial per GPU (auto): trials use no GPU memory, CPU cores "
        "allow 1 (2 cores, one kept for the driver, over 1 GPU), cap 8"
    )
    assert f"effscale search: {summary.packing}" in capsys.readouterr().out
    assert main(["status", str(path), "--format", "json"]) == 0
    stored = json.loads(capsys.readouterr().out)["packing"]
    assert (stored["auto"], stored["trials_per_gpu"], stored["reason"]) == (
        True,
        1,
        summary.packing,
    )
    optuna_runner.run_study(d, n_trials=4, gpus=(0,), trials_per_gpu=1, quiet=True)
    assert main(["status", str(path)]) == 0
    assert (
        "packing of the last GPU run: 1 trial per GPU (given: --trials-per-gpu or "
        "[execution] trials_per_gpu)"
    ) in capsys.readouterr().out


def test_bad_values_are_refused():
    assert check_trials_per_gpu("auto") == "auto" and check_trials_per_gpu(3) == 3
    for bad in (0, "four", True, 2.0):
        with pytest.raises(ValueError, match="trials_per_gpu: must be auto or an integer"):
            check_trials_per_gpu(bad)
    convert = positive_int_or_auto("trials per GPU")
    assert (convert("auto"), convert("AUTO"), convert("4")) == ("auto", "auto", 4)
    for bad in ("0", "x", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or auto"):
            convert(bad)


def test_gpu_memory_names_the_flag_when_a_gpu_is_missing():
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"gpus: GPU {visible} is not visible"):
        packing.gpu_memory_bytes((visible,))


# ------------------------------------------------------------------------------ study file


def test_the_study_file_key():
    def execution(value: str | None):
        text = SURROGATE + ("" if value is None else f"\n[execution]\ntrials_per_gpu = {value}\n")
        return parse_study_text(text, path="/tmp/s.toml").execution.trials_per_gpu

    assert execution(None) == "auto" and execution('"auto"') == "auto" and execution("4") == 4
    assert (
        parse_study_text(
            SURROGATE + "\n[execution]\nworkers = 2\n", path="/tmp/s.toml"
        ).execution.trials_per_gpu
        == "auto"
    )
    fix = (
        'write trials_per_gpu = "auto" (chosen from the GPU memory and CPU cores) or an '
        "integer such as trials_per_gpu = 4"
    )
    for value, problem in (
        ('"four"', "unknown value 'four'"),
        ("0", "must be >= 1, got 0"),
        ("2.5", 'must be "auto" or an integer >= 1, got 2.5 (number)'),
        ("true", 'must be "auto" or an integer >= 1, got True (boolean)'),
    ):
        with pytest.raises(StudyFileError) as info:
            execution(value)
        assert str(info.value) == f"s.toml: execution.trials_per_gpu: {problem}; {fix}"


def test_decide_packing_records_a_given_m_and_prints_an_auto_one(capsys):
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    assert decide_packing(d, gpus=(0,), trials_per_gpu=3) == (
        3,
        {
            "auto": False,
            "trials_per_gpu": 3,
            "reason": "3 trials per GPU (given: --trials-per-gpu or [execution] trials_per_gpu)",
        },
    )
    assert capsys.readouterr().out == ""
    chosen, record = decide_packing(d, gpus=(0,), trials_per_gpu="auto", cpu_count=4)
    assert (chosen, record["auto"], record["trials_per_gpu"]) == (3, True, 3)
    assert capsys.readouterr().out == f"effscale search: {record['reason']}\n"
    decide_packing(d, gpus=(0,), trials_per_gpu="auto", cpu_count=4, quiet=True)
    assert capsys.readouterr().out == ""
