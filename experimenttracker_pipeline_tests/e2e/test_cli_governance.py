"""The governance commands (trace, assign, approve, view): in-process through register()/dispatch(), and as a
process with exit codes and stdin, on both databases."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experimenttracker_pipeline import cli
from experimenttracker_pipeline.cli import governance as cli_governance
from experimenttracker_pipeline.model.experiment import parse_experiment
from experimenttracker_pipeline.stages.governance import operations as gov
from experimenttracker_pipeline.stages.governance.assignment import bucket_of
from experimenttracker_pipeline.stages.governance.risk import UNAPPROVED
from experimenttracker_pipeline_tests.contract_fixtures import EXAMPLE_YAML
from experimenttracker_pipeline.stages.declarations.queries import register_experiment

EXP = "exp_sports_v2"


@pytest.fixture
def online(store):
    assert register_experiment(store, parse_experiment(yaml.safe_load(EXAMPLE_YAML), "experiments/exp.yaml")) == "new"
    return store


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="experimenttracker")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    cli_governance.register(sub)
    return parser.parse_args(argv)


def run(store, *argv: str) -> int | None:
    return cli_governance.dispatch(parse(*argv), store)


# ---- in-process --------------------------------------------------------------------------------------
def test_dispatch_ignores_other_commands(online):
    opened = []
    assert cli_governance.dispatch(parse("status"), lambda: opened.append(1)) is None
    assert opened == []  # the store is only opened for governance commands
    assert cli_governance.COMMANDS == {"trace", "assign", "approve", "view"}


def test_trace_out_twice_same_bytes_and_printed_digest(online, tmp_path, capsys):
    assert run(online, "trace", EXP, "--out", str(tmp_path / "a.json")) == 0
    digest_a = capsys.readouterr().out.strip()
    assert run(lambda: online, "trace", EXP, "--out", str(tmp_path / "b.json")) == 0
    digest_b = capsys.readouterr().out.strip()
    data = (tmp_path / "a.json").read_bytes()
    assert data == (tmp_path / "b.json").read_bytes()
    assert digest_a == digest_b == "sha256:" + hashlib.sha256(data).hexdigest()
    assert json.loads(data)["experiment_id"] == EXP


def test_trace_to_stdout_writes_the_canonical_bytes(online, capsysbinary):
    assert run(online, "trace", EXP) == 0
    out, err = capsysbinary.readouterr()
    trace = gov.build_trace(online, EXP)
    assert out == trace.canonical_bytes and err.decode().strip() == trace.digest


def test_assign_lines_json_stdin_market_and_no_log(online, monkeypatch, capsys):
    assert run(online, "assign", EXP, "u1", "opp-000042", "u2") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[0] for line in lines] == ["u1", "opp-000042", "u2"]
    assert lines[1].split() == ["opp-000042", "control", str(bucket_of("opp-000042", EXP, "v1")),
                                "eth_forced_control", "unit:opp-000042"]
    u1 = lines[0].split()
    assert len(u1) == 4 and u1[2] == str(bucket_of("u1", EXP, "v1")) and u1[3] == "assigned"
    # The experiment is online and unapproved: the trading side is warned and the alert is raised once.
    assert "cannot be promoted" in captured.err and "EXPERIMENT_UNAPPROVED reported" in captured.err
    assert len(online.reports(EXP, UNAPPROVED)) == 1

    monkeypatch.setattr(sys, "stdin", io.StringIO("s1\n\n  s2  \ns3\n"))
    assert run(online, "assign", EXP, "first", "-", "--json", "--market", "us-election-2028") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["unit_id"] for r in rows] == ["first", "s1", "s2", "s3"]
    assert {(r["variant"], r["reason"], r["detail"]) for r in rows} == \
        {("control", "eth_forced_control", "market:us-election-2028")}
    assert online.scalar("SELECT COUNT(*) FROM assignments") == 7

    assert run(online, "assign", EXP, "z1", "--no-log") == 0
    assert online.scalar("SELECT COUNT(*) FROM assignments") == 7
    assert len(online.reports(EXP, UNAPPROVED)) == 1


def test_assign_empty_stdin_is_a_user_error(online, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n"))
    with pytest.raises(cli.CliError, match="no unit ids"):
        run(online, "assign", EXP, "-")


def test_approve_and_view(online, capsys):
    assert run(online, "approve", EXP, "--approver", "alice", "--role", "technical_lead", "--note", "ok") == 0
    out = capsys.readouterr().out
    assert "recorded: alice approved exp_sports_v2 as technical_lead" in out
    assert "approved: no (risk medium; missing: domain_expert)" in out
    assert run(online, "approve", EXP, "--approver", "alice", "--role", "technical_lead") == 0
    assert capsys.readouterr().out.startswith("already recorded:")
    assert run(online, "approve", EXP, "--approver", "bob", "--role", "DOMAIN_EXPERT") == 0
    assert "approved: yes" in capsys.readouterr().out

    assert run(online, "view", EXP, "--persona", "governance") == 0
    view = capsys.readouterr().out
    assert "Approved: yes" in view and gov.build_trace(online, EXP).digest in view
    assert run(online, "view", EXP, "--persona", "trader") == 0
    assert capsys.readouterr().out.startswith("# exp_sports_v2: sports-model-v2 vs sports-model")
    with pytest.raises(SystemExit):
        parse("view", EXP, "--persona", "ceo")


@pytest.mark.parametrize("argv, message", [
    (("approve", EXP, "--approver", "alice", "--role", "ceo"), "unknown role 'ceo'"),
    (("approve", EXP, "--approver", " ", "--role", "legal"), "approver must be a non-empty string"),
    (("approve", "nope", "--approver", "alice", "--role", "legal"), "unknown experiment 'nope'"),
    (("trace", "nope"), "unknown experiment 'nope'"),
    (("assign", "nope", "u1"), "unknown experiment 'nope'"),
    (("view", "nope", "--persona", "risk"), "unknown experiment 'nope'"),
])
def test_user_errors_raise_cli_error(online, argv, message):
    with pytest.raises(cli.CliError, match=message):
        run(online, *argv)


def test_unwritable_out_is_a_user_error(online, tmp_path):
    with pytest.raises(cli.CliError, match="cannot write"):
        run(online, "trace", EXP, "--out", str(tmp_path / "missing" / "dir" / "t.json"))


# ---- as a process ----------------------------------------------------------------------------------------
@pytest.fixture
def command(online, tmp_path):
    """Run a governance command as a user types it: `python -m experimenttracker_pipeline.cli ...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
    env.update(EXPERIMENTTRACKER_DATA_DIR=str(tmp_path / "data"), EXPERIMENTTRACKER_DB_URL=online.url,
               PYTHONPATH=str(Path(cli.__file__).resolve().parents[2]))

    def invoke(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        # The timeout only stops a hung process; a loaded machine takes seconds per command, not minutes.
        return subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *argv], input=stdin,
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)

    return invoke


def test_process_trace_assign_approve_view(command, tmp_path):
    a = command("trace", EXP, "--out", str(tmp_path / "a.json"))
    b = command("trace", EXP, "--out", str(tmp_path / "b.json"))
    assert a.returncode == b.returncode == 0, a.stderr
    assert a.stdout == b.stdout and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.stdout.strip() == "sha256:" + hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()

    assigned = command("assign", EXP, "u1", "-", "--json", stdin="s1\ns2\n")
    assert assigned.returncode == 0, assigned.stderr
    assert [r["unit_id"] for r in json.loads(assigned.stdout)] == ["u1", "s1", "s2"]
    plain = command("assign", EXP, "-", "--no-log", stdin="opp-000042\n")
    assert plain.returncode == 0 and plain.stdout.split()[1:4] == ["control", str(bucket_of("opp-000042", EXP, "v1")),
                                                                   "eth_forced_control"]

    approved = command("approve", EXP, "--approver", "alice", "--role", "technical_lead")
    assert approved.returncode == 0 and "missing: domain_expert" in approved.stdout
    view = command("view", EXP, "--persona", "risk")
    assert view.returncode == 0 and view.stdout.startswith("# Risk view: exp_sports_v2")


@pytest.mark.parametrize("argv, code, message", [
    (("approve", EXP, "--approver", "alice", "--role", "ceo"), 2, "unknown role 'ceo'"),
    (("trace", "nope"), 2, "unknown experiment 'nope'"),
    (("view", EXP, "--persona", "ceo"), 2, "invalid choice"),
])
def test_process_user_errors_exit_2_with_one_line(command, argv, code, message):
    result = command(*argv)
    assert result.returncode == code
    assert message in result.stderr
    if "invalid choice" not in message:
        assert len(result.stderr.strip().splitlines()) == 1
