"""Real benchmark files load, and load right: small files in the exact layouts of the Entity Inferences release
(separate explicit / implicit files sharing ex_ids), of its ECBD files and of ECBD's own release. No model."""
import json
import warnings

import pytest

from fusionkit.core.errors import DistillError, EntityFormatError
from fusionkit.distill.entities import Probe, check_unique, load_entities, load_facts, probe_type_from_name

COUNTRIES = ["Australia", "Italy", "Norway", "Belize"]
VERBS = ["destroyed", "brewed", "acted"]


def release_line(ex_id, ent, definition, target, sentence, labels, label, **extra):
    """One line as the Entity Inferences release writes it (extra fields included, plain-text label)."""
    spans = [f"<extra_id_0> {x} <extra_id_1>" for x in labels]
    return json.dumps({"ex_id": ex_id, "definition": definition, "def_target": f"<extra_id_0> {target} <extra_id_1>",
                       "category": "disaster", "qid": "cyclone (Q79602)", "ent_str": ent, "attribute": target,
                       "generic_sentences": ["<ENT_NAME> is a type of destruction."], "specific_sentences": [],
                       "probe_sentences": {"template_0": {"probe_sentence": sentence, "labels": spans}},
                       "label": label, **extra})


NIRAN = ("Cyclone Niran", "Severe Tropical Cyclone Niran was a very powerful tropical cyclone that hit <extra_id_0> .")
NANA = ("Hurricane Nana (2020)", "Hurricane Nana was a minimal Category 1 hurricane that hit <extra_id_0> in 2020.")


def write_release(folder):
    """``disaster_explicit_*.json`` and ``disaster_implicit_*.json``: the same ex_ids, one entity not named."""
    folder.mkdir(exist_ok=True)
    explicit = [release_line("disaster_dev_0", *NIRAN, "Australia", "Cyclone Niran left damage in <extra_id_0>.",
                             COUNTRIES, "Australia"),
                release_line("disaster_dev_1", *NANA, "Belize", "Hurricane Nana (2020) left damage in <extra_id_0>.",
                             COUNTRIES, "Belize")]
    implicit = [release_line("disaster_dev_0", *NIRAN, "Australia", "Cyclone Niran totally <extra_id_0> my house.",
                             VERBS, "destroyed"),
                release_line("disaster_dev_1", *NANA, "Belize", "Hurricane Nana (2020) totally <extra_id_0> my house.",
                             VERBS, "destroyed")]
    (folder / "disaster_explicit_attribute_independent.json").write_text("\n".join(explicit) + "\n")
    (folder / "disaster_implicit_attribute_independent.json").write_text("\n".join(implicit) + "\n")
    return folder


def load_quietly(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_entities(path, **kw)


def test_release_folder_pairs_explicit_and_implicit_probes_that_share_ex_ids(tmp_path):
    folder = write_release(tmp_path / "entity_inferences")
    ents = load_quietly(folder)
    assert [e.name for e in ents] == ["Cyclone Niran", "Hurricane Nana (2020)"]
    niran = ents[0]
    assert niran.definition == ("Severe Tropical Cyclone Niran was a very powerful tropical cyclone that hit "
                                "Australia .")
    assert [p.probe_type for p in niran.probes] == ["explicit", "implicit"]  # from the file names
    assert [p.ex_id for p in niran.probes] == ["disaster_dev_0", "disaster_dev_0"]
    assert [p.uid for p in niran.probes] == ["disaster_explicit_attribute_independent.json:disaster_dev_0",
                                             "disaster_implicit_attribute_independent.json:disaster_dev_0"]
    assert niran.probes[0].gold == "Australia" and niran.probes[1].candidates == tuple(VERBS)
    probes = [p for e in ents for p in e.probes]
    assert len({p.uid for p in probes}) == 4
    check_unique(probes)
    # The same files listed one by one load the same; a file alone loads its half.
    files = sorted(folder.iterdir())
    assert [[p.uid for p in e.probes] for e in load_quietly(files)] == [[p.uid for p in e.probes] for e in ents]
    assert [p.probe_type for e in load_quietly(files[1]) for p in e.probes] == ["implicit", "implicit"]
    assert all(e.split == "dev" for e in load_quietly(folder, split="dev"))  # no split field: the caller's


def test_probe_type_field_wins_over_the_file_name(tmp_path):
    assert probe_type_from_name("tv_show_implicit_attribute_dependent_adjective.json") == "implicit"
    assert probe_type_from_name("explicitly.jsonl") is None and probe_type_from_name("real.jsonl") is None
    p = tmp_path / "x_explicit.jsonl"
    p.write_text(release_line("a", *NIRAN, "Australia", "It hit <extra_id_0>.", COUNTRIES, "Australia",
                              probe_type="implicit") + "\n")
    assert load_entities(p)[0].probes[0].probe_type == "implicit"


def test_entity_not_named_in_its_definition_loads_with_one_warning(tmp_path):
    folder = write_release(tmp_path / "ei")
    with pytest.warns(UserWarning) as record:
        ents = load_entities(folder)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1  # one per entity, though it is in two files
    assert "'Hurricane Nana (2020)' is not named verbatim" in messages[0] and "it says 'Hurricane Nana'" in messages[0]
    assert "mention rule" in messages[0] and "disaster_explicit_attribute_independent.json:2" in messages[0]
    nana = ents[1]
    assert not nana.named and ents[0].named
    assert nana.definition.startswith("Hurricane Nana was")  # kept as released
    assert len(nana.probes) == 2


def test_repeated_ex_id_in_one_file_names_both_lines(tmp_path):
    p = tmp_path / "dup.jsonl"
    line = release_line("a", *NIRAN, "Australia", "It hit <extra_id_0>.", COUNTRIES, "Australia")
    p.write_text(line + "\n" + line.replace("It hit", "It struck") + "\n")
    with pytest.raises(EntityFormatError, match=r"dup.jsonl:2: probe 'a' is already at .*dup.jsonl:1; fix"):
        load_entities(p)


def test_check_unique_refuses_probes_made_in_code_that_share_an_ex_id():
    a = Probe("x", "A", "explicit", "A is in <extra_id_0>.", ("b", "c"), "b")
    b = Probe("x", "A", "implicit", "A likes <extra_id_0>.", ("d", "e"), "d")
    check_unique([a, a])  # the same probe twice scores the same row
    with pytest.raises(DistillError, match="share the identity 'x'"):
        check_unique([a, b])
    check_unique([a, Probe("x", "A", "implicit", "A likes <extra_id_0>.", ("d", "e"), "d", source="f.json")])


def test_definitions_may_differ_in_whitespace_only(tmp_path):
    p = tmp_path / "two.jsonl"
    p.write_text(release_line("a", "Cyclone Niran", "Cyclone Niran hit Category1 <extra_id_0>.", "Australia",
                              "It hit <extra_id_0>.", COUNTRIES, "Australia") + "\n"
                 + release_line("b", "Cyclone Niran", "Cyclone Niran hit Category 1 <extra_id_0>.", "Australia",
                                "It struck <extra_id_0>.", COUNTRIES, "Australia") + "\n"
                 + release_line("c", "Cyclone Niran", "Cyclone Niran hit Norway.", "x",
                                "It struck <extra_id_0>.", COUNTRIES, "Australia") + "\n")
    with pytest.raises(EntityFormatError, match=r"two.jsonl:3: .*different definition than at .*two.jsonl:1"):
        load_entities(p)


ECBD_LINE = {"ex_id": "Mangum Fire_64297770_2_5", "definition": "The Mangum Fire was a wildfire burning <extra_id_0> "
             "Forest in Arizona.", "def_target": "<extra_id_0> in Kaibab National <extra_id_1>", "category": "tv_show",
             "qid": ["wildfire (Q169950)"], "ent_str": "Mangum Fire", "attribute": "n/a", "additional_sentences": [],
             "conceptnet": [], "probe_sentences": {"template_0": {
                 "probe_sentence": "On June 14, the Mangum Fire jumped control lines towards <extra_id_0>, Arizona.",
                 "label": "<extra_id_0> Mangum Springs <extra_id_1>"}}}


def test_ecbd_lines_of_the_propagation_release_load_as_gold_span_probes(tmp_path):
    glued = json.loads(json.dumps(ECBD_LINE))
    glued["ex_id"] = "Mangum Fire_64297770_3_1"
    glued["probe_sentences"]["template_0"] = {"probe_sentence": "The Mangum Fire was economic<extra_id_0> and sad.",
                                              "label": "<extra_id_0> , cultural, <extra_id_1>"}
    p = tmp_path / "all_ent_2020_2021_np_easy.json"
    p.write_text(json.dumps(ECBD_LINE) + "\n" + json.dumps(glued) + "\n")
    (ent,) = load_entities(p)
    assert ent.definition == "The Mangum Fire was a wildfire burning in Kaibab National Forest in Arizona."
    first, second = ent.probes
    assert first.candidates == () and not first.is_choice and first.gold == "Mangum Springs"
    assert first.probe_type == "ecbd" and first.sep == " " and first.prefix.endswith("towards")
    assert second.gold == ", cultural," and second.sep == "" and second.prefix.endswith("economic")
    # The ECBD subsets overlap: a probe read again from another file is kept once.
    (tmp_path / "all_ent_2020_2021_np_500samples.json").write_text(json.dumps(ECBD_LINE) + "\n")
    with pytest.warns(UserWarning, match="1 probes repeat ones already read from all_ent_2020_2021_np_500samples"):
        (ent,) = load_entities(tmp_path)
    assert [p.ex_id for p in ent.probes] == ["Mangum Fire_64297770_2_5", "Mangum Fire_64297770_3_1"]


def test_ecbd_own_layout_loads_grouped_by_page(tmp_path):
    def native(ex_id, span, sentence, answer):
        return json.dumps({"ex_id": ex_id, "masked_sentence": sentence,
                           "answer_str": f"<extra_id_0> {answer} <extra_id_1>", "answer_d": {"<extra_id_0>": answer},
                           "span_type": "NP-COMMON", "year": "2019", "entity_span_str": span,
                           "entity_span_loc": [1, 2],
                           "definition": [("[ENT_START]Generative Pre-trained Transformer 2[ENT_END] "
                                           "([ENT_START]GPT-2[ENT_END]) is an open-source model created by OpenAI."),
                                          "GPT-2 translates text."]})
    p = tmp_path / "np_spans_dev.json"
    p.write_text(native("GPT-2_66045029_4_0", "GPT-2", "The GPT-2 model has <extra_id_0>.", "1.5 billion parameters")
                 + "\n" + native("GPT-2_66045029_5_1", "Generative Pre-trained Transformer 2",
                                 "Generative Pre-trained Transformer 2 was made by <extra_id_0>.", "OpenAI") + "\n")
    (ent,) = load_entities(p, split="dev")
    assert ent.name == "GPT-2" and ent.named
    assert ent.definition == ("Generative Pre-trained Transformer 2 (GPT-2) is an open-source model created by "
                              "OpenAI. GPT-2 translates text.")
    assert [(q.entity, q.gold, q.candidates) for q in ent.probes] == [("GPT-2", "1.5 billion parameters", ()),
                                                                      ("GPT-2", "OpenAI", ())]
    assert load_facts(p)[1].uid == "np_spans_dev.json:GPT-2_66045029_5_1"  # ECBD probes as specificity probes


@pytest.mark.parametrize("bad, message", [
    ({**ECBD_LINE, "probe_sentences": {"template_0": {"probe_sentence": "It hit <extra_id_0>."}}},
     "no candidates and no gold span"),
    ({**ECBD_LINE, "probe_sentences": {"template_0": {"probe_sentence": "It hit <extra_id_0>.", "label": " "}}},
     "empty gold span"),
    ({"ex_id": "GPT-2_1_0_0", "masked_sentence": "It has <extra_id_0>.", "definition": ["d"],
      "entity_span_str": "GPT-2"}, "without its gold span"),
    ({**ECBD_LINE, "definition": " "}, "empty definition"),
])
def test_bad_ecbd_lines_name_the_line_and_the_fix(tmp_path, bad, message):
    p = tmp_path / "ecbd.json"
    p.write_text(json.dumps(ECBD_LINE) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(EntityFormatError, match=message) as err:
        load_entities(p)
    assert "ecbd.json:2" in str(err.value)


def test_missing_and_empty_paths_are_distill_errors(tmp_path):
    with pytest.raises(DistillError, match="no .json or .jsonl files"):
        load_entities(tmp_path)
    with pytest.raises(DistillError, match="does not exist"):
        load_entities([tmp_path / "nope.json"])
