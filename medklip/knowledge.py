"""The knowledge MedKLIP reads: a natural-language description of every entity and of every anatomical position.

The descriptions live in a JSON file (`knowledge.json` beside this module by default):

```json
{"entities": {"Opacity": "A lung opacity is ...", ...}, "positions": {"left": "On the patient's left ...", ...}}
```

`load_knowledge` reads it and checks it against the entities and positions a configuration names: a name without a
description (or an empty one) is an error naming the file and the missing names, raised before any model is built.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KNOWLEDGE_FILE = Path(__file__).with_name("knowledge.json")


class KnowledgeError(ValueError):
    """The description file is unusable or lacks a description the configuration needs (the message says which)."""


@dataclass(frozen=True)
class Knowledge:
    """Entity and position names with their descriptions, in model order."""

    entities: tuple[str, ...]
    entity_descriptions: tuple[str, ...]
    positions: tuple[str, ...]
    position_descriptions: tuple[str, ...]
    source: str


def _section(data: dict, key: str, path: Path) -> dict[str, str]:
    section = data.get(key)
    if not isinstance(section, dict):
        raise KnowledgeError(f"{path}: needs an object {key!r} mapping names to descriptions")
    for name, text in section.items():
        if not isinstance(text, str) or not text.strip():
            raise KnowledgeError(f"{path}: {key[:-1]} {name!r} has an empty or non-text description")
    return section


def _select(section: dict[str, str], wanted: Sequence[str] | None, kind: str, path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = tuple(section) if wanted is None else tuple(wanted)
    if len(set(names)) != len(names):
        raise KnowledgeError(f"{kind} names must be distinct, got {list(names)}")
    missing = [name for name in names if name not in section]
    if missing:
        raise KnowledgeError(f"{path} has no description for the {kind} {missing} named by the configuration "
                             f"(it describes {sorted(section)})")
    return names, tuple(section[name].strip() for name in names)


def load_knowledge(
    path: str | Path | None = None, entities: Sequence[str] | None = None, positions: Sequence[str] | None = None
) -> Knowledge:
    """Read the description file (default `medklip/knowledge.json`) and select `entities` / `positions` (default:
    all of the file's, in its order). Raises `KnowledgeError` naming every name that has no description."""
    path = Path(path) if path is not None else DEFAULT_KNOWLEDGE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KnowledgeError(f"description file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise KnowledgeError(f"description file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise KnowledgeError(f"{path}: expected a JSON object with 'entities' and 'positions'")
    entity_names, entity_texts = _select(_section(data, "entities", path), entities, "entity", path)
    position_names, position_texts = _select(_section(data, "positions", path), positions, "position", path)
    if not entity_names:
        raise KnowledgeError(f"{path}: no entity selected")
    return Knowledge(entity_names, entity_texts, position_names, position_texts, str(path))


__all__ = ["DEFAULT_KNOWLEDGE_FILE", "Knowledge", "KnowledgeError", "load_knowledge"]
