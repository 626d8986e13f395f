"""Training-step throughput: effscale's step against effdet's ``DetBenchTrain`` (the reference,
pip-installed effdet 0.4.1), side by side in one run.

Each case trains ``tf_efficientdet_d0``-shaped models (ours: ``preset("d0")``) on random images
with random boxes: forward, loss with target assignment, backward, optimizer step. bf16 autocast
on CUDA, fp32 on CPU. Throughput is timed after warm-up; peak memory is CUDA's max allocated.

    python benchmarks/train_throughput.py --json benchmarks/results/train_throughput_h200.json
    python benchmarks/train_throughput.py --device cpu --cases 128x4 --steps 3   # a CPU smoke run

Cases are ``SIZExBATCH``; the default is the issue's pair, 512x32 and 256x128, plus 256x32.
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


def _random_targets(batch: int, size: int, generator):
    import torch

    xy = torch.rand(batch, MAX_OBJECTS, 2, generator=generator) * size * 0.7
    wh = (torch.rand(batch, MAX_OBJECTS, 2, generator=generator) * 0.25 + 0.05) * size
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (batch, MAX_OBJECTS), generator=generator)
    return boxes, labels


def _bench(step, *, warmup: int, steps: int, device) -> float:
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def ours_step(size: int, batch: int, device):
    """One effscale training step on D0 at ``size`` px: returns a closure."""
    import torch

    from detector.anchors import cached_anchors, flatten_outputs
    from detector.config import preset
    from detector.loss import DetectionLoss
    from detector.model import build_model

    config = preset("d0", num_classes=NUM_CLASSES).replace(image_size=(size, size))
    model = build_model(config).to(device).train()
    criterion = DetectionLoss(num_classes=NUM_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                foreach=device.type == "cuda")
    anchors = cached_anchors(config.anchors, config.image_size, device=device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    boxes, labels = (t.to(device) for t in _random_targets(batch, size, generator))
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            cls, box = flatten_outputs(*model(images), NUM_CLASSES)
        loss = criterion(cls, box, anchors, boxes, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def effdet_step(size: int, batch: int, device):
    """One effdet ``DetBenchTrain`` step on tf_efficientdet_d0 at ``size`` px."""
    import torch
    from effdet import DetBenchTrain, EfficientDet
    from effdet.config import get_efficientdet_config

    config = get_efficientdet_config("tf_efficientdet_d0")
    config.num_classes = NUM_CLASSES
    config.image_size = (size, size)
    bench = DetBenchTrain(EfficientDet(config, pretrained_backbone=False)).to(device).train()
    optimizer = torch.optim.SGD(bench.parameters(), lr=0.01, momentum=0.9,
                                foreach=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    boxes, labels = _random_targets(batch, size, generator)
    target = {"bbox": boxes[..., [1, 0, 3, 2]].to(device),  # effdet wants yxyx
              "cls": (labels + 1).float().to(device)}  # and 1-based classes
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = bench(images, target)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run_case(name: str, make, size: int, batch: int, device, *, warmup: int, steps: int) -> dict:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = make(size, batch, device)
    seconds = _bench(step, warmup=warmup, steps=steps, device=device)
    row = {"impl": name, "size": size, "batch": batch, "img_per_s": round(batch / seconds, 1),
           "ms_per_step": round(seconds * 1e3, 1)}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="effscale vs effdet training throughput")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="512x32,256x32,256x128", help="SIZExBATCH list")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from detector.train import resolve_device

    device = resolve_device(args.device)
    rows = []
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.lower().split("x"))
        for name, make in (("effdet", effdet_step), ("effscale", ours_step)):
            rows.append(run_case(name, make, size, batch, device, warmup=args.warmup,
                                 steps=args.steps))
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index=["size", "batch"], columns="impl", values="img_per_s")
    wide["speedup"] = (wide["effscale"] / wide["effdet"]).round(2)
    print(frame.to_string(index=False))
    print(wide.to_string())
    if args.json:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/train_throughput.py " + " ".join(argv or sys.argv[1:]),
            "device": device_name,
            "torch": torch.__version__,
            "rows": rows,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
