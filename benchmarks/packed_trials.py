"""Packed trials: the aggregate training throughput of M concurrent trial processes on one GPU,
against one process alone, the way ``effscale search --gpus 0 --trials-per-gpu M`` runs them.

Each process builds its own D0-shaped model (``preset("d0")`` at ``--size``), runs the training
step of ``--variant`` (see ``benchmarks/train_throughput.py``; default ``graph``, effscale's
default on CUDA), warms up (CUDA-graph capture included), waits for the others at a barrier, and
then trains for ``--seconds``. Aggregate images/s is the sum of the processes' rates over that
common window.

    python benchmarks/packed_trials.py --counts 1,2,4,6,8 --json benchmarks/results/packed_h200.json
    python benchmarks/packed_trials.py --device cpu --size 64 --batch 2 --counts 1,2 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _worker(rank: int, args: dict, barrier, results) -> None:
    try:
        import torch
        from train_throughput import ours_step

        torch.set_num_threads(max(1, args["threads"]))
        device = torch.device(args["device"])
        step, train_step = ours_step(args["variant"], args["size"], args["batch"], device)
        for _ in range(args["warmup"]):
            step()
        step.flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        barrier.wait(timeout=600)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args["seconds"]:
            step()
            steps += 1
        step.flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results.put(
            {
                "rank": rank,
                "images": steps * args["batch"],
                "seconds": elapsed,
                "img_per_s": steps * args["batch"] / elapsed,
                "peak_gib": peak,
                "levers": dict(train_step.levers),
            }
        )
    except BaseException as exc:  # report, never hang the barrier
        barrier.abort()
        results.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"[:400]})


def run_packed(count: int, args: dict) -> dict:
    """Run ``count`` trial processes together; their summed images/s and per-process rows."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    workers = [
        context.Process(target=_worker, args=(rank, args, barrier, results))
        for rank in range(count)
    ]
    for worker in workers:
        worker.start()
    rows = [results.get(timeout=1200) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    errors = [row["error"] for row in rows if "error" in row]
    if errors:
        return {"trials": count, "error": errors[0]}
    return {
        "trials": count,
        "aggregate_img_per_s": round(sum(row["img_per_s"] for row in rows), 1),
        "per_trial_img_per_s": [round(row["img_per_s"], 1) for row in rows],
        "peak_gib_per_trial": max((row["peak_gib"] or 0) for row in rows) or None,
        "levers": rows[0]["levers"],
    }


def _auto_decision(device, size: int, batch: int) -> dict:
    """What ``--trials-per-gpu auto`` picks for this trial on this machine
    (:func:`search.packing.choose_trials_per_gpu`), to set beside the measured rows."""
    import torch

    from effscale.detector.config import preset
    from effscale.search.packing import available_cpus, choose_trials_per_gpu, estimate_train_bytes

    config = preset("d0", num_classes=10).replace(image_size=(size, size))
    gpu_bytes = (
        torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    )
    per_trial = estimate_train_bytes(config, batch_size=batch)
    if not gpu_bytes:
        return {
            "trials_per_gpu": None,
            "reason": "no GPU: M applies to GPUs only",
            "per_trial_bytes": per_trial,
        }
    decision = choose_trials_per_gpu(
        per_trial_bytes=per_trial, gpu_bytes=gpu_bytes, cpu_count=available_cpus(), num_gpus=1
    )
    return decision.to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="aggregate throughput of packed trials")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant", default="graph")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--counts", default="1,2,4,8", help="process counts M to measure")
    parser.add_argument("--seconds", type=float, default=12.0, help="timed window per M")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch

    from effscale.detector.train import resolve_device

    device = resolve_device(args.device)
    counts = [int(c) for c in args.counts.split(",")]
    threads = max(1, (os.cpu_count() or 2) // max(counts))
    config = {
        "device": str(device),
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "threads": threads,
    }
    rows = []
    for count in counts:
        rows.append(run_packed(count, config))
        print(rows[-1], flush=True)
    single = next(
        (r["aggregate_img_per_s"] for r in rows if r["trials"] == 1 and "aggregate_img_per_s" in r),
        None,
    )
    for row in rows:
        if single and "aggregate_img_per_s" in row:
            row["speedup_vs_one"] = round(row["aggregate_img_per_s"] / single, 2)
    result = {
        "command": "python benchmarks/packed_trials.py " + " ".join(argv or sys.argv[1:]),
        "auto_trials_per_gpu": _auto_decision(device, args.size, args.batch),
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        **{k: v for k, v in config.items() if k != "device"},
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
