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
    import fusionkit.models.zoo as zoo
    from fusionkit.core.errors import TaskError

    monkeypatch.setattr(zoo, "build_zoo", lambda *a, **k: (_ for _ in ()).throw(TaskError("broken; fix: x")))
    assert main(["zoo", "multitask"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fusionkit zoo: error: broken; fix: x"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the kit's own errors (bad input) become one line; anything else is a bug and must not be hidden."""
    import fusionkit.models.zoo as zoo

    monkeypatch.setattr(zoo, "build_zoo", lambda *a, **k: (_ for _ in ()).throw(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["zoo", "multitask"])


def test_merge_help_shows_the_methods_own_options_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "ties", "--help"])
    out = capsys.readouterr().out
    assert "--density" in out and "(default: 0.2" in out and "(default: 1.0)" in out  # TIES's λ is 1.0
    assert "--normalize" not in out and "arxiv.org/abs/2306.01708" in out
    with pytest.raises(SystemExit):
        main(["merge", "task_arithmetic", "--help"])
    assert "(default: 0.4)" in capsys.readouterr().out  # task arithmetic's own λ


def test_merge_list_and_help_do_not_import_torch():
    """`fusionkit --help` and `fusionkit merge --list` answer from the registry without loading torch."""
    code = ("import sys; from fusionkit.cli import main\n"
            "for argv in (['--help'], ['merge', '--list'], ['merge', 'ties', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('LOADED', sorted(m for m in ('torch._C', 'datasets', 'pandas', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "greedy_soup" in out and "regmean" in out
    assert out.strip().splitlines()[-1] == "LOADED []"


def test_assets_list_json(capsys):
    assert main(["assets", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"minilm", "smollm2-135m"}
    assert all(r["disk_mb"] == 0 and not r["cached"] for r in rows)  # a fresh cache: nothing extracted yet
    assert main(["assets", "--list"]) == 0
    assert "on disk MB" in capsys.readouterr().out


def test_the_kits_warnings_print_as_one_line(capsys, monkeypatch):
    import warnings

    import fusionkit.models.zoo as zoo
    from fusionkit.core.errors import CacheWarning, TaskError

    def build_zoo(*a, **k):
        warnings.warn("expert x at /c/experts/1 was damaged (...); moved it aside and building it again", CacheWarning)
        raise TaskError("stop here; fix: x")

    monkeypatch.setattr(zoo, "build_zoo", build_zoo)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["zoo", "multitask"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "fusionkit: warning: expert x at /c/experts/1 was damaged (...); moved it aside and building it again"


@pytest.mark.assets
def test_zoo_multitask_smoke_json_every_expert_above_chance():
    """The foundation's acceptance check, run as a user would: `python -m fusionkit zoo multitask ...`.

    Scored as the notebooks score (``auto``): the matrix is cached per precision, so the suite scores it once."""
    import torch

    from fusionkit.core.runtime import resolve_precision

    out = subprocess.run([sys.executable, "-m", "fusionkit", "zoo", "multitask", "--profile", "smoke", "--json",
                          "--precision", "auto"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["zoo"] == "multitask" and data["profile"] == "smoke"
    assert data["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert set(data["tasks"]) == {"sentiment", "subjectivity", "topic", "reuters", "author"}
    for e in data["experts"]:
        own = e["scores"][e["task"]]
        chance = data["tasks"][e["task"]]["chance"]
        assert set(own) == {"validation", "test"}
        assert own["test"] > chance + 0.1, (e["name"], own, chance)
        assert set(e["scores"]) == set(data["tasks"])  # the whole expert x task matrix


@pytest.mark.assets
def test_merge_cli_json_and_saved_folder_scores_the_same(tmp_path):
    """`fusionkit merge ties --json --out DIR` on the real smoke zoo; the folder reloads in plain transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fusionkit.models.evaluator import Evaluator
    from fusionkit.models.zoo import build_zoo

    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "fusionkit", "merge", "ties", "--zoo", "multitask", "--profile",
                           "smoke", "--density", "0.2", "--json", "--precision", "auto", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert data["method"] == "ties" and data["options"]["density"] == 0.2
    tasks = {"sentiment", "subjectivity", "topic", "reuters", "author"}
    assert set(data["results"]) == tasks and len(data["experts"]) == 5
    # five label spaces: no logit "ensemble"; the multi-task model is the reference instead
    assert data["ensemble"] is None and set(data["multitask"]) == tasks
    assert all(set(s) == {"validation", "test"} and 0 <= s["test"] <= 1 for s in data["results"].values())
    assert (out / "mergekit.yml").read_text().startswith("merge_method: ties")
    zoo = build_zoo("multitask", "smoke", quiet=True)
    model = AutoModelForSequenceClassification.from_pretrained(out / "author")
    ev = Evaluator(model, AutoTokenizer.from_pretrained(out / "author"), max_length=zoo.profile.max_length,
                   precision="auto")
    assert round(ev.score(zoo.tasks["author"], "test"), 4) == data["results"]["author"]["test"]


def test_merge_cli_rejects_options_the_method_lacks(capsys):
    assert main(["merge", "average", "--density", "0.3"]) == 2
    assert "average has no option(s) ['density']" in capsys.readouterr().err


@pytest.mark.assets
@pytest.mark.parametrize("method, extra, history_key", [
    # the target-only model and one source (--experts): the CLI's path whole; notebook 05 searches all five
    ("dfwe", ["--budget", "4", "--experts", "sentiment (target only)", "topic>sentiment"], "eval"),
    # two of the five experts (--experts): the CLI's path whole at two fifths of the scoring; notebook 06 evolves
    # the whole zoo
    ("evolve", ["--generations", "1", "--merger", "average", "--experts", "sentiment", "subjectivity"],
     "generation"),
])
def test_search_smoke_json(method, extra, history_key, tmp_path):
    """`fusionkit search dfwe|evolve --json` as a user runs it: trace, best (dev and test) and baselines."""
    out = tmp_path / "best"
    res = subprocess.run([sys.executable, "-m", "fusionkit", "search", method, "--profile", "smoke", "--json",
                          "--precision", "auto", "--out", str(out), *extra], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert data["method"] == method and data["history"] and history_key in data["history"][0]
    devs = [h["dev"] for h in data["history"]]
    assert max(devs) >= devs[0]
    assert 0 < data["best"]["dev"] <= 1 and all(0 < v <= 1 for v in data["best"]["test"].values())
    assert data["baselines"] and all({"dev", "test"} <= set(b) for b in data["baselines"].values())
    if method == "dfwe":
        # FETA's two baselines; the target-only fine-tune is in the pool too (here with one source)
        assert "Pretrain→Finetune (target only)" in data["baselines"]
        assert set(data["best"]["weights"]) == {"sentiment (target only)", "topic>sentiment"}
        assert "Source→Target, best by dev (topic>sentiment)" in data["baselines"]
        assert "sentiment (target only)" in data["best"]["weights"]
        assert data["dev_examples"] == 300  # the whole smoke dev split, not the first 60
    else:  # the subset: its two experts, scored on their two tasks
        assert data["options"]["experts"] == ["sentiment", "subjectivity"]
        assert set(data["best"]["test"]) == {"sentiment", "subjectivity"}
    assert (out / "recipe.json").exists()


def test_search_bad_input_is_one_line(capsys):
    assert main(["search", "dfwe", "--budget", "0"]) == 2
    assert "budget" in capsys.readouterr().err
