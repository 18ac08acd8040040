"""The experiment model: declarations parsed once into a typed :class:`Experiment` (core fields, statistics
plan, causal plan, contract), canonical JSON for digest-bound artifacts, and the numbers helper for reports.

Pure Python: imports neither Dagster nor SQLAlchemy.
"""

from experimenttracker_pipeline.model.contract import ExperimentContract
from experimenttracker_pipeline.model.declaration import DeclarationLoad, load_declarations, read_declaration
from experimenttracker_pipeline.model.experiment import (
    CORE_FIELDS,
    DEFAULTS,
    Experiment,
    experiment_from_row,
    parse_experiment,
)
from experimenttracker_pipeline.model.fields import DeclarationError, InvalidDeclaration
from experimenttracker_pipeline.model.plans import CausalPlan, StatisticsPlan

__all__ = [
    "CORE_FIELDS", "DEFAULTS", "CausalPlan", "DeclarationError", "DeclarationLoad", "Experiment",
    "ExperimentContract", "InvalidDeclaration", "StatisticsPlan", "experiment_from_row", "load_declarations",
    "parse_experiment", "read_declaration",
]
