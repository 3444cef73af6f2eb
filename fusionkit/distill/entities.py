"""New entities and their probes, in the Entity Inferences format (Onoe et al. 2023, arXiv 2305.01651).

One JSON object per line is one *probe* about one entity::

    {"ex_id", "ent_str", "category", "definition", "def_target",
     "probe_sentences": {"template_0": {"probe_sentence": "... <extra_id_0> ...", "labels": [spans]}},
     "label": gold span, "split": "dev"|"test", "probe_type": "explicit"|"implicit"|"fact"}

Spans come as ``<extra_id_0> X <extra_id_1>``; the markers are stripped. The definition may be masked the same
way (``<extra_id_0>`` in ``definition``, the answer in ``def_target``): the full definition puts the span back.
``split`` and ``probe_type`` are the kit's own fields; real benchmark files lack them, so the split defaults to
the caller's argument and the probe type to ``"unknown"``. Lines are grouped into entities by ``ent_str``.

A probe is scored causally (see :mod:`fusionkit.distill.probes`): its ``prefix`` is the sentence up to the marker and
each candidate is a continuation of it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DistillError, EntityFormatError

DATA = Path(__file__).resolve().parent.parent / "data"  # fusionkit/data: the bundled files, package data
MASK = "<extra_id_0>"
_MARKERS = re.compile(r"<extra_id_\d+>")


@dataclass(frozen=True)
class Probe:
    ex_id: str
    entity: str  # the ent_str this probe is about (the subject, for well-known facts)
    probe_type: str  # explicit | implicit | fact | unknown
    sentence: str  # with <extra_id_0> where the answer goes
    candidates: tuple[str, ...]
    gold: str

    @property
    def prefix(self) -> str:
        """The sentence up to the answer slot: what a causal model conditions on."""
        return self.sentence.split(MASK, 1)[0].rstrip()

    @property
    def gold_index(self) -> int:
        return self.candidates.index(self.gold)


@dataclass
class Entity:
    name: str
    category: str
    split: str | None
    definition: str
    probes: list[Probe] = field(default_factory=list)


def strip_span(span: str) -> str:
    """``"<extra_id_0> the island of Orsk <extra_id_1>"`` -> ``"the island of Orsk"``."""
    return " ".join(_MARKERS.sub(" ", span).split())


def full_definition(definition: str, def_target: str | None) -> str:
    """Put the masked answer span back into a definition (unmasked definitions pass through)."""
    if MASK not in definition:
        return definition.strip()
    if not def_target:
        raise ValueError("the definition is masked with <extra_id_0> but def_target is empty")
    return " ".join(definition.replace(MASK, strip_span(def_target)).split())


def _parse_line(obj: dict, split: str | None, require_definition: bool) -> tuple[Entity, list[Probe]]:
    for key in ("ex_id", "ent_str", "definition", "probe_sentences", "label"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    name = obj["ent_str"].strip()
    if not name:
        raise ValueError("empty ent_str")
    definition = full_definition(obj["definition"], obj.get("def_target"))
    if require_definition and name.lower() not in definition.lower():
        raise ValueError(f"entity {name!r} is not mentioned in its definition {definition[:60]!r}; "
                         "fix: write the name into the definition (distillation needs the mention)")
    gold = strip_span(obj["label"])
    templates = obj["probe_sentences"]
    if not isinstance(templates, dict) or not templates:
        raise ValueError("probe_sentences must be a non-empty object {template_k: {probe_sentence, labels}}")
    probes = []
    for key, t in sorted(templates.items()):
        sentence = t.get("probe_sentence", "")
        if MASK not in sentence:
            raise ValueError(f"{key}: probe_sentence has no {MASK} answer slot")
        candidates = tuple(strip_span(c) for c in (t.get("labels") or obj.get("labels") or []))
        if len(candidates) < 2:
            raise ValueError(f"{key}: needs at least two candidate labels, got {len(candidates)}")
        if gold not in candidates:
            raise ValueError(f"{key}: gold label {gold!r} is not among the candidates {list(candidates)}; "
                             "fix: add it to labels")
        suffix = "" if len(templates) == 1 else f"/{key}"
        probes.append(Probe(obj["ex_id"] + suffix, name, obj.get("probe_type", "unknown"), sentence,
                            candidates, gold))
    entity = Entity(name, obj.get("category", "unknown"), obj.get("split", split), definition)
    return entity, probes


def read_entities(path: str | Path, split: str | None = None, require_definition: bool = True) -> list[Entity]:
    """Parse a JSON-lines file into entities (probes grouped by ``ent_str``, file order kept).

    Every problem is reported with its line number before anything is returned.
    """
    path = Path(path)
    if not path.exists():
        raise DistillError(f"entities file {path} does not exist; fix: pass 'bundled' or an existing path")
    entities: dict[str, Entity] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("a line must be one JSON object")
                entity, probes = _parse_line(obj, split, require_definition)
            except (ValueError, TypeError, AttributeError) as e:
                raise EntityFormatError(f"{path}:{lineno}: {e}") from None
            known = entities.setdefault(entity.name, entity)
            if known.definition != entity.definition and require_definition:
                raise EntityFormatError(f"{path}:{lineno}: entity {entity.name!r} has two different definitions")
            known.probes.extend(probes)
    if not entities:
        raise EntityFormatError(f"{path}: no entities found; fix: one JSON object per line")
    return list(entities.values())


def load_entities(path: str | Path = "bundled", split: str | None = None) -> list[Entity]:
    """The bundled entities (``"bundled"``) or a file's; ``split`` keeps only that part (dev/test).

    Entities without a ``split`` field (real benchmark files) take ``split`` itself, so they are all kept.
    """
    path = DATA / "entities.jsonl" if str(path) == "bundled" else path
    ents = read_entities(path, split)
    if split is not None:
        ents = [e for e in ents if e.split == split]
        if not ents:
            raise DistillError(f"no entities with split {split!r} in {path}; fix: use dev or test")
    return ents


def load_facts(path: str | Path | None = None) -> list[Probe]:
    """The bundled well-known-fact probes (capitals, animals, objects ...) used to measure specificity."""
    ents = read_entities(path or DATA / "facts.jsonl", require_definition=False)
    return [p for e in ents for p in e.probes]
