"""The speed benchmarks run end to end (tiny CPU sizes), so that the one prepared GPU run
(``benchmarks/speed_gpu_run.sh``) does not fail on a bug, and their JSON holds real figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_train_throughput_compares_levers_with_effdet(tmp_path):
    out = tmp_path / "tt.json"
    done = _run(
        "train_throughput.py",
        "--device",
        "cpu",
        "--cases",
        "64x2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--variants",
        "effdet,plain,graph",
        "--profile",
        "fused@64x2",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["rows"]] == ["effdet", "plain", "graph"]
    assert all(row["img_per_s"] > 0 and row["ms_per_step"] > 0 for row in result["rows"])
    assert result["rows"][2]["levers"]["cuda_graph"] == "off: needs a CUDA device"
    assert result["speedups"][0]["graph/effdet"] > 0
    assert result["failures"] == []
    top = result["profiles"][0]["top"]
    assert top and all(k["ms"] > 0 for k in top)
    assert result["command"].startswith("python benchmarks/train_throughput.py --device cpu")


def test_train_throughput_refuses_an_unknown_variant():
    done = _run("train_throughput.py", "--device", "cpu", "--variants", "turbo")
    assert done.returncode == 2 and "--variants: unknown turbo" in done.stderr


@pytest.mark.slow
def test_packed_trials_sums_concurrent_processes(tmp_path):
    out = tmp_path / "packed.json"
    done = _run(
        "packed_trials.py",
        "--device",
        "cpu",
        "--size",
        "64",
        "--batch",
        "2",
        "--counts",
        "1,2",
        "--seconds",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["trials"] for row in rows] == [1, 2]
    assert len(rows[1]["per_trial_img_per_s"]) == 2
    assert rows[1]["aggregate_img_per_s"] == pytest.approx(
        sum(rows[1]["per_trial_img_per_s"]), abs=0.2
    )
    assert rows[0]["speedup_vs_one"] == 1.0 and rows[1]["speedup_vs_one"] > 0


@pytest.mark.slow
def test_proxy_quality_trains_both_paths_on_the_same_seed(tmp_path):
    out = tmp_path / "quality.json"
    done = _run(
        "proxy_quality.py",
        "--device",
        "cpu",
        "--phi",
        "-4",
        "--size",
        "64",
        "--steps",
        "3",
        "--batch",
        "4",
        "--train-images",
        "16",
        "--val-images",
        "4",
        "--seeds",
        "0",
        "--workers",
        "0",
        "--data",
        str(tmp_path),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["path"], r["seed"]) for r in result["rows"]] == [("plain", 0), ("fast", 0)]
    assert result["rows"][0]["levers"]["data"] == "loader: cache off"
    assert result["rows"][1]["levers"]["data"].startswith("loader")  # auto: the loader on CPU
    assert set(result["summary"]) >= {"plain", "fast", "ap_gap_fast_minus_plain", "within_noise"}


def test_step_ops_counts_launches_of_both_steps_phase_by_phase(tmp_path):
    """effscale's step dispatches the same operations at any batch size (static shapes, one
    vectorized assignment); effdet's target assignment loops over the images, so its count
    grows with the batch."""
    out = tmp_path / "ops.json"
    done = _run("step_ops.py", "--size", "64", "--batches", "2,3", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["impl"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {("effdet", 2), ("effdet", 3), ("effscale", 2), ("effscale", 3)}
    phases = ("forward", "targets+loss", "backward", "optimizer", "ema")
    ours_a, ours_b = rows["effscale", 2], rows["effscale", 3]
    assert [ours_a[p] for p in phases] == [ours_b[p] for p in phases]
    assert all(ours_a[p] > 0 for p in phases)
    assert ours_a["ema"] == 2  # WeightEma: one multi-tensor lerp, one multi-tensor copy
    assert ours_a["total"] == sum(ours_a[p] for p in phases)
    assert rows["effdet", 3]["targets+loss"] > rows["effdet", 2]["targets+loss"]
    assert rows["effdet", 2]["ema"] > 50  # timm's ModelEmaV3: a copy per BatchNorm counter
    assert result["effdet_over_effscale"]["batch 3"]["total"] > 1
    assert (
        result["command"] == f"python benchmarks/step_ops.py --size 64 --batches 2,3 --json {out}"
    )


@pytest.mark.slow
def test_proxy_quality_can_force_the_fast_levers_on_a_cpu(tmp_path):
    out = tmp_path / "quality.json"
    done = _run(
        "proxy_quality.py",
        "--device",
        "cpu",
        "--phi",
        "-4",
        "--size",
        "64",
        "--steps",
        "3",
        "--batch",
        "4",
        "--train-images",
        "16",
        "--val-images",
        "4",
        "--seeds",
        "0",
        "--workers",
        "0",
        "--force-fast",
        "--data",
        str(tmp_path),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    plain, fast = result["rows"]
    assert (
        plain["levers"]["data"] == "loader: cache off" and plain["levers"]["optimizer"] == "default"
    )
    assert fast["levers"]["data"].startswith("device cache")
    assert fast["levers"]["optimizer"] == "fused" and fast["levers"]["check_every"] == "20"
    assert result["config"]["force_fast"] is True
