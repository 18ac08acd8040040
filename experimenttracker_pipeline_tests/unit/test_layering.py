"""The experiment model, the statistics, the causal estimators and the verdict's pure assembly import neither
Dagster nor SQLAlchemy: they are checked in a fresh interpreter, where nothing else has imported them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE_MODULES = (
    "experimenttracker_pipeline.model",
    "experimenttracker_pipeline.model.canonical",
    "experimenttracker_pipeline.model.contract",
    "experimenttracker_pipeline.model.declaration",
    "experimenttracker_pipeline.model.experiment",
    "experimenttracker_pipeline.model.fields",
    "experimenttracker_pipeline.model.numbers",
    "experimenttracker_pipeline.model.plans",
    "experimenttracker_pipeline.stats",
    "experimenttracker_pipeline.causal",
    "experimenttracker_pipeline.stages.verdict.assembly",
    "experimenttracker_pipeline.stages.verdict.rule",
    "experimenttracker_pipeline.stages.verdict.surface",
    "experimenttracker_pipeline.stages.verdict.wording",
    "experimenttracker_pipeline.stages.reporting.deciding",
    "experimenttracker_pipeline.stages.reporting.charts",
)
FORBIDDEN = ("dagster", "sqlalchemy")

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_neither_dagster_nor_sqlalchemy(module):
    probe = PROBE.format(forbidden=set(FORBIDDEN))
    done = subprocess.run([sys.executable, "-c", probe, module], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # bounds a hang; an import takes seconds, more on a loaded machine
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], f"{module} pulls in Dagster or SQLAlchemy"


def test_the_probe_detects_a_forbidden_import():
    """The check can fail: the store module imports SQLAlchemy."""
    probe = PROBE.format(forbidden=set(FORBIDDEN))
    done = subprocess.run([sys.executable, "-c", probe, "experimenttracker_pipeline.store"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "sqlalchemy" in json.loads(done.stdout.strip().splitlines()[-1])
