"""Experiment declarations: the YAML files of the experiments folder, loaded into :class:`Experiment` objects.

One bad file never stops the others from loading: :func:`load_declarations` returns the valid experiments and
a list of errors that each name the file and the field. Files are read with :class:`DeclarationLoader`, a safe
loader that also refuses what makes a declaration ambiguous or expensive: a key given twice in one mapping
(``require_human_signoff: true`` ... ``false``), merge keys (``<<``, which override silently), more than
MAX_ALIASES aliases or a document that expands to more than MAX_NODES nodes ("billion laughs"), and files over
MAX_DECLARATION_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from experimenttracker_pipeline.model.experiment import DEFAULTS, Experiment, parse_experiment
from experimenttracker_pipeline.model.fields import DOCUMENT, DeclarationError, InvalidDeclaration

__all__ = ["DeclarationLoad", "DeclarationLoader", "load_declarations", "read_declaration", "safe_load_declaration"]

MAX_DECLARATION_BYTES = 256 * 1024
MAX_ALIASES = 16
MAX_NODES = 20_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class RepeatedKey(ConstructorError):
    """A key given twice in one mapping; ``field`` is the key."""

    def __init__(self, key: Any, mark: Any):
        super().__init__(None, None, f"key {key!r} appears more than once in one mapping", mark)
        self.field = str(key)


class DeclarationLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, merge keys, and alias expansion beyond a small bound."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name): not accepted in a declaration",
                    self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise ConstructorError(None, None, "merge keys (<<) are not accepted in a declaration: write "
                                           "each field once", key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the base constructor names it
                    continue
                if repeated:
                    raise RepeatedKey(key, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node) -> None:
    """Refuse a document whose tree, aliases expanded, has more than MAX_NODES nodes, or which contains itself."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: deep nesting must not exhaust the interpreter's stack
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            in_progress.discard(key)
            if sizes[key] > MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"expands to more than {MAX_NODES} nodes",
                                                  node.start_mark)
            continue
        if key in sizes:
            continue
        if key in in_progress:
            raise yaml.composer.ComposerError(None, None, "contains itself through an alias", node.start_mark)
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def safe_load_declaration(text: str) -> Any:
    """The YAML document of one declaration, read with :class:`DeclarationLoader` (raises ``yaml.YAMLError``)."""
    loader = DeclarationLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@dataclass
class DeclarationLoad:
    experiments: list[Experiment]
    errors: list[DeclarationError]


def read_declaration(path: Path, *, default_caliper_seconds: float = DEFAULTS["caliper_seconds"]) -> Experiment:
    """Parse and validate one declaration file; raises ``InvalidDeclaration`` (never anything else for bad
    content)."""
    source = str(path)

    def invalid(message: str, field: str = DOCUMENT) -> InvalidDeclaration:
        return InvalidDeclaration(source, [DeclarationError(source, field, message)])

    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DECLARATION_BYTES + 1)
    except OSError as exc:
        raise invalid(f"cannot be read: {exc}") from exc
    if len(data) > MAX_DECLARATION_BYTES:
        raise invalid(f"is larger than {MAX_DECLARATION_BYTES // 1024} KiB")
    try:
        raw = safe_load_declaration(data.decode("utf-8"))
    except RepeatedKey as exc:
        raise invalid(f"is given more than once (line {exc.problem_mark.line + 1}): which value counts would be a "
                      "guess; write it once", exc.field) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise invalid(f"is not valid YAML: {exc}".splitlines()[0] + _where(exc)) from exc
    except (RecursionError, MemoryError, ValueError, OverflowError) as exc:
        raise invalid(f"is not a readable YAML declaration: {type(exc).__name__}") from exc
    try:
        return parse_experiment(raw, source, default_caliper_seconds=default_caliper_seconds)
    except InvalidDeclaration:
        raise
    except Exception as exc:  # a value the field checks missed: the file is rejected, the others still load
        raise invalid(f"could not be validated: {type(exc).__name__}: {exc}"[:500]) from exc


def _where(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return ""
    return f" ({problem}, line {mark.line + 1})" if problem not in str(exc).splitlines()[0] else f" (line {mark.line + 1})"


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
