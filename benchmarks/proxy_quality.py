"""Speed may not cost accuracy: AP after a fixed budget, the plain training path against the
fast one, on the same seeds and data, with each path's throughput and wall time.

Paths (``effscale.detector.train.TrainSettings`` / ``DataSettings``):

* ``plain``: DataLoader with PIL augmentation (``cache="off"``, ``--workers`` processes), eager
  step, default optimizer, loss checked on the host every step;
* ``fast``: effscale's defaults (all ``"auto"``): on CUDA the training split cached on the
  device with GPU augmentation, CUDA-graph step, fused optimizer, NaN check every 20 steps.

The data is generated (``make_synthetic_coco``) once into ``--data``. The noise is the spread
between seeds of one path; the verdict compares the paths' mean AP against it.

    python benchmarks/proxy_quality.py --json benchmarks/results/proxy_quality_h200.json
    python benchmarks/proxy_quality.py --device cpu --phi -4 --size 64 --steps 20 --batch 8 \\
        --train-images 64 --val-images 16 --seeds 0     # a CPU smoke run

On a CPU, ``auto`` leaves every lever off, so both paths would be the same; ``--force-fast``
turns on the fast path's levers that run anywhere (all but the CUDA graph, which the GPU tests
check to equal the eager step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PATHS = {
    "plain": (dict(cache="off"), dict(cuda_graph=False, fused_optimizer=False, check_every=1)),
    "fast": (dict(cache="auto"), dict()),
}
#: ``--force-fast``: the fast path's levers that run on any device, forced on (the CUDA graph
#: needs CUDA; on a GPU "auto" already gives all of these)
FORCED_FAST = (dict(cache="device"), dict(fused_optimizer=True, check_every=20))


def run(
    path: str,
    *,
    config,
    data_dir: Path,
    steps: int,
    batch: int,
    seed: int,
    lr: float,
    workers: int,
    device,
    force_fast: bool = False,
) -> dict:
    """One training run of ``path``; its final metrics, throughput and levers."""
    from effscale.detector.train import DataSettings, TrainSettings, train_proxy

    data_kw, step_kw = FORCED_FAST if force_fast and path == "fast" else PATHS[path]
    start = time.perf_counter()
    result = train_proxy(
        config,
        data=DataSettings(
            dir=data_dir, num_workers=workers if data_kw["cache"] == "off" else 0, **data_kw
        ),
        settings=TrainSettings(
            steps=steps, batch_size=batch, lr=lr, seed=seed, eval_every_epoch=False, **step_kw
        ),
        device=device,
        quiet=True,
    )
    return {
        "path": path,
        "seed": seed,
        "ap": round(result.metrics["ap"], 4),
        "ap50": round(result.metrics["ap50"], 4),
        "train_img_per_s": round(result.images_per_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "levers": result.levers,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="AP of the plain and fast training paths")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="d0", help="preset name, or use --phi")
    parser.add_argument("--phi", type=float, help="paper scaling at this phi instead of a preset")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--workers", type=int, default=4, help="plain path's loader workers")
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--data", help="dataset folder (generated here when missing)")
    parser.add_argument(
        "--force-fast",
        action="store_true",
        help="force the fast path's levers that run on any device (device cache "
        "and augmentation, fused optimizer, NaN check every 20 steps), so "
        "that a CPU run compares them too",
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from effscale.detector.config import from_scaling, preset
    from effscale.detector.data import make_synthetic_coco
    from effscale.detector.scaling import PAPER_SPEC
    from effscale.detector.train import resolve_device

    device = resolve_device(args.device)
    size = (args.size, args.size)
    if args.phi is not None:
        config = from_scaling(PAPER_SPEC, args.phi, num_classes=10, image_size=size)
    else:
        config = preset(args.preset, num_classes=10).replace(image_size=size)
    data_dir = Path(args.data or tempfile.mkdtemp(prefix="effscale-quality-")) / "synthetic"
    if not (data_dir / "train").exists():
        make_synthetic_coco(
            data_dir, n_train=args.train_images, n_val=args.val_images, seed=0, image_size=size
        )
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for path in PATHS:
            rows.append(
                run(
                    path,
                    config=config,
                    data_dir=data_dir,
                    steps=args.steps,
                    batch=args.batch,
                    seed=seed,
                    lr=args.lr,
                    workers=args.workers,
                    device=device,
                    force_fast=args.force_fast,
                )
            )
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows).drop(columns=["levers"])
    print(frame.to_string(index=False))
    summary = {}
    for path in PATHS:
        aps = [r["ap"] for r in rows if r["path"] == path]
        summary[path] = {
            "mean_ap": round(statistics.fmean(aps), 4),
            "seed_spread_ap": round(max(aps) - min(aps), 4),
            "mean_train_img_per_s": round(
                statistics.fmean(r["train_img_per_s"] for r in rows if r["path"] == path), 1
            ),
            "mean_wall_s": round(
                statistics.fmean(r["wall_s"] for r in rows if r["path"] == path), 1
            ),
        }
    noise = max(summary[p]["seed_spread_ap"] for p in PATHS)
    gap = summary["fast"]["mean_ap"] - summary["plain"]["mean_ap"]
    summary["ap_gap_fast_minus_plain"] = round(gap, 4)
    summary["within_noise"] = abs(gap) <= max(noise, 0.005)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": "python benchmarks/proxy_quality.py "
                    + " ".join(argv or sys.argv[1:]),
                    "device": (
                        torch.cuda.get_device_name(device)
                        if device.type == "cuda"
                        else platform.processor() or platform.machine()
                    ),
                    "torch": torch.__version__,
                    "config": {
                        "preset": None if args.phi is not None else args.preset,
                        "phi": args.phi,
                        "size": args.size,
                        "steps": args.steps,
                        "batch": args.batch,
                        "lr": args.lr,
                        "train_images": args.train_images,
                        "val_images": args.val_images,
                        "force_fast": args.force_fast,
                    },
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
