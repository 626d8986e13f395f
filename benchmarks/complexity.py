"""Time to count params and MACs of the eight presets: effscale's analytic count against a
meta-device count of effdet's models (pip-installed effdet 0.4.1, the reference), in one run.

Run: ``python benchmarks/complexity.py [--repeats 5] [--json benchmarks/results/complexity_cpu.json]``

The reference builds each effdet model on the meta device (no memory) and runs one forward
under ``torch.utils.flop_counter.FlopCounterMode``; MACs are its FLOPs / 2. effscale's
``count_complexity`` reads the config alone. Both give params and MACs; the table shows both
counts so that agreement is visible next to the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def effdet_meta_count(name: str):
    """Params and MACs of effdet's ``tf_efficientdet_<name>`` counted on the meta device."""
    import effdet
    import torch
    from effdet.config import get_efficientdet_config
    from torch.utils.flop_counter import FlopCounterMode

    config = get_efficientdet_config(f"tf_efficientdet_{name}")
    with torch.device("meta"):
        model = effdet.EfficientDet(config, pretrained_backbone=False).eval()
        images = torch.empty(1, 3, *config.image_size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    return params, counter.get_total_flops() // 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per preset (median)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from effscale.detector.complexity import count_complexity
    from effscale.detector.config import PRESET_NAMES, preset

    count_complexity(preset("d0"))  # import and decode once, outside the timings
    effdet_meta_count("d0")
    rows = []
    for name in PRESET_NAMES:
        ours_s, ours = _time(lambda n=name: count_complexity(preset(n)), max(args.repeats, 20))
        ref_s, (ref_params, ref_macs) = _time(lambda n=name: effdet_meta_count(n), args.repeats)
        rows.append(
            {
                "preset": name,
                "ours_ms": round(ours_s * 1e3, 3),
                "effdet_meta_ms": round(ref_s * 1e3, 1),
                "speedup": round(ref_s / ours_s, 1),
                "ours_params": ours.params,
                "effdet_params": ref_params,
                "ours_gmacs": round(ours.macs / 1e9, 4),
                "effdet_gmacs": round(ref_macs / 1e9, 4),
            }
        )
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    total_ours = frame["ours_ms"].sum()
    total_ref = frame["effdet_meta_ms"].sum()
    print(
        f"\nall eight presets: ours {total_ours:.2f} ms, effdet meta-device {total_ref:.0f} ms, "
        f"{total_ref / total_ours:.0f}x faster; worst per candidate {frame['ours_ms'].max():.2f} ms "
        f"(target < 50 ms and >= 10x)"
    )
    if args.json:
        out = {
            "command": "python benchmarks/complexity.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "rows": rows,
            "total_ours_ms": round(total_ours, 3),
            "total_effdet_meta_ms": round(total_ref, 1),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
