"""The proxy training loop: learning on generated data, resume after a kill, checkpoints,
divergence and bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from effscale.detector.config import from_scaling
from effscale.detector.data import make_synthetic_coco
from effscale.detector.scaling import PAPER_SPEC
from effscale.detector.train import (
    CheckpointError,
    DataSettings,
    DivergedError,
    TrainSettings,
    load_checkpoint,
    train_proxy,
)
from effscale.search.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "d64"
    make_synthetic_coco(root, n_train=64, n_val=16, seed=0, image_size=(64, 64))
    return root


def tiny_config(num_classes=6, size=64):
    return from_scaling(PAPER_SPEC, -4, num_classes=num_classes, image_size=(size, size))


#: the fast path of the GPU, as far as it runs on CPU: data cached on the device and augmented
#: there, fused optimizer, NaN check every 10 steps (CUDA graphs fall back to eager here)
FAST = dict(cuda_graph=True, fused_optimizer=True, check_every=10)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["plain", "fast"])
def test_tiny_proxy_learns_on_generated_data(tmp_path, path):
    root = tmp_path / "d"
    make_synthetic_coco(root, n_train=128, n_val=32, seed=0, image_size=(128, 128))
    config = tiny_config(size=128)
    cache, levers = ("device", FAST) if path == "fast" else ("off", {})
    untrained = train_proxy(
        config,
        data=DataSettings(dir=root),
        settings=TrainSettings(steps=1, lr=1e-9, ema_decay=None),
        device="cpu",
        quiet=True,
    )
    result = train_proxy(
        config,
        data=DataSettings(dir=root, cache=cache),
        settings=TrainSettings(steps=200, lr=5e-3, eval_every_epoch=False, **levers),
        device="cpu",
        quiet=True,
    )
    assert result.levers["data"].startswith("device cache" if path == "fast" else "loader")
    assert result.steps == 200
    # measured on this data: untrained AP50 0.001-0.002; after 200 steps, over seeds 0 and 1,
    # plain 0.08-0.13 and fast (device-side augmentation) 0.048-0.103: seed noise, not the path
    assert untrained.metrics["ap50"] < 0.01
    assert result.metrics["ap50"] > 0.03
    assert result.metrics["ap50"] > 5 * max(untrained.metrics["ap50"], 1e-3)
    assert result.images_per_s > 0


def test_same_seed_gives_same_run_on_cpu(data64):
    settings = TrainSettings(steps=3, batch_size=8, eval_every_epoch=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # must not matter: the loop seeds itself
        result = train_proxy(
            tiny_config(),
            data=DataSettings(dir=data64),
            settings=settings,
            device="cpu",
            quiet=True,
        )
        runs.append(result.metrics)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("check_every", [1, 4])
def test_nan_loss_raises_diverged_error_with_step(data64, monkeypatch, tmp_path, check_every):
    """With the check deferred to every 4th step the reported step is still exact."""
    from effscale.detector import loss as loss_module

    original = loss_module.DetectionLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # fault injection: the 3rd step's loss is NaN
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(loss_module.DetectionLoss, "forward", poisoned)
    with pytest.raises(DivergedError) as info:
        train_proxy(
            tiny_config(),
            data=DataSettings(dir=data64),
            settings=TrainSettings(steps=10, batch_size=8, check_every=check_every),
            device="cpu",
            quiet=True,
            out_dir=tmp_path,
        )
    assert info.value.step == 2  # 0-based: steps 0 and 1 completed
    assert math.isnan(info.value.loss)
    assert not (tmp_path / "checkpoint.pt").exists()  # a diverged model is never stored


def test_device_cache_path_is_seeded_and_reports_its_levers(data64, tmp_path):
    settings = TrainSettings(steps=4, batch_size=8, eval_every_epoch=False, **FAST)
    runs = [
        train_proxy(
            tiny_config(),
            data=DataSettings(dir=data64, cache="device"),
            settings=settings,
            device="cpu",
            quiet=True,
            out_dir=tmp_path / str(i),
        )
        for i in range(2)
    ]
    assert runs[0].metrics == runs[1].metrics
    levers = runs[0].levers
    assert levers["data"].startswith("device cache: ")
    assert levers["cuda_graph"] == "off: needs a CUDA device"
    assert levers["optimizer"] == "fused" and levers["check_every"] == "10"
    stored = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert stored["levers"] == levers
    other = train_proxy(
        tiny_config(),
        data=DataSettings(dir=data64, cache="device"),
        settings=TrainSettings(steps=4, batch_size=8, eval_every_epoch=False, seed=1, **FAST),
        device="cpu",
        quiet=True,
    )
    assert other.metrics != runs[0].metrics


def test_auto_cache_uses_the_loader_on_cpu(data64):
    result = train_proxy(
        tiny_config(),
        data=DataSettings(dir=data64),
        settings=TrainSettings(steps=1, batch_size=8, eval_every_epoch=False),
        device="cpu",
        quiet=True,
    )
    assert result.levers["data"] == "loader: cache auto keeps the loader off CUDA"
    assert result.levers["cuda_graph"] == "off" and result.levers["check_every"] == "1"


def test_bad_speed_settings_name_the_field():
    with pytest.raises(ValueError, match="data.cache"):
        DataSettings(dir=".", cache="gpu")
    with pytest.raises(ValueError, match="train.compile"):
        TrainSettings(compile="yes")


def _cli(args, capsys):
    try:
        rc = main(args)
    except SystemExit as exit:  # argparse refuses a flag's value: exit 2, one line
        rc = exit.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_train_json_and_evaluate(data64, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = _cli(
        [
            "train",
            "--phi",
            "-4",
            "--image-size",
            "64",
            "--data",
            str(data64),
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--format",
            "json",
        ],
        capsys,
    )
    assert rc == 0
    metrics = json.loads(stdout)
    for key in ("ap", "ap50", "images_per_s", "seconds"):
        assert key in metrics and math.isfinite(metrics[key])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 4 and saved["ap"] == metrics["ap"]
    rc, stdout, _ = _cli(
        ["evaluate", str(out / "checkpoint.pt"), "--data", str(data64), "--format", "json"], capsys
    )
    assert rc == 0
    assert json.loads(stdout)["ap"] == pytest.approx(metrics["ap"], abs=1e-9)


def test_cli_train_speed_flags_reach_the_trainer(data64, tmp_path, capsys):
    rc, stdout, _ = _cli(
        [
            "train",
            "--phi",
            "-4",
            "--image-size",
            "64",
            "--data",
            str(data64),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--cache",
            "device",
            "--cuda-graph",
            "on",
            "--fused-optimizer",
            "off",
            "--check-every",
            "5",
            "--channels-last",
            "--format",
            "json",
        ],
        capsys,
    )
    assert rc == 0
    levers = json.loads(stdout)["levers"]
    assert levers["data"].startswith("device cache")
    assert levers["cuda_graph"] == "off: needs a CUDA device"
    assert (levers["optimizer"], levers["check_every"], levers["channels_last"]) == (
        "default",
        "5",
        "on",
    )
    rc, stdout, _ = _cli(
        [
            "train",
            "--phi",
            "-4",
            "--image-size",
            "64",
            "--data",
            str(data64),
            "--steps",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0 and "speed levers" in stdout
    assert "cuda_graph" in stdout and "loader: cache auto keeps the loader off CUDA" in stdout
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data64), "--check-every", "0"])
    assert "--check-every: expected a number of steps >= 1 or auto" in capsys.readouterr().err


def test_truncated_checkpoint_gets_a_clear_error(data64, tmp_path, capsys):
    out = tmp_path / "run"
    train_proxy(
        tiny_config(),
        data=DataSettings(dir=data64),
        settings=TrainSettings(steps=2, batch_size=8),
        device="cpu",
        quiet=True,
        out_dir=out,
    )
    path = out / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    rc, _, err = _cli(["evaluate", str(path), "--data", str(data64)], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "truncated or corrupt" in err and "Traceback" not in err


def test_checkpoint_holds_only_tensors_and_plain_data(data64, tmp_path):
    out = tmp_path / "run"
    train_proxy(
        tiny_config(),
        data=DataSettings(dir=data64),
        settings=TrainSettings(steps=2, batch_size=8),
        device="cpu",
        quiet=True,
        out_dir=out,
    )
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # raises on any pickled object
    assert state["step"] == 2 and state["config"]["image_size"] == [64, 64]


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_continues_the_step_count(data64, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "effscale.search.cli",
        "train",
        "--phi",
        "-4",
        "--image-size",
        "64",
        "--data",
        str(data64),
        "--steps",
        "40",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--checkpoint-every",
        "3",
        "--quiet",
        "--format",
        "json",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists():
            step = load_checkpoint(checkpoint)["step"]
            if 3 <= step and step % 8 != 0:  # mid-epoch: 64 images / batch 8 = 8 steps/epoch
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run ended before a mid-epoch checkpoint appeared"
    assert not (out / "metrics.json").exists()
    state = load_checkpoint(checkpoint)
    assert state["step"] >= killed_at
    resumed = subprocess.run(
        cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads(resumed.stdout)
    assert metrics["steps"] == 40
    assert all(math.isfinite(metrics[k]) for k in ("ap", "ap50"))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == sorted(h["epoch"] for h in history)
    assert history[-1]["step"] == 40


@pytest.mark.parametrize("case", ["missing_dir", "not_coco", "missing_image", "zero_subset"])
def test_bad_data_gets_one_line_and_nonzero_exit(case, tmp_path, capsys):
    root = tmp_path / "d"
    args = [
        "train",
        "--phi",
        "-4",
        "--image-size",
        "64",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--data",
        str(root),
    ]
    expected = {
        "missing_dir": "not found",
        "not_coco": "instances.json",
        "missing_image": None,
        "zero_subset": "subset",
    }[case]
    if case != "missing_dir":
        make_synthetic_coco(root, n_train=4, n_val=2, seed=0, image_size=(64, 64))
    if case == "not_coco":
        (root / "train" / "instances.json").write_text('{"hello": 1}')
    if case == "missing_image":
        ann = json.loads((root / "train" / "instances.json").read_text())
        victim = ann["images"][1]["file_name"]
        (root / "train" / "images" / victim).unlink()
        expected = Path(victim).name
    if case == "zero_subset":
        args += ["--subset", "0"]
    rc, _, err = _cli(args, capsys)
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
