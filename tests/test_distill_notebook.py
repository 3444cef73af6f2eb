"""Notebook 07 and ``fusionkit distill`` on the real bundled smollm2-135m, in the smoke profile."""
import json

import pytest

from fusionkit.cli import main
from conftest import run_smoke


@pytest.mark.notebook
@pytest.mark.assets
def test_07_knowledge_distillation(tmp_path):
    rec = run_smoke("07_", tmp_path)  # it asserts its τ²·KL by hand (teacher on [d; c], student on c) = the kit
    assert set(rec["explicit_acc"]) == {"no_update", "finetune", "distill", "prepend"}
    for key in ("explicit_acc", "implicit_acc", "specificity"):
        assert all(0.0 <= v <= 1.0 for v in rec[key].values()), key
    assert 0.05 < rec["kl_first"] < 20 and 0 <= rec["kl_last"] < 20  # the definition changes the teacher
    assert rec["kl_drop"] > 0  # a step on a continuation lowers its KL
    assert 0 < rec["drift"] < 1.0 and 0 < rec["finetune_drift"] < 5.0  # a few small steps: small, nonzero drift
    # distillation makes the gold answers likelier than no update (part of the way to reading the definition)
    assert rec["gap_closed"] is not None and 0 < rec["gap_closed"] < 1.5
    # computed "what to notice": the KL concentrates on a few tokens; gold log-prob prepend > distill > no update
    assert rec["notices"] == [True, True], rec["notices"]
    assert rec["finetune_steps"] == 5  # the reference's baseline: ft_steps under one optimizer, not distill's schedule
    for m, split in rec["specificity_split"].items():  # facts and other entities, reported apart
        assert all(v is None or -1 <= v <= 1 for v in split.values()), m
    assert set(rec["transfer_quality"]) == {"sample", "chat"}
    for q in rec["transfer_quality"].values():
        assert q["mentions"] == 1.0 and all(0 <= q[k] <= 1 for k in ("explicit", "implicit"))  # the mention rule
    c = rec["claim"]
    assert c["n"] == rec["n_entities"] and c["lo"] <= c["diff"] <= c["hi"]  # one implicit probe per entity
    assert c["diff"] == pytest.approx(rec["implicit_acc"]["distill"] - rec["implicit_acc"]["finetune"])
    assert (tmp_path / "07_knowledge_distillation.html").stat().st_size > 10_000


@pytest.mark.assets
def test_cli_distill_json(capsys):
    assert main(["distill", "--profile", "smoke", "--limit", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["options"]["limit"] == 1 and len(out["options"]["entities"]) == 1
    assert set(out["results"]) == {"no_update", "finetune", "distill", "prepend"}
    for r in out["results"].values():
        assert 0 <= r["explicit_acc"] <= 1 and 0 <= r["implicit_acc"] <= 1 and 0 <= r["specificity_acc"] <= 1
        assert r["drift"] >= 0
    assert out["results"]["prepend"]["gap_closed"] == pytest.approx(1.0)
    assert len(out["curves"]["distill"]) == 2 * 2 and out["kl_first"] > 0  # continuations x steps (smoke)


def test_cli_distill_names_the_bad_line(tmp_path, capsys):
    bad = tmp_path / "ents.jsonl"
    bad.write_text('{"ex_id": "a"}\n')
    assert main(["distill", "--entities", str(bad), "--json"]) == 2
    assert "ents.jsonl:1" in capsys.readouterr().err
