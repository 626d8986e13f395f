"""How many points of each shipped study meet its cost constraint: every grid point, or uniform
random samples of the space, through the study's own sampling (solve mode derives γ on the
multiply-adds measured on the built detectors). A point that misses the band is never trained,
so a study should keep this high; the shipped studies keep at least 90%.

Run: ``python benchmarks/solve_feasibility.py [--samples 200] [--json
benchmarks/results/solve_feasibility.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from effscale.search.feasibility import sample_feasibility
from effscale.search.study_file import load_study_file

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="random points per study")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    rows = []
    print(
        f"{'study':<28} {'kind':<9} {'mode':<6} {'points':>6} {'feasible':>9} "
        f"{'at bound':>9}  cost ratios of the feasible"
    )
    for path in sorted(STUDIES.glob("*.toml")):
        d = load_study_file(path)
        f = sample_feasibility(d, samples=args.samples)
        low, high = f.ratio_range or (float("nan"), float("nan"))
        rows.append(
            {
                "study": path.name,
                "kind": d.constraint.kind,
                "mode": d.constraint.mode,
                "points": f.points,
                "feasible": f.feasible,
                "fraction": f.fraction,
                "at_bound": f.at_bound,
                "ratio_low": f.ratio_range and low,
                "ratio_high": f.ratio_range and high,
            }
        )
        print(
            f"{path.name:<28} {d.constraint.kind:<9} {d.constraint.mode:<6} {f.points:>6} "
            f"{f.fraction:>9.1%} {f.at_bound:>9}  {low:.3f} to {high:.3f}",
            flush=True,
        )
    if args.json:
        command = "python benchmarks/solve_feasibility.py " + " ".join(argv or sys.argv[1:])
        args.json.write_text(
            json.dumps({"command": command.strip(), "studies": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
