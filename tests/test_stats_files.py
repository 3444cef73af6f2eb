"""Shareable statistics: a model's Gram / Fisher statistics written to a file by `fusionkit stats`, then merged
without the data - the same merge as measuring in place; another model's file, or another kind, is refused."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fusionkit.cli import main
from fusionkit.core.errors import MergeError
from fusionkit.merging.checkpoint_merge import merge_checkpoints
from test_checkpoints import _classifier, _csv


@pytest.mark.parametrize("kind, method", [("gram", "regmean"), ("fisher", "fisher")])
def test_published_statistics_give_the_same_merge_as_measuring_in_place(tmp_path, capsys, kind, method):
    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    data = _csv(tmp_path)
    files = []
    for m in (a, b):
        out = tmp_path / f"{m.name}.{kind}.safetensors"
        assert main(["stats", kind, "--model", str(m), "--data", str(data), "--out", str(out), "--json"]) == 0
        files.append(out)
        assert json.loads(capsys.readouterr().out)["tensors"] > 0
    with safe_open(str(files[0]), "pt") as f:
        meta = f.metadata()
    assert meta["kind"] == kind and meta["model_sha256"] and int(meta["examples"]) > 0
    assert json.loads(meta["data"])["file"] == "reviews.csv"
    merge_checkpoints(method, [a, b], tmp_path / "here", data=data)
    report = merge_checkpoints(method, [a, b], tmp_path / "shared", stats_files=files)  # no data at all
    assert any("read from" in n for n in report["notes"])
    here, shared = load_file(tmp_path / "here" / "model.safetensors"), load_file(tmp_path / "shared" / "model.safetensors")
    for name, t in here.items():
        torch.testing.assert_close(shared[name], t)


def test_statistics_of_another_model_or_kind_are_refused(tmp_path):
    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    data = _csv(tmp_path)
    assert main(["stats", "gram", "--model", str(a), "--data", str(data), "--out", str(tmp_path / "a.st")]) == 0
    assert main(["stats", "fisher", "--model", str(b), "--data", str(data), "--out", str(tmp_path / "b.st")]) == 0
    with pytest.raises(MergeError, match="measured on .*not on b"):
        merge_checkpoints("regmean", [a, b], tmp_path / "m", stats_files=[tmp_path / "a.st", tmp_path / "a.st"])
    with pytest.raises(MergeError, match="holds fisher statistics, the method needs gram"):
        merge_checkpoints("regmean", [a, b], tmp_path / "m", stats_files=[tmp_path / "a.st", tmp_path / "b.st"])
    with pytest.raises(MergeError, match="1 statistics files for 2 models"):
        merge_checkpoints("regmean", [a, b], tmp_path / "m", stats_files=[tmp_path / "a.st"])
    with pytest.raises(MergeError, match="uses no statistics"):
        merge_checkpoints("average", [a, b], tmp_path / "m", stats_files=[tmp_path / "a.st", tmp_path / "b.st"])
    assert main(["stats", "gram", "--model", str(a), "--data", str(tmp_path / "x.txt"), "--out",
                 str(tmp_path / "c.st")]) == 2  # one line: a CSV is needed
    assert not (tmp_path / "m").exists()
