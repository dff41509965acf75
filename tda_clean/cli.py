"""The ``tda-clean`` command's parser, output and library commands; ``flows/cli.py`` adds the Prefect engine
and ``serve`` (this module never imports the flows).

    tda-clean run CONFIG [--set key.path=value ...] [--output DIR] [--fresh] [--engine prefect|local]
    tda-clean validate CONFIG [--set ...]
    tda-clean serve CONFIG --cron "0 2 * * *" [--name NAME] [--set ...]
    tda-clean review RUN_DIR
    tda-clean apply RUN_DIR --approved FILE

Exit codes: 0 success, 2 invalid config or data (one line), 3 release gate failed, 130/143 SIGINT/SIGTERM, 1 other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from tda_clean.config import load_config
from tda_clean.errors import InputError, TdaCleanError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tda-clean", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the whole cleaning flow"), ("validate", "check a config and print its hash")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a config value (repeatable), e.g. --set scenario.rate=0.2")
        if name == "run":
            p.add_argument("--output", help="run folder (default: a fresh folder under runs/)")
            p.add_argument("--fresh", action="store_true",
                           help="recompute every stage (default: resume the stages a killed run completed)")
            p.add_argument("--engine", choices=("prefect", "local"), default="prefect",
                           help="prefect: run as the Prefect flow 'clean' (default); local: plain library call")
    serve = sub.add_parser("serve", help="serve the clean flow on a cron schedule (needs a Prefect server)")
    serve.add_argument("config", help="YAML config file (read at each scheduled run)")
    serve.add_argument("--cron", required=True, help='cron expression, e.g. "0 2 * * *" (02:00 every night)')
    serve.add_argument("--name", default=None, help="deployment name (default: the config's name)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    review = sub.add_parser("review", help="write the flagged candidates of a run as CSV + HTML for approval")
    review.add_argument("run_dir")
    apply = sub.add_parser("apply", help="apply only the approved candidates, retrain and evaluate")
    apply.add_argument("run_dir")
    apply.add_argument("--approved", required=True, help="CSV with columns row_id, approved (yes/no)")
    return parser


def format_table(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    from tda_clean.evaluation.directions import direction, improvement
    from tda_clean.redact import redact
    from tda_clean.run_dir import REPORT

    rows = [("metric", "before", "after", "delta", "")]
    for key, before in report["before"].items():
        after = report["after"][key]
        gain = improvement(key, before, after)
        verdict = "" if gain is None else f"{'better' if gain > 0 else 'worse' if gain < 0 else 'same'} " \
                                          f"({direction(key)} is better)"
        rows.append((key, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}", verdict))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>8}  {r[2]:>8}  {r[3]:>8}  {r[4]}".rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    sel = report["selection"]
    quality = (f", precision {sel['precision']:.3f} recall {sel['recall']:.3f} on {sel['n_true']} corrupted rows"
               if "precision" in sel else "")
    acts = ", ".join(f"{k} {v}" for k, v in report["actions"].items() if v)
    lines += ["", f"detector {sel['detector']}: flagged {sel['n_flagged']}{quality}", f"actions: {acts or 'none'}"]
    gate = report["gate"]
    if gate["passed"]:
        lines.append("gate: passed")
    else:
        lines.append("gate: FAILED" + (" (the release alias was not moved)" if report["mlflow"].get("parent_run_id")
                                       else "") + "".join(f"\n  - {reason}" for reason in gate["reasons"]))
    if report.get("resumed_stages"):
        lines.append(f"resumed (not recomputed): {', '.join(report['resumed_stages'])}")
    lines.append(f"report: {Path(report['run_dir']) / REPORT}")
    if report["mlflow"].get("parent_run_id"):
        lines.append(f"mlflow: {redact(report['mlflow']['tracking_uri'])} run {report['mlflow']['parent_run_id']}")
    return "\n".join(lines)


def _review_command(args: argparse.Namespace) -> int:
    """``review RUN_DIR`` writes the candidates; ``apply RUN_DIR --approved FILE`` validates and continues the run."""
    from tda_clean.pipeline import run_pipeline, stage_review
    from tda_clean.review import read_approvals
    from tda_clean.run_dir import CONFIG, SELECTION, RunContext

    run_dir = Path(args.run_dir)
    if not (run_dir / CONFIG).is_file() or not (run_dir / SELECTION).is_file():
        raise InputError(f"{run_dir}: not a run folder with a completed detection stage (run `tda-clean run` first)")
    ctx = RunContext(load_config(run_dir / CONFIG), run_dir)
    if args.command == "review":
        paths = stage_review(ctx)
        print(f"{paths['n_candidates']} candidates: {paths['candidates']} (fill 'approved'), page: {paths['page']}")
        return 0
    if ctx.config.review != "required":
        raise InputError(f"{run_dir}: this run was not configured with `review: required`; nothing to approve")
    report = run_pipeline(ctx.config, run_dir, approvals=read_approvals(ctx, args.approved))
    print(format_table(report))
    return 0 if report["gate"]["passed"] else 3


def format_awaiting(result: dict[str, Any]) -> str:
    review = result["review"]
    return (f"detector {result['selection']['detector']} flagged {result['selection']['n_flagged']} rows; "
            f"awaiting review.\n  candidates: {review['candidates']}\n  page: {review['page']}\n"
            f"  then: tda-clean apply {result['run_dir']} --approved FILE")


def main(argv: list[str] | None = None, *, flow: Callable[..., dict[str, Any]] | None = None,
         serve: Callable[..., None] | None = None) -> int:
    """Run one command; ``flow(config, output=, fresh=)`` is the Prefect engine of ``run`` and
    ``serve(config_path, cron, name=, overrides=)`` the ``serve`` command (both given by ``flows/cli.py``)."""
    from tda_clean.interrupt import stop_on_signals

    args = _parser().parse_args(argv)
    with stop_on_signals(args.command != "serve"):  # one line, exit 130/143; serve: Prefect handles them
        return _main(args, flow, serve)


def _main(args: argparse.Namespace, flow: Callable[..., dict[str, Any]] | None,
          serve: Callable[..., None] | None) -> int:
    try:
        if (args.command == "serve" and serve is None) or (args.command == "run" and args.engine == "prefect"
                                                           and flow is None):
            raise InputError(f"{args.command}: needs the Prefect flows: use the `tda-clean` command or --engine local")
        if args.command == "serve":
            serve(args.config, args.cron, name=args.name, overrides=args.overrides)
            return 0
        if args.command in ("review", "apply"):
            return _review_command(args)
        config = load_config(args.config, args.overrides)
        if args.command == "validate":
            print(json.dumps({"valid": True, "config_hash": config.config_hash(), "name": config.name}))
            return 0
        if args.engine == "prefect":
            report = flow(config, output=args.output, fresh=args.fresh)
        else:
            from tda_clean.pipeline import run_pipeline

            report = run_pipeline(config, args.output, fresh=args.fresh)
    except TdaCleanError as exc:
        from tda_clean.redact import redact

        print(f"tda-clean: error: {redact(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"tda-clean: interrupted ({exc or 'SIGINT'}); completed stages kept, rerun to resume", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    if report["status"] == "awaiting_review":
        print(format_awaiting(report))
        return 0
    print(format_table(report))
    return 0 if report["gate"]["passed"] else 3
