"""Operations dispatched per training step, phase by phase: effscale's step against effdet's
``DetBenchTrain`` (pip-installed effdet 0.4.1), side by side in one run, on the CPU.

Small EfficientDets are bound by kernel launches, not arithmetic: on the H200, effdet's D0 at
256 px trains at 168 img/s, under 1% of the chip's bf16 rate. Every aten operation that is not a
view is about one kernel launch on a GPU (a multi-tensor ``_foreach_*``/fused operation is one
dispatch but a few launches), so counting dispatches on the CPU measures the launch work of a
step without a GPU. A CUDA graph replays the forward, loss and backward launches without the
host, but each kernel still costs the GPU its launch latency, so fewer kernels pay either way.

Phases: ``forward`` (the network), ``targets+loss`` (flattening, anchor assignment, focal and
box losses), ``backward``, ``optimizer`` (clipping where used, SGD), ``ema`` (one weight-EMA
update: effscale's ``WeightEma`` against timm's ``ModelEmaV3``, the one effdet's recipe uses).
Counts are of one step after two warm-up steps, under bf16 autocast as on the GPU.

    python benchmarks/step_ops.py --json benchmarks/results/step_ops_cpu.json
    python benchmarks/step_ops.py --size 64 --batches 2,4     # a quick run

Views, ``detach`` and empty allocations launch nothing and are counted apart (``no_kernel``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput's random_batch
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUM_CLASSES = 10
PHASES = ("forward", "targets+loss", "backward", "optimizer", "ema")
_NO_KERNEL = (
    "aten.detach",
    "aten.empty",
    "aten.empty_strided",
    "aten.empty_like",
    "aten._unsafe_view",
    "aten.lift_fresh",
    "aten.set_",
)


def _counter():
    """A dispatch mode that counts kernel-launching operations and the others apart."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.kernels: Counter[str] = Counter()
            self.no_kernel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if getattr(func, "is_view", False) or name.startswith(_NO_KERNEL):
                self.no_kernel += 1
            else:
                self.kernels[name.rsplit(".", 1)[0]] += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def _count(phases: dict, name: str, fn):
    """Run ``fn`` under a counter; add its counts to ``phases[name]``; return ``fn()``."""
    counter = _counter()
    with counter:
        out = fn()
    entry = phases.setdefault(name, {"kernels": 0, "no_kernel": 0, "top": Counter()})
    entry["kernels"] += sum(counter.kernels.values())
    entry["no_kernel"] += counter.no_kernel
    entry["top"].update(counter.kernels)
    return out


def ours_phases(size: int, batch: int) -> dict:
    """effscale's D0 step (the CUDA default minus the graph: fused SGD, clipping, WeightEma)."""
    import torch
    from train_throughput import random_batch

    from effscale.detector.anchors import cached_anchors, flatten_outputs
    from effscale.detector.config import preset
    from effscale.detector.ema import WeightEma
    from effscale.detector.loss import DetectionLoss
    from effscale.detector.model import build_model
    from effscale.detector.train_step import make_optimizer

    torch.manual_seed(0)
    config = preset("d0", num_classes=NUM_CLASSES).replace(image_size=(size, size))
    model = build_model(config).train()
    optimizer = make_optimizer(model, name="sgd", lr=0.01, fused=True)
    criterion = DetectionLoss(num_classes=NUM_CLASSES)
    anchors = cached_anchors(config.anchors, config.image_size, config.min_level, config.max_level)
    ema = WeightEma(model, decay=0.9998, use_warmup=True)
    images, boxes, labels = random_batch(batch, size, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]

    def step(phases: dict, index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = _count(phases, "forward", lambda: model(images))
        loss = _count(
            phases,
            "targets+loss",
            lambda: criterion(*flatten_outputs(*outputs, NUM_CLASSES), anchors, boxes, labels)[
                "loss"
            ],
        )
        _count(phases, "backward", loss.backward)
        _count(
            phases,
            "optimizer",
            lambda: (torch.nn.utils.clip_grad_norm_(params, 10.0), optimizer.step()),
        )
        _count(phases, "ema", lambda: ema.update(model, step=index + 1))

    return _measure(step)


def effdet_phases(size: int, batch: int) -> dict:
    """effdet's ``DetBenchTrain`` on tf_efficientdet_d0 (foreach SGD, timm's ModelEmaV3)."""
    import torch
    from effdet import DetBenchTrain, EfficientDet
    from effdet.config import get_efficientdet_config
    from timm.utils import ModelEmaV3
    from train_throughput import random_batch

    torch.manual_seed(0)
    config = get_efficientdet_config("tf_efficientdet_d0")
    config.num_classes = NUM_CLASSES
    config.image_size = (size, size)
    bench = DetBenchTrain(EfficientDet(config, pretrained_backbone=False)).train()
    optimizer = torch.optim.SGD(bench.parameters(), lr=0.01, momentum=0.9, foreach=True)
    ema = ModelEmaV3(bench.model, decay=0.9998, use_warmup=True)
    images, boxes, labels = random_batch(batch, size, torch.device("cpu"))
    target = {"bbox": boxes[..., [1, 0, 3, 2]], "cls": (labels + 1).float()}

    def step(phases: dict, index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward = {}
            _count(forward, "forward", lambda: bench.model(images))  # the network alone
            loss = _count(phases, "whole", lambda: bench(images, target)["loss"])
        whole = phases.pop("whole")
        net = forward["forward"]
        phases["forward"] = net
        phases["targets+loss"] = {
            "kernels": whole["kernels"] - net["kernels"],
            "no_kernel": whole["no_kernel"] - net["no_kernel"],
            "top": whole["top"] - net["top"],
        }
        _count(phases, "backward", loss.backward)
        _count(phases, "optimizer", optimizer.step)
        _count(phases, "ema", lambda: ema.update(bench.model, step=index + 1))

    return _measure(step)


def _measure(step) -> dict:
    """Two warm-up steps, then the counts of the third."""
    for index in range(2):
        step({}, index)
    phases: dict = {}
    step(phases, 2)
    out = {}
    for name in PHASES:
        entry = phases[name]
        out[name] = {
            "kernels": entry["kernels"],
            "no_kernel": entry["no_kernel"],
            "top": dict(entry["top"].most_common(5)),
        }
    out["total_kernels"] = sum(out[name]["kernels"] for name in PHASES)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=int,
        default=128,
        help="image side in px (counts barely depend on it: 'same' padding adds a "
        "pad operation only where a feature map needs one; default 128)",
    )
    parser.add_argument(
        "--batches",
        default="4,32",
        help="batch sizes, comma-separated (at least 2: BatchNorm trains)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import pandas as pd
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name, fn in (("effdet", effdet_phases), ("effscale", ours_phases)):
            counts = fn(args.size, batch)
            rows.append(
                {
                    "impl": name,
                    "batch": batch,
                    "size": args.size,
                    **{phase: counts[phase]["kernels"] for phase in PHASES},
                    "total": counts["total_kernels"],
                    "detail": counts,
                }
            )
            print(
                f"{name:8s} batch {batch:3d}: {counts['total_kernels']} kernel operations",
                flush=True,
            )
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "detail"} for r in rows])
    print(table.to_string(index=False))
    ratios = {}
    for batch in sorted({r["batch"] for r in rows}):
        pair = {r["impl"]: r for r in rows if r["batch"] == batch}
        ratios[f"batch {batch}"] = {
            phase: round(pair["effdet"][phase] / pair["effscale"][phase], 2)
            for phase in (*PHASES, "total")
            if pair["effscale"][phase]
        }
    print("effdet / effscale:", json.dumps(ratios))
    if args.json:
        import effdet
        import timm

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/step_ops.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]),
                    "torch": torch.__version__,
                    "timm": timm.__version__,
                    "effdet": getattr(effdet, "__version__", "unknown"),
                    "machine": platform.processor() or platform.machine(),
                    "rows": rows,
                    "effdet_over_effscale": ratios,
                },
                indent=2,
                default=int,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
