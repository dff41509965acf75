"""The ``tda-clean`` command's parser, output and library commands; ``flows/cli.py`` adds the Prefect engine
and ``serve`` (this module never imports the flows).

    tda-clean run CONFIG [--set key.path=value ...] [--output DIR] [--fresh] [--engine prefect|local]
    tda-clean validate CONFIG [--set ...]
    tda-clean configs [NAME]
    tda-clean serve CONFIG --cron "0 2 * * *" [--name NAME] [--set ...]
    tda-clean review RUN_DIR
    tda-clean apply RUN_DIR --approved FILE

CONFIG is a file or the name of a bundled config (:mod:`tda_clean.config.bundled`). Exit codes: 0 success,
2 invalid config or data (one line), 3 release gate failed, 130/143 SIGINT/SIGTERM, 1 other. Progress lines of
the library (``tda_clean.*`` loggers) go to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from tda_clean.config import load_config
from tda_clean.errors import InputError, TdaCleanError


DESCRIPTION = """\
Find the training rows that hurt a model, act on them (remove, relabel, reweight, unlearn), retrain, and prove
the effect on a clean test set: a before/after table, a report folder and an MLflow run.

CONFIG is a YAML file or the name of a bundled example config (`tda-clean configs` lists them)."""

EXAMPLES = """\
examples:
  tda-clean run quickstart                          the bundled Adult label-noise example
  tda-clean run my.yaml --set detector.folds=3      a config of your own, one value overridden
  tda-clean run quickstart --engine local           without Prefect (a plain library call)
  tda-clean validate my.yaml                        check a config, print its hash
  tda-clean configs quickstart > my.yaml            copy a bundled config to edit
  tda-clean review runs/quickstart-...              candidates as CSV + HTML (config: review: required)
  tda-clean apply runs/quickstart-... --approved candidates.csv
  tda-clean serve my.yaml --cron "0 2 * * *"        every night at 02:00 (needs a Prefect server)

exit codes: 0 success, 2 invalid config or data (one line), 3 release gate failed,
            130/143 interrupted (SIGINT/SIGTERM; completed stages kept, rerun to resume), 1 other.
help on one command: tda-clean COMMAND --help"""

CONFIG_HELP = "YAML config file, or the name of a bundled config (see `tda-clean configs`)"
SET_HELP = "override one config value (repeatable), e.g. --set scenario.rate=0.2 --set train.epochs=20"


def _version() -> str:
    from tda_clean import __version__

    return f"tda-clean {__version__}"


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="tda-clean", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "run": ("run the whole cleaning flow: load, train, detect, act, retrain, evaluate, report",
                "Run the cleaning flow of CONFIG and print the before/after table. Completed stages of an earlier "
                "run in the same --output folder are reused unless --fresh."),
        "validate": ("check a config and print its hash (nothing runs)",
                     "Validate CONFIG (with its --set overrides) and print {valid, config_hash, name} as JSON."),
    }
    for name, (text, description) in commands.items():
        p = sub.add_parser(name, help=text, description=description)
        p.add_argument("config", metavar="CONFIG", help=CONFIG_HELP)
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP)
        if name == "run":
            p.add_argument("--output", metavar="DIR", help="run folder (default: a fresh folder under runs/)")
            p.add_argument("--fresh", action="store_true",
                           help="recompute every stage (default: resume the stages a killed run completed)")
            p.add_argument("--engine", choices=("prefect", "local"), default="prefect",
                           help="prefect: run as the Prefect flow 'clean', on PREFECT_API_URL or a temporary server "
                                "(default); local: plain library call, no Prefect")
    configs = sub.add_parser("configs", help="list the bundled example configs, or print one",
                             description="Without NAME: the bundled configs, one line each (name, summary, file). "
                                         "With NAME: that config's YAML, to copy and edit.")
    configs.add_argument("name", nargs="?", metavar="NAME", help="a bundled config to print (e.g. quickstart)")
    serve = sub.add_parser("serve", help="serve the clean flow on a cron schedule (needs a Prefect server)",
                           description="Register the clean flow of CONFIG as a Prefect deployment with a cron "
                                       "schedule and serve it until interrupted (PREFECT_API_URL must answer).")
    serve.add_argument("config", metavar="CONFIG", help=CONFIG_HELP + "; read again at each scheduled run")
    serve.add_argument("--cron", required=True, help='cron expression, e.g. "0 2 * * *" (02:00 every night)')
    serve.add_argument("--name", default=None, help="deployment name (default: the config's name)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP)
    review = sub.add_parser("review", help="write the flagged candidates of a run as CSV + HTML for approval",
                            description="Write the candidates of a run configured with `review: required` as a CSV "
                                        "(fill its 'approved' column) and an HTML page to look at them.")
    review.add_argument("run_dir", metavar="RUN_DIR", help="the run folder of `tda-clean run` (its --output)")
    apply = sub.add_parser("apply", help="apply only the approved candidates, retrain and evaluate",
                           description="Continue a run awaiting review: act on the approved rows only, retrain, "
                                       "evaluate and report.")
    apply.add_argument("run_dir", metavar="RUN_DIR", help="the run folder awaiting review")
    apply.add_argument("--approved", required=True, metavar="FILE", help="CSV with columns row_id, approved (yes/no)")
    return parser


def _configs_command(name: str | None) -> int:
    """``configs``: one line per bundled config; ``configs NAME``: that config's text."""
    from tda_clean.config.bundled import bundled_configs, summary

    configs = bundled_configs()
    if name is not None:
        if name.removesuffix(".yaml") not in configs:
            raise InputError(f"configs: no bundled config {name!r}; bundled: {', '.join(configs) or 'none installed'}")
        print(configs[name.removesuffix(".yaml")].read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, configs), default=0)
    for stem, path in configs.items():
        print(f"{stem:<{width}}  {summary(path)}")
    if configs:
        print(f"\n(files in {next(iter(configs.values())).parent}; run one with `tda-clean run NAME`)")
    return 0


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
    if "auto_budget" in sel:
        lines.insert(-1, f"automatic budget: {sel['auto_budget']['reason']}")
    if "agreement" in sel:  # label_noise: which detector its rule chose, and why
        at = f" at k = {sel['agreement_budget']}" if "agreement_budget" in sel else ""
        lines.insert(-1, f"label-noise rule: {sel['chosen']} (top-k overlap {sel['agreement']:.2f}{at}; loo_loss from "
                         f"{sel['min_agreement']:g})")
    if "gap_check" in sel:  # the group selectors' check of the validation gap
        lines.insert(-1, f"gap check: {sel['gap_check']['reason']}")
    if (action := report.get("action") or {}).get("recommended"):  # a detector with a view on the action
        lines.append(f"action: {action['kind']} ({action['reason']})")
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

    from tda_clean.progress import log_to_stderr

    args = _parser().parse_args(argv)
    with log_to_stderr(), stop_on_signals(args.command != "serve"):  # one line, exit 130/143; serve: Prefect's
        return _main(args, flow, serve)


def _main(args: argparse.Namespace, flow: Callable[..., dict[str, Any]] | None,
          serve: Callable[..., None] | None) -> int:
    try:
        if (args.command == "serve" and serve is None) or (args.command == "run" and args.engine == "prefect"
                                                           and flow is None):
            raise InputError(f"{args.command}: needs the Prefect flows: use the `tda-clean` command or --engine local")
        if args.command == "configs":
            return _configs_command(args.name)
        if args.command in ("review", "apply"):
            return _review_command(args)
        from tda_clean.config.bundled import resolve_config

        config_path = resolve_config(args.config)  # a file, or the name of a bundled config
        if args.command == "serve":
            serve(str(config_path), args.cron, name=args.name, overrides=args.overrides)
            return 0
        config = load_config(config_path, args.overrides)
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
    except Exception as exc:  # a bug, not bad input: the whole traceback, but never a credential in it
        import traceback

        from tda_clean.redact import redact

        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        return 1
    if report["status"] == "awaiting_review":
        print(format_awaiting(report))
        return 0
    print(format_table(report))
    return 0 if report["gate"]["passed"] else 3
