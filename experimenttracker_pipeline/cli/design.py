"""Design subcommands of the `experimenttracker` command line: propose, allocate.

``register(subparsers)`` adds them to the main parser; ``dispatch(args, store)`` runs one and returns its exit
code, or None when ``args.command`` is not one of them. Vague or impossible requests raise ``CliError`` (exit 2,
one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from experimenttracker_pipeline.cli.errors import CliError
from experimenttracker_pipeline.model.contract import RISK_LEVELS
from experimenttracker_pipeline.model.experiment import MODES
from experimenttracker_pipeline.stages.design.proposer import (
    CI_METHODS,
    DesignRequest,
    NoHistory,
    VagueRequest,
    propose,
)
from experimenttracker_pipeline.stages.design.allocation import DEFAULT_FLOOR
from experimenttracker_pipeline.stages.design.history import HISTORY_METRICS
from experimenttracker_pipeline.store import Store

COMMANDS = frozenset({"propose", "allocate"})


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "propose", help="propose an experiment design from the control's history and write a draft declaration",
        description="Read the control strategy's fill history in the store (variance of the primary metric, fills "
                    "per day in the markets in scope; the paired deltas of earlier experiments against the same "
                    "control when there are enough) and write a draft declaration: samples per arm for the MDE, "
                    "alpha and power, the CI method and looks, rollout and initial share from the PoLB envelope and "
                    "risk, monitoring plan, stop rules, expected duration and the assumptions used.")
    p.add_argument("--variant", action="append", required=True, metavar="SLUG",
                   help="variant strategy slug (repeat for several treatments)")
    p.add_argument("--control", required=True, metavar="SLUG", help="control strategy slug")
    p.add_argument("--principal", metavar="P", help="on whose behalf, e.g. desk:sports (required)")
    p.add_argument("--subject", metavar="S", help="what is evaluated, e.g. strategy:sports-model-v2 (required)")
    p.add_argument("--metric", metavar="NAME", help=f"primary metric ({', '.join(HISTORY_METRICS)}) (required)")
    p.add_argument("--mde", type=float, required=True, metavar="X", help="minimum detectable effect (metric units)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--mode", choices=MODES, default="shadow_only")
    p.add_argument("--risk", choices=RISK_LEVELS, default="medium", help="PoLB max_risk_level (default medium)")
    p.add_argument("--max-share-bp", type=int, default=None, metavar="BP",
                   help="PoLB max_population_share_bp for limited_live (default 1000)")
    p.add_argument("--market", action="append", default=[], metavar="M", help="market in scope (repeatable; default all)")
    p.add_argument("--ci-method", choices=CI_METHODS, default="always_valid")
    p.add_argument("--history-days", type=float, default=None, metavar="D", help="only the last D days of history")
    p.add_argument("--assume-sd", type=float, default=None, metavar="X", help="paired delta sd to use instead of the history")
    p.add_argument("--experiment-id", default=None)
    p.add_argument("--start", default=None, metavar="ISO", help="started_at (default: now, UTC)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.yaml", help="write the draft here (default stdout)")

    a = subparsers.add_parser(
        "allocate", help="recommend traffic shares for a limited-live experiment (Thompson sampling, floor, PoLB cap)",
        description="Recommend the next traffic shares of EXPERIMENT_ID's arms from the posterior probability that "
                    "each is best on the declared objective (the primary metric, or the goal surface's score, over its "
                    "live fills since the start), with a floor per arm and "
                    "the treatments' total capped at the PoLB max_population_share_bp. Only the router applies it; "
                    "--emit writes an EXPERIMENT_ALLOCATION_RECOMMENDED OperationsReport (once per sample count).")
    a.add_argument("experiment_id", metavar="EXPERIMENT_ID")
    a.add_argument("--floor", type=float, default=None,
                   help=f"minimum share per arm (default: the declared adaptive_allocation.floor_bp, else {DEFAULT_FLOOR})")
    a.add_argument("--emit", action="store_true", help="write the recommendation to the report outbox")
    a.add_argument("--json", action="store_true", help="print the report payload as JSON")


def _start(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise CliError(f"--start {text!r} is not an ISO-8601 timestamp") from exc
    if parsed.tzinfo is None:
        raise CliError(f"--start {text!r} has no timezone; write it in UTC with a trailing Z")
    return parsed.astimezone(timezone.utc)


def _propose(args: argparse.Namespace, store: Store) -> int:
    req = DesignRequest(
        variants=tuple(args.variant), control=args.control, principal=args.principal, subject=args.subject,
        metric=args.metric, mde_bps=args.mde, alpha=args.alpha, power=args.power, mode=args.mode, risk=args.risk,
        max_population_share_bp=args.max_share_bp, markets=tuple(args.market), ci_method=args.ci_method,
        history_days=args.history_days, assume_sd_bps=args.assume_sd, experiment_id=args.experiment_id,
        started_at=_start(args.start))
    try:
        proposal = propose(store, req)
    except (VagueRequest, NoHistory) as exc:
        raise CliError(str(exc)) from exc
    text = proposal.to_yaml()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    days = proposal.expected_duration_days
    print(f"wrote {args.out}: {proposal.experiment_id}, {proposal.samples_per_arm} pairs per arm "
          f"({proposal.request.ci_method}, delta sd {proposal.sd_delta:.4g} from {proposal.sd_source}), "
          f"expected duration {'unknown' if days is None else f'{days:.1f} days'}")
    return 0


def _allocate(args: argparse.Namespace, store: Store) -> int:
    from experimenttracker_pipeline.stages.design.recommendation import AllocationRefused, recommend_for_experiment

    if args.floor is not None and not 0 <= args.floor < 0.5:
        raise CliError(f"--floor must be in [0, 0.5), got {args.floor}")
    try:
        result = recommend_for_experiment(store, args.experiment_id, floor=args.floor, emit=args.emit)
    except AllocationRefused as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps(result.payload, indent=2, sort_keys=True))
    else:
        print(f"{'arm':<12} {'slug':<28} {'n':>8} {'mean':>10} {'P(best)':>8} {'declared bp':>11} {'recommended bp':>14}")
        for arm, row in result.arms.items():
            print(f"{arm:<12} {row['slug']:<28} {row['n']:>8} {row['mean']:>10.4f} "
                  f"{result.recommendation.prob_best[arm]:>8.3f} {row['declared_share_bp']:>11} "
                  f"{row['recommended_share_bp']:>14}")
    if args.emit:
        word = f"emitted {result.report['report_id']}" if result.report else "already emitted for this sample count"
        print(f"EXPERIMENT_ALLOCATION_RECOMMENDED: {word}", file=sys.stderr)
    return 0


def dispatch(args: argparse.Namespace, store: Store | Callable[[], Store]) -> int | None:
    """Run a design command; None when ``args.command`` is not one of :data:`COMMANDS`."""
    command = getattr(args, "command", None)
    if command not in COMMANDS:
        return None
    run = _propose if command == "propose" else _allocate
    return run(args, store if isinstance(store, Store) else store())
