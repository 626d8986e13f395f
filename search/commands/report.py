"""``effscale report STUDY.toml --out DIR``: plots (PNG) and a Markdown report of a study."""

from __future__ import annotations

import argparse

from ..dashboard import artifact_store_for, attach_files
from ..report import write_report
from ..study_file import load_study_file
from ..trials import load_study, study_confirmations
from ..version import effscale_version

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale report``."""
    parser.description = (
        "Read the study of STUDY.toml (never creating it) and write ap_vs_macs.png, "
        "coefficients.png and report.md into DIR, atomically. DIR must be new or "
        "empty unless --overwrite."
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR's content when it is not empty"
    )
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument(
        "--attach",
        action="store_true",
        help="also attach the plots and report.md to the study, for "
        "optuna-dashboard (see effscale dashboard)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report; prints the folder and the best trial. Returns 0."""

    definition = load_study_file(args.study)
    study = load_study(definition, storage=args.storage)
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    written = write_report(
        definition,
        trials,
        out=args.out,
        overwrite=args.overwrite,
        study_text=attrs.get("study_file"),
        version=effscale_version(),
        made_by=attrs.get("effscale_version"),
        packing=(attrs.get("packing") or {}).get("reason"),
        confirmations=study_confirmations(study),
    )
    cost = written.plots.cost
    print(
        f"report of study {definition.study.name!r} ({len(trials)} trials, "
        f"{len(cost.numbers)} feasible scored, {len(cost.infeasible_numbers)} infeasible) "
        f"written to {written.out}"
    )
    if written.plots.region is not None:
        print(
            f"verdict: {written.plots.region.verdict} (region of {len(written.plots.region.region)} "
            "trials; see report.md)"
        )
    if args.attach:
        files = [*written.plots.paths.values(), written.report]
        attach_files(study, files, artifact_store=artifact_store_for(definition))
        print(f"attached {len(files)} files to the study")
    return 0
