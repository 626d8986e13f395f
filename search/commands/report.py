"""``effscale report STUDY.toml --out DIR``: plots (PNG) and a Markdown report of a study."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    parser = subparsers.add_parser(
        "report",
        help="write plots and a Markdown report of a study",
        description="Read the study of STUDY.toml (never creating it) and write ap_vs_macs.png, "
                    "coefficients.png and report.md into DIR, atomically. DIR must be new or "
                    "empty unless --overwrite.",
    )
    parser.add_argument("study", metavar="STUDY.toml", help="the study file")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR's content when it is not empty")
    parser.add_argument("--storage", metavar="URL", help="override [study] storage")
    parser.add_argument("--attach", action="store_true",
                        help="also attach the plots and report.md to the study, for "
                             "optuna-dashboard (see effscale dashboard)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report; prints the folder and the best trial. Returns 0."""
    from search.dashboard import artifact_store_for, attach_files, open_existing_study
    from search.report import write_report
    from search.runners.optuna_runner import effscale_version
    from search.study_file import load_study_file

    definition = load_study_file(args.study)
    study = open_existing_study(definition, storage=args.storage)
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    written = write_report(definition, trials, out=args.out, overwrite=args.overwrite,
                           study_text=attrs.get("study_file"), version=effscale_version(),
                           made_by=attrs.get("effscale_version"),
                           packing=(attrs.get("packing") or {}).get("reason"))
    cost = written.plots.cost
    print(f"report of study {definition.study.name!r} ({len(trials)} trials, "
          f"{len(cost.numbers)} feasible scored, {len(cost.infeasible_numbers)} infeasible) "
          f"written to {written.out}")
    if args.attach:
        files = [*written.plots.paths.values(), written.report]
        attach_files(study, files, artifact_store=artifact_store_for(definition))
        print(f"attached {len(files)} files to the study")
    return 0
