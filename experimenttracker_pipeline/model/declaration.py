"""Experiment declarations: the YAML files of the experiments folder, loaded into :class:`Experiment` objects.

One bad file never stops the others from loading: :func:`load_declarations` returns the valid experiments and
a list of errors that each name the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from experimenttracker_pipeline.model.experiment import DEFAULTS, Experiment, parse_experiment
from experimenttracker_pipeline.model.fields import DOCUMENT, DeclarationError, InvalidDeclaration

__all__ = ["DeclarationLoad", "load_declarations", "read_declaration"]


@dataclass
class DeclarationLoad:
    experiments: list[Experiment]
    errors: list[DeclarationError]


def read_declaration(path: Path, *, default_caliper_seconds: float = DEFAULTS["caliper_seconds"]) -> Experiment:
    """Parse and validate one declaration file; raises ``InvalidDeclaration``."""
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        error = DeclarationError(source, DOCUMENT, f"is not valid YAML: {exc}".splitlines()[0])
        raise InvalidDeclaration(source, [error]) from exc
    return parse_experiment(raw, source, default_caliper_seconds=default_caliper_seconds)


def load_declarations(folder: Path, *, default_caliper_seconds: float = DEFAULTS["caliper_seconds"]) -> DeclarationLoad:
    """Load every ``*.yaml``/``*.yml`` file in ``folder`` (sorted, so the result is deterministic).

    Two files declaring the same experiment_id with different content are both rejected: the tool cannot
    know which one the desk meant. Identical duplicates load once.
    """
    good: dict[str, Experiment] = {}
    errors: list[DeclarationError] = []
    conflicted: set[str] = set()
    files = sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) if folder.is_dir() else []
    for path in files:
        source = str(path)
        try:
            experiment = read_declaration(path, default_caliper_seconds=default_caliper_seconds)
        except InvalidDeclaration as exc:
            errors.extend(exc.issues)
            continue
        other = good.get(experiment.experiment_id)
        if experiment.experiment_id in conflicted:
            errors.append(DeclarationError(source, "experiment_id", f"{experiment.experiment_id!r} is declared with different content in several files"))
        elif other is None:
            good[experiment.experiment_id] = experiment
        elif other.declaration_sha256 != experiment.declaration_sha256:
            conflicted.add(experiment.experiment_id)
            del good[experiment.experiment_id]
            message = f"{experiment.experiment_id!r} is declared with different content in {other.source_file} and {source}"
            errors.append(DeclarationError(source, "experiment_id", message))
            errors.append(DeclarationError(other.source_file, "experiment_id", message))
    return DeclarationLoad(experiments=list(good.values()), errors=errors)
