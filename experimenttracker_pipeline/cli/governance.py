"""Governance subcommands of the `experimenttracker` command line: trace, assign, approve, view.

``register(subparsers)`` adds the subcommands to the main parser; ``dispatch(args, store)`` runs one of them and
returns its exit code, or None when ``args.command`` is not a governance command. ``store`` is a ``Store`` or a
zero-argument callable returning one (so the main CLI only opens the store for these commands). User errors
(unknown experiment, invalid contract, bad role, unwritable --out) raise ``experimenttracker_pipeline.cli.CliError``
(exit 2, one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from experimenttracker_pipeline.model.fields import InvalidDeclaration
from experimenttracker_pipeline.stages.governance import operations as gov
from experimenttracker_pipeline.stages.governance.evaltrace import PERSONAS
from experimenttracker_pipeline.cli.errors import CliError
from experimenttracker_pipeline.store import Store

COMMANDS = frozenset({"trace", "assign", "approve", "view"})

def _error(message: str) -> Exception:
    return CliError(message)


def register(subparsers: Any) -> None:
    """Add ``trace``, ``assign``, ``approve`` and ``view`` to an argparse subparsers object."""
    trace = subparsers.add_parser(
        "trace", help="write an experiment's EvalTrace (canonical JSON) and print its digest",
        description="Write the EvalTrace of EXPERIMENT_ID as canonical JSON (si/jcs-strict/v1). With --out the file "
                    "is written and its sha256: digest printed; otherwise the JSON goes to stdout and the digest to "
                    "stderr. Exporting twice without new events gives identical bytes.")
    trace.add_argument("experiment_id", metavar="EXPERIMENT_ID")
    trace.add_argument("--out", metavar="FILE", type=Path, help="write the trace here instead of stdout")

    assign = subparsers.add_parser(
        "assign", help="deterministic variant assignment of unit ids (logged append-only)",
        description="Print the variant of each UNIT_ID: 'unit_id variant bucket reason [detail]' per line, or a "
                    "JSON array with --json. '-' reads unit ids from stdin, one per line. ETH-forbidden units are "
                    "forced to control (reason eth_forced_control, detail names the rule).")
    assign.add_argument("experiment_id", metavar="EXPERIMENT_ID")
    assign.add_argument("unit_ids", metavar="UNIT_ID", nargs="+", help="unit (opportunity / pair_key / principal) ids; - = stdin")
    assign.add_argument("--json", action="store_true", help="print a JSON array of objects")
    assign.add_argument("--market", metavar="M", help="market id of every unit (for market ETH rules)")
    assign.add_argument("--principal", metavar="P", help="principal id of every unit (for principal ETH rules)")
    assign.add_argument("--no-log", action="store_true", help="do not append the assignments to the log")

    approve = subparsers.add_parser(
        "approve", help="record an approval of the experiment's current contract digest",
        description=f"Append an approval of EXPERIMENT_ID's current contract by --approver in --role "
                    f"({', '.join(gov.KNOWN_ROLES)}). A changed contract needs new approvals.")
    approve.add_argument("experiment_id", metavar="EXPERIMENT_ID")
    approve.add_argument("--approver", required=True, metavar="NAME")
    approve.add_argument("--role", required=True, metavar="ROLE", help=", ".join(gov.KNOWN_ROLES))
    approve.add_argument("--note", metavar="TEXT")

    view = subparsers.add_parser("view", help="an experiment's result for a trader, risk or governance reader")
    view.add_argument("experiment_id", metavar="EXPERIMENT_ID")
    view.add_argument("--persona", required=True, choices=PERSONAS)


def _unit_ids(args_ids: Iterable[str], stdin: Any) -> Iterator[str]:
    for uid in args_ids:
        if uid == "-":
            for line in stdin:
                line = line.strip()
                if line:
                    yield line
        else:
            yield uid


def _declaration_error_line(exc: InvalidDeclaration) -> str:
    return f"{exc.file}: invalid experiment declaration: " + "; ".join(f"{i.path}: {i.message}" for i in exc.issues)


def dispatch(args: argparse.Namespace, store: Store | Callable[[], Store]) -> int | None:
    """Run a governance command; None when ``args.command`` is not one of :data:`COMMANDS`."""
    command = getattr(args, "command", None)
    if command not in COMMANDS:
        return None
    the_store = store if isinstance(store, Store) else store()
    try:
        return _RUN[command](args, the_store)
    except gov.GovernanceError as exc:
        raise _error(str(exc)) from exc
    except InvalidDeclaration as exc:
        raise _error(_declaration_error_line(exc)) from exc


def _trace(args: argparse.Namespace, store: Store) -> int:
    trace = gov.build_trace(store, args.experiment_id)
    if args.out is not None:
        try:
            trace.write(args.out)
        except OSError as exc:
            raise _error(f"cannot write {args.out}: {exc.strerror or exc}") from exc
        print(trace.digest)
        return 0
    out = sys.stdout
    out.flush()
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        buffer.write(trace.canonical_bytes)
        buffer.flush()
    else:
        out.write(trace.canonical_bytes.decode("utf-8"))
    print(trace.digest, file=sys.stderr)
    return 0


def _assign(args: argparse.Namespace, store: Store) -> int:
    units = list(_unit_ids(args.unit_ids, sys.stdin))
    if not units:
        raise _error("no unit ids given (stdin was empty)")
    n = len(units)
    markets = [args.market] * n if args.market else None
    principals = [args.principal] * n if args.principal else None
    result = gov.assign_units(store, args.experiment_id, units, market_ids=markets, principal_ids=principals,
                              log=not args.no_log)
    if args.json:
        print(json.dumps([{"unit_id": a.unit_id, "variant": a.variant, "bucket": a.bucket, "reason": a.reason,
                           "detail": a.detail} for a in result]))
    else:
        sys.stdout.write("".join(f"{a.unit_id} {a.variant} {a.bucket} {a.reason}" + (f" {a.detail}" if a.detail else "")
                                 + "\n" for a in result))
    status = gov.governance_status(store, args.experiment_id)
    if status.promotion_blocked and status.online:
        flagged = gov.flag_unapproved(store, args.experiment_id)
        missing = ", ".join(status.missing_roles) or "risk above the declared max_risk_level"
        print(f"experimenttracker: warning: {args.experiment_id} is online without the approvals its "
              f"{status.risk.level} risk level requires (missing: {missing}); it cannot be promoted"
              + ("; EXPERIMENT_UNAPPROVED reported" if flagged else ""), file=sys.stderr)
    return 0


def _approve(args: argparse.Namespace, store: Store) -> int:
    rec = gov.record_approval(store, args.experiment_id, args.approver, args.role, args.note)
    a, status = rec.approval, rec.status
    what = "recorded" if rec.new else "already recorded"
    print(f"{what}: {a.approver} approved {args.experiment_id} as {a.role} (contract {a.contract_digest}, "
          f"at {a.approved_at})")
    if status.approved:
        print(f"approved: yes (risk {status.risk.level}; reviewers {', '.join(status.risk.required_reviewers)})")
    else:
        print(f"approved: no (risk {status.risk.level}; missing: {', '.join(status.missing_roles)})")
    if status.risk.exceeds_max_risk_level:
        print("note: the assessed risk is above polb_config.max_risk_level; promotion stays blocked")
    return 0


def _view(args: argparse.Namespace, store: Store) -> int:
    sys.stdout.write(gov.persona_view(store, args.experiment_id, args.persona))
    return 0


_RUN: dict[str, Callable[[argparse.Namespace, Store], int]] = {
    "trace": _trace, "assign": _assign, "approve": _approve, "view": _view,
}
