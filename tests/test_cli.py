import json
import subprocess
import sys

import pytest

from fusionkit.cli import main


def test_unknown_zoo_is_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        main(["zoo", "nonexistent"])
    assert "invalid choice" in capsys.readouterr().err


def test_bad_input_prints_error_without_traceback(capsys, monkeypatch):
    import fusionkit.zoo as zoo

    monkeypatch.setattr(zoo, "build_zoo", lambda *a, **k: (_ for _ in ()).throw(ValueError("broken; fix: x")))
    assert main(["zoo", "multitask"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fusionkit zoo: error: broken; fix: x"


def test_assets_list_json(capsys):
    assert main(["assets", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"minilm", "smollm2-135m"}


@pytest.mark.assets
def test_zoo_multitask_smoke_json_every_expert_above_chance():
    """The foundation's acceptance check, run as a user would: `python -m fusionkit zoo multitask ...`."""
    out = subprocess.run([sys.executable, "-m", "fusionkit", "zoo", "multitask", "--profile", "smoke", "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["zoo"] == "multitask" and data["profile"] == "smoke"
    assert set(data["tasks"]) == {"sentiment", "subjectivity", "topic", "reuters", "author"}
    for e in data["experts"]:
        own = e["scores"][e["task"]]
        chance = data["tasks"][e["task"]]["chance"]
        assert set(own) == {"validation", "test"}
        assert own["test"] > chance + 0.1, (e["name"], own, chance)
        assert set(e["scores"]) == set(data["tasks"])  # the whole expert x task matrix
