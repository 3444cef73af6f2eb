"""New entities and their probes, read from the files the benchmarks were released as.

**Entity Inferences** (Onoe et al. 2023, arXiv 2305.01651; github.com/yasumasaonoe/entity_knowledge_propagation,
``data/entity_inferences/``). One JSON object per line is one *probe* about one entity::

    {"ex_id", "ent_str", "category", "definition", "def_target",
     "probe_sentences": {"template_0": {"probe_sentence": "... <extra_id_0> ...", "labels": [spans]}},
     "label": gold span}

The release ships explicit and implicit probes as *separate files* whose lines share ``ex_id``s
(``disaster_explicit_attribute_independent.json`` and ``disaster_implicit_attribute_independent.json`` both
have ``disaster_dev_0``). Lines carry no probe type, so it is taken from the file name (the word ``explicit`` or
``implicit`` in it); the kit's own files may say it in a ``probe_type`` field (explicit|implicit|fact), which wins.
``split`` (dev|test) is the kit's own field too; without it the split is the caller's argument.

**ECBD** (Entity Cloze By Date, Onoe et al. 2022, arXiv 2205.02832): a cloze sentence and its gold span, no
candidates. Two layouts load: the propagation release's (``data/ecbd/`` there: the lines above, with
``probe_sentences.template_k.label`` holding the gold span and no ``labels``), and ECBD's own
(github.com/yasumasaonoe/ecbd: ``masked_sentence``, ``answer_str``/``answer_d``, ``definition`` as a list of
sentences with ``[ENT_START]``/``[ENT_END]`` around mentions, ``entity_span_str``; its lines are grouped into
entities by the page in their ``ex_id``, ``{title}_{pageid}_{paragraph}_{sentence}``). Such probes have no
candidates and probe type ``ecbd``; they are scored by gold-span NLL (:mod:`fusionkit.distill.probes`).

``load_entities`` takes a file, a folder (its .json/.jsonl files in name order: the release's layout) or a list.
Spans come as ``<extra_id_0> X <extra_id_1>``; the markers are stripped. A masked definition (``<extra_id_0>``
plus ``def_target``) gets its span put back. Lines are grouped into entities by ``ent_str``, over all files read,
so an entity's explicit and implicit probes end up together; a repeated definition may differ in whitespace only.

**Probe identity.** ``Probe.uid`` is ``"<file name>:<ex_id>"`` (``/template_k`` added when a line has several
templates): unique by construction, because an ``ex_id`` repeated under one file name (in one file, or in two
files of one name) is an error naming both lines. A probe repeated verbatim in a file of another name (the ECBD
subsets overlap) is kept once, with a warning. Every per-probe table of a run is keyed by ``uid``
(``check_unique`` guards probes made in code too).

**Mention rule.** An entity is *named* in a text when its ``ent_str`` occurs in it, ignoring case (the test
``transfer.py`` and ``training.py`` apply). About a quarter of the Entity Inferences entities are not named
verbatim in their definitions ("Hurricane Nana (2020)" is defined as "Hurricane Nana was ...", "2020 Lekki
shooting" by its date). Such an entity loads with a warning that names it, ``Entity.named`` is False, and its
definition is kept exactly as released: the teacher, the prepend baseline and fine-tuning read the release's
text, as the reference code does. The probes ask by ``ent_str``, so that is the name the student must learn:
every transfer continuation is made to contain it (``transfer_set`` resamples, then puts the name in front and
continues from it), so after-mention positions always find it.

A probe is scored causally: its ``prefix`` is the sentence up to the marker and the span continues it.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import DistillError, EntityFormatError

DATA = Path(__file__).resolve().parent.parent / "data"  # fusionkit/data: the bundled files, package data
MASK = "<extra_id_0>"
_MARKERS = re.compile(r"<extra_id_\d+>")
_ENT_MARKERS = re.compile(r"\[ENT_(?:START|END)\]")  # ECBD's mention brackets in definitions
_TYPE_IN_NAME = re.compile(r"(?:^|[^a-z])(explicit|implicit)(?:[^a-z]|$)")
SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Probe:
    ex_id: str
    entity: str  # the ent_str this probe is about (the subject, for well-known facts)
    probe_type: str  # explicit | implicit | fact | ecbd | unknown
    sentence: str  # with <extra_id_0> where the answer goes
    candidates: tuple[str, ...]  # empty: a gold-span (ECBD) probe, scored by NLL only
    gold: str
    source: str = ""  # the file it was read from ("" for probes made in code)

    @property
    def uid(self) -> str:
        """The probe's identity in a run: file and ``ex_id`` (explicit and implicit files share ``ex_id``s)."""
        return f"{self.source}:{self.ex_id}" if self.source else self.ex_id

    @property
    def prefix(self) -> str:
        """The sentence up to the answer slot: what a causal model conditions on."""
        return self.sentence.split(MASK, 1)[0].rstrip()

    @property
    def sep(self) -> str:
        """What joins prefix and span: a space, or nothing where the slot is glued to a word (ECBD's random
        spans, ``"economic<extra_id_0>"`` with the span ``", cultural,"``)."""
        before = self.sentence.split(MASK, 1)[0]
        return " " if not before or before[-1].isspace() else ""

    @property
    def is_choice(self) -> bool:
        return bool(self.candidates)

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
    named: bool = True  # the definition contains the name verbatim (see the mention rule above)


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


def probe_type_from_name(path: str | Path) -> str | None:
    """``"explicit"`` / ``"implicit"`` when the file name says so (the release's layout), else None."""
    m = _TYPE_IN_NAME.search(Path(path).name.lower())
    return m.group(1) if m else None


def named_in(name: str, text: str) -> bool:
    return name.lower() in text.lower()


def _nearest_mention(name: str, text: str) -> str | None:
    """The longest run of the name's words (two or more, or the name less a "(2020)" qualifier) in ``text``."""
    bare = re.sub(r"\s*\([^)]*\)$", "", name)
    if bare != name and named_in(bare, text):
        return bare
    words = name.split()
    for n in range(len(words) - 1, 1, -1):
        for i in range(len(words) - n + 1):
            if named_in(" ".join(words[i:i + n]), text):
                return " ".join(words[i:i + n])
    return None


def _ecbd_native(obj: dict) -> dict:
    """ECBD's own layout (github.com/yasumasaonoe/ecbd) as a propagation-release line."""
    for key in ("ex_id", "masked_sentence", "definition", "entity_span_str"):
        if key not in obj:
            raise ValueError(f"missing field {key!r} (ECBD lines have masked_sentence, answer_str, definition, "
                             "entity_span_str)")
    answer = (obj.get("answer_d") or {}).get(MASK) or obj.get("answer_str")
    if not answer:
        raise ValueError("ECBD line without its gold span; fix: add answer_str or answer_d")
    sents = obj["definition"] if isinstance(obj["definition"], list) else [obj["definition"]]
    own = {k: obj[k] for k in ("category", "split", "probe_type") if k in obj}
    return {"ex_id": obj["ex_id"], "ent_str": obj["entity_span_str"], **own,
            "definition": " ".join(_ENT_MARKERS.sub("", " ".join(sents)).split()),
            "probe_sentences": {"template_0": {"probe_sentence": obj["masked_sentence"], "label": answer}}}


def _parse_line(obj: dict, split: str | None, require_definition: bool, file_type: str | None, source: str):
    """One line -> (grouping key, its entity, its probes)."""
    key = None
    if "masked_sentence" in obj:
        obj = _ecbd_native(obj)
        key = ("ecbd page", obj["ex_id"].rsplit("_", 2)[0])
    for k in ("ex_id", "ent_str", "definition", "probe_sentences"):
        if k not in obj:
            raise ValueError(f"missing field {k!r}")
    name = obj["ent_str"].strip()
    if not name:
        raise ValueError("empty ent_str")
    definition = full_definition(obj["definition"], obj.get("def_target"))
    if require_definition and not definition:
        raise ValueError(f"entity {name!r} has an empty definition; fix: write what should be taught into it")
    templates = obj["probe_sentences"]
    if not isinstance(templates, dict) or not templates:
        raise ValueError("probe_sentences must be a non-empty object {template_k: {probe_sentence, labels}}")
    probes = []
    for tkey, t in sorted(templates.items()):
        sentence = t.get("probe_sentence", "")
        if MASK not in sentence:
            raise ValueError(f"{tkey}: probe_sentence has no {MASK} answer slot")
        spans = t.get("labels") or obj.get("labels")
        if spans:  # multiple choice (Entity Inferences)
            if "label" not in obj and "label" not in t:
                raise ValueError("missing field 'label' (the gold candidate)")
            gold = strip_span(obj["label"] if "label" in obj else t["label"])
            candidates = tuple(strip_span(c) for c in spans)
            if len(candidates) < 2:
                raise ValueError(f"{tkey}: needs at least two candidate labels, got {len(candidates)}")
            if gold not in candidates:
                raise ValueError(f"{tkey}: gold label {gold!r} is not among the candidates {list(candidates)}; "
                                 "fix: add it to labels")
        elif "label" in t:  # gold span only (ECBD)
            gold, candidates = strip_span(t["label"]), ()
        else:
            raise ValueError(f"{tkey}: no candidates and no gold span; fix: give labels and label (Entity "
                             "Inferences) or probe_sentences.template_k.label (ECBD)")
        if not gold:
            raise ValueError(f"{tkey}: empty gold span")
        kind = obj.get("probe_type") or file_type or ("unknown" if candidates else "ecbd")
        suffix = "" if len(templates) == 1 else f"/{tkey}"
        probes.append(Probe(obj["ex_id"] + suffix, name, kind, sentence, candidates, gold, source))
    named = not require_definition or named_in(name, definition)
    entity = Entity(name, obj.get("category", "unknown"), obj.get("split", split), definition, named=named)
    return key or name, entity, probes


def _files(path) -> list[tuple[Path, str]]:
    """Every file to read, with the name its probes' ``uid`` carries: a file, a folder (its .json/.jsonl files,
    the release's layout) or a list of either."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise DistillError(f"folder {p} has no .json or .jsonl files; fix: pass the folder that holds the "
                                   "entity files (e.g. data/entity_inferences)")
            out += [(f, f.name) for f in found]
        elif p.exists():
            out.append((p, p.name))
        else:
            raise DistillError(f"entities file {p} does not exist; fix: pass 'bundled' or an existing path")
    if not out:
        raise DistillError("no entities file given; fix: pass 'bundled', a file, a folder or a list of files")
    return out


def read_entities(path, split: str | None = None, require_definition: bool = True) -> list[Entity]:
    """Parse JSON-lines files (a file, a folder or a list) into entities, in file order.

    Every problem is reported with its file and line before anything is returned; entities that their
    definition does not name load with a warning (the mention rule in the module docstring).
    """
    entities: dict = {}
    first_line: dict = {}  # grouping key -> "file:line" where the entity was first read
    key_of: dict[str, object] = {}  # entity name -> grouping key
    seen_uid: dict[str, str] = {}
    seen_probe: dict[Probe, tuple[Path, str]] = {}
    for file, source in _files(path):
        file_type, repeats, repeated_from = probe_type_from_name(file), 0, set()
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                at = f"{file}:{lineno}"
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("a line must be one JSON object")
                    key, entity, probes = _parse_line(obj, split, require_definition, file_type, source)
                except (ValueError, TypeError, AttributeError) as e:
                    raise EntityFormatError(f"{at}: {e}") from None
                known = entities.setdefault(key, entity)
                if known is entity:
                    if entity.name in key_of:  # only ECBD pages group by something else than the name
                        raise EntityFormatError(f"{at}: a second entity is named {entity.name!r} (the first is at "
                                                f"{first_line[key_of[entity.name]]}); fix: rename one of them")
                    first_line[key], key_of[entity.name] = at, key
                    if not entity.named:
                        hint = _nearest_mention(entity.name, entity.definition)
                        warnings.warn(f"{at}: entity {entity.name!r} is not named verbatim in its definition ("
                                      + (f"it says {hint!r}" if hint else "nor a shorter form of it") + "); loaded "
                                      "with the mention rule: the definition stays as released and every transfer "
                                      "continuation is made to name the entity", stacklevel=2)
                elif require_definition and (re.sub(r"\s+", "", known.definition)
                                             != re.sub(r"\s+", "", entity.definition)):
                    raise EntityFormatError(f"{at}: entity {entity.name!r} has a different definition than at "
                                            f"{first_line[key]}; fix: make them the same, or rename one entity")
                for p in probes:
                    p = replace(p, entity=known.name)
                    content = replace(p, source="")
                    if content in seen_probe and seen_probe[content][0] != file:
                        repeats += 1
                        repeated_from.add(seen_probe[content][1])
                        continue
                    if p.uid in seen_uid:
                        raise EntityFormatError(f"{at}: probe {p.ex_id!r} is already at {seen_uid[p.uid]}; fix: "
                                                "give every line of a file its own ex_id (and files their own names)")
                    seen_uid[p.uid], seen_probe[content] = at, (file, source)
                    known.probes.append(p)
        if repeats:
            warnings.warn(f"{file}: {repeats} probes repeat ones already read from {', '.join(sorted(repeated_from))}"
                          " (same ex_id, sentence and answer); each is kept once", stacklevel=2)
    if not entities:
        raise EntityFormatError(f"{path}: no entities found; fix: one JSON object per line")
    return list(entities.values())


def load_entities(path="bundled", split: str | None = None) -> list[Entity]:
    """The bundled entities (``"bundled"``) or those of a file, a folder or a list of files; ``split`` keeps only
    that part (dev/test).

    Entities without a ``split`` field (real benchmark files) take ``split`` itself, so they are all kept.
    """
    path = DATA / "entities.jsonl" if isinstance(path, str) and path == "bundled" else path
    ents = read_entities(path, split)
    if split is not None:
        ents = [e for e in ents if e.split == split]
        if not ents:
            raise DistillError(f"no entities with split {split!r} in {path}; fix: use dev or test")
    return ents


def load_facts(path=None) -> list[Probe]:
    """The bundled well-known-fact probes (capitals, animals, objects ...) used to measure specificity; or the
    probes of any entities file (e.g. ECBD's popular entities), their definitions unused."""
    ents = read_entities(path or DATA / "facts.jsonl", require_definition=False)
    return [p for e in ents for p in e.probes]


def check_unique(probes: list[Probe]) -> None:
    """Per-probe tables are keyed by ``uid``; two probes with one ``uid`` would score each other's rows."""
    seen: dict[str, Probe] = {}
    for p in probes:
        q = seen.setdefault(p.uid, p)
        if q is not p and q != p:
            raise DistillError(f"two probes share the identity {p.uid!r} ({q.entity!r}: {q.sentence!r} and "
                               f"{p.entity!r}: {p.sentence!r}); fix: give them different ex_ids or sources")
