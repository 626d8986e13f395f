"""Training-step throughput: effscale's step, lever by lever, against effdet's ``DetBenchTrain``
(the reference, pip-installed effdet 0.4.1), side by side in one run.

Each case trains ``tf_efficientdet_d0``-shaped models (ours: ``preset("d0")``) on one batch of
random images with random boxes: forward, loss with target assignment, backward, optimizer step
(SGD, momentum). bf16 autocast on CUDA, fp32 on CPU. Throughput is timed after warm-up (which
includes any CUDA-graph capture or compilation: ``setup_s`` reports build plus warm-up, the part
of a trial's wall time that is not steady-state training). Peak memory is CUDA's max allocated.

Variants (``--variants``):

==============  ===========================================================================
effdet          effdet's DetBenchTrain, SGD ``foreach`` (the reference)
plain           effscale eager, default SGD, loss read on the host every step (the old loop)
fused           eager, fused SGD, NaN check every 20 steps
graph           CUDA graph of forward+loss+backward, fused SGD (effscale's default on CUDA)
graph_nhwc      ``graph`` with channels_last
compile         ``torch.compile`` (mode default) of model and loss, fused SGD
compile_ro      ``torch.compile`` mode reduce-overhead (CUDA graphs by Inductor)
==============  ===========================================================================

    python benchmarks/train_throughput.py --json benchmarks/results/train_throughput_h200.json
    python benchmarks/train_throughput.py --device cpu --cases 64x2 --steps 2 --warmup 1 \\
        --variants plain,graph        # a CPU smoke run

Cases are ``SIZExBATCH``; the default is the issue's 512x32, 256x32 and 256x128.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUM_CLASSES = 10
MAX_OBJECTS = 8
VARIANTS = {
    "plain": dict(cuda_graph=False, fused_optimizer=False, check_every=1),
    "fused": dict(cuda_graph=False, fused_optimizer=True, check_every=20),
    "graph": dict(cuda_graph=True, fused_optimizer=True, check_every=20),
    "graph_nhwc": dict(cuda_graph=True, fused_optimizer=True, check_every=20, channels_last=True),
    "compile": dict(cuda_graph=False, fused_optimizer=True, check_every=20, compile="default"),
    "compile_ro": dict(
        cuda_graph=False, fused_optimizer=True, check_every=20, compile="reduce-overhead"
    ),
}
DEFAULT_VARIANTS = "effdet,plain,fused,graph,graph_nhwc"


def random_batch(batch: int, size: int, device, seed: int = 0):
    """Random images [B, 3, S, S] (normalized-like), boxes [B, 8, 4] x1y1x2y2 px, labels [B, 8]."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    xy = torch.rand(batch, MAX_OBJECTS, 2, generator=generator) * size * 0.7
    wh = (torch.rand(batch, MAX_OBJECTS, 2, generator=generator) * 0.25 + 0.05) * size
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (batch, MAX_OBJECTS), generator=generator)
    return images.to(device), boxes.to(device), labels.to(device)


def ours_step(variant: str, size: int, batch: int, device, *, config=None):
    """One effscale training step (``variant`` of :data:`VARIANTS`) on D0 at ``size`` px, or on
    ``config``: returns ``(step closure, TrainStep)``."""
    import torch

    from effscale.detector.anchors import cached_anchors
    from effscale.detector.config import preset
    from effscale.detector.loss import DetectionLoss
    from effscale.detector.model import build_model
    from effscale.detector.train_step import LossMonitor, StepOptions, TrainStep, make_optimizer

    if config is None:
        config = preset("d0", num_classes=NUM_CLASSES).replace(image_size=(size, size))
    options = StepOptions(**VARIANTS[variant]).resolve(device)
    model = build_model(config).to(device).train()
    optimizer = make_optimizer(
        model, name="sgd", lr=0.01, momentum=0.9, fused=options.fused_optimizer
    )
    anchors = cached_anchors(
        config.anchors, config.image_size, config.min_level, config.max_level, device=device
    )
    dtype = torch.bfloat16 if device.type == "cuda" else None
    train_step = TrainStep(
        model=model,
        criterion=DetectionLoss(num_classes=config.num_classes),
        optimizer=optimizer,
        anchors=anchors,
        num_classes=config.num_classes,
        grad_clip=10.0,
        autocast_dtype=dtype,
        options=options,
        max_objects=MAX_OBJECTS,
    )
    monitor = LossMonitor(check_every=options.check_every, device=device)
    images, boxes, labels = random_batch(batch, config.image_size[0], device)
    counter = {"step": 0}

    def step():
        monitor.record(counter["step"], train_step(images, boxes, labels))
        counter["step"] += 1

    step.flush = monitor.flush
    return step, train_step


def effdet_step(size: int, batch: int, device):
    """One effdet ``DetBenchTrain`` step on tf_efficientdet_d0 at ``size`` px."""
    import torch
    from effdet import DetBenchTrain, EfficientDet
    from effdet.config import get_efficientdet_config

    config = get_efficientdet_config("tf_efficientdet_d0")
    config.num_classes = NUM_CLASSES
    config.image_size = (size, size)
    bench = DetBenchTrain(EfficientDet(config, pretrained_backbone=False)).to(device).train()
    optimizer = torch.optim.SGD(
        bench.parameters(), lr=0.01, momentum=0.9, foreach=device.type == "cuda"
    )
    images, boxes, labels = random_batch(batch, size, device)
    target = {
        "bbox": boxes[..., [1, 0, 3, 2]],  # effdet wants yxyx
        "cls": (labels + 1).float(),
    }  # and 1-based classes
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = bench(images, target)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.flush = lambda: None
    return step


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(variant: str, size: int, batch: int, device, *, warmup: int, steps: int) -> dict:
    """Build, warm up and time one variant; a row of figures (img/s, ms/step, setup s, GiB)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    levers = {}
    if variant == "effdet":
        step = effdet_step(size, batch, device)
    else:
        step, train_step = ours_step(variant, size, batch, device)
    for _ in range(warmup):
        step()
    step.flush()
    _sync(device)
    setup = time.perf_counter() - start
    if variant != "effdet":
        levers = dict(train_step.levers)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step.flush()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    row = {
        "variant": variant,
        "size": size,
        "batch": batch,
        "img_per_s": round(batch / seconds, 1),
        "ms_per_step": round(seconds * 1e3, 2),
        "setup_s": round(setup, 1),
    }
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if levers:
        row["levers"] = levers
    return row


def profile_step(variant: str, size: int, batch: int, device, *, top: int = 15) -> dict:
    """torch.profiler over 5 steps of ``variant``: the top kernels by device time (CPU ops on
    CPU), and the device-busy fraction of the wall time (1.0 = never waiting on launches)."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = ours_step(variant, size, batch, device)
    for _ in range(5):
        step()
    step.flush()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        step.flush()
        _sync(device)
    wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    cuda = device.type == "cuda"

    def device_us(e) -> float:
        return (
            float(
                getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0)
            )
            if cuda
            else float(e.self_cpu_time_total)
        )

    def on_device(e) -> bool:  # kernel and memcpy records only: ops' self device time counts
        return not cuda or str(getattr(e, "device_type", "")).endswith("CUDA")  # them again

    kernels = sorted(
        (e for e in events if on_device(e) and device_us(e) > 0), key=device_us, reverse=True
    )
    busy = sum(device_us(e) for e in kernels)
    return {
        "variant": variant,
        "size": size,
        "batch": batch,
        "steps": 5,
        "wall_ms": round(wall_us / 1e3, 1),
        "device_busy_fraction": round(busy / wall_us, 3) if cuda else None,
        "kernel_launches": int(sum(e.count for e in kernels)) if cuda else None,
        "top": [
            {
                "name": e.key[:120],
                "ms": round(device_us(e) / 1e3, 2),
                "calls": int(e.count),
                "share": round(device_us(e) / busy, 3),
            }
            for e in kernels[:top]
        ],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="effscale vs effdet training throughput")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="512x32,256x32,256x128", help="SIZExBATCH list")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma list of effdet,{','.join(VARIANTS)}"
    )
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--profile",
        metavar="VARIANT@SIZExBATCH",
        action="append",
        default=[],
        help="also profile a variant, e.g. fused@256x32 (repeatable)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN pick convolution algorithms by timing (all variants)",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    from effscale.detector.train import resolve_device

    device = resolve_device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v != "effdet" and v not in VARIANTS]
    if unknown:
        parser.error(
            f"--variants: unknown {', '.join(unknown)}; choose from effdet, {', '.join(VARIANTS)}"
        )
    rows, failures, profiles = [], [], []
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.lower().split("x"))
        for variant in variants:
            try:
                rows.append(
                    run_case(variant, size, batch, device, warmup=args.warmup, steps=args.steps)
                )
                print(rows[-1], flush=True)
            except Exception as exc:  # an OOM or a missing effdet must not lose the other rows
                failures.append(
                    {
                        "variant": variant,
                        "size": size,
                        "batch": batch,
                        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                    }
                )
                print("FAILED", failures[-1], flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for spec in args.profile:
        variant, case = spec.split("@")
        size, batch = (int(v) for v in case.lower().split("x"))
        profiles.append(profile_step(variant, size, batch, device))
        print(json.dumps(profiles[-1], indent=1), flush=True)
    frame = pd.DataFrame(rows)
    summary = None
    if not frame.empty:
        print(frame.drop(columns=["levers"], errors="ignore").to_string(index=False))
        wide = frame.pivot_table(index=["size", "batch"], columns="variant", values="img_per_s")
        if "effdet" in wide:
            for variant in wide.columns:
                if variant != "effdet":
                    wide[f"{variant}/effdet"] = (wide[variant] / wide["effdet"]).round(2)
        print(wide.to_string())
        summary = json.loads(wide.reset_index().to_json(orient="records"))
    if args.json:
        device_name = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python benchmarks/train_throughput.py "
                    + " ".join(argv or sys.argv[1:]),
                    "device": device_name,
                    "torch": torch.__version__,
                    "cudnn_benchmark": args.cudnn_benchmark,
                    "rows": rows,
                    "speedups": summary,
                    "failures": failures,
                    "profiles": profiles,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if failures and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
