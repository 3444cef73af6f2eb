"""mergekit configs both ways: every config the kit exports reads back into a merge with the same result, and
`fusionkit merge --config` runs a mergekit YAML on checkpoint folders; what cannot be expressed is named."""
from types import SimpleNamespace

import pytest
import torch
import yaml

from fusionkit.core.errors import MergeError
from fusionkit.merging.export import mergekit_config, to_yaml
from fusionkit.merging.merge import merge
from fusionkit.merging.mergekit_import import from_mergekit
from fusionkit.merging.registry import get_method
from fusionkit.merging.zoo_merge import Merged

CASES = [("average", {}, [1.0, 2.0, 1.0]), ("task_arithmetic", {"lam": 0.5}, [1.0, 0.5, 2.0]),
         ("ties", {"density": 0.4, "lam": 1.2}, None), ("dare", {"p": 0.3, "lam": 0.8}, None),
         ("dare", {"p": 0.3, "then": "ties"}, None), ("model_stock", {}, None),
         ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "lam": 0.7}, None),
         ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1}, None),
         ("della", {"density": 0.6, "epsilon": 0.1, "rescale": "l1"}, None),
         ("della_linear", {"density": 0.6, "epsilon": 0.1, "rescale": "l1"}, None),
         ("sce", {"select_topk": 0.5}, None), ("karcher", {}, None), ("multislerp", {}, [1.0, 2.0, 1.0]),
         ("slerp", {"t": 0.3}, None), ("nearswap", {"t": 0.5}, None)]


def _tensors(n: int):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(8, 6, generator=g)}
    return base, [{"w": base["w"] + torch.randn(8, 6, generator=g)} for _ in range(n)]


@pytest.mark.parametrize("method, options, weights", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_an_exported_config_reads_back_into_the_same_merge(method, options, weights, tmp_path):
    m = get_method(method)
    n = m.n_experts or 3
    base, experts = _tensors(n)
    paths = [tmp_path / f"e{i}" for i in range(n)]
    merged = Merged(method, m.resolve(options), {}, {}, True, [SimpleNamespace(path=p) for p in paths], weights=weights)
    config = mergekit_config(merged, str(tmp_path / "base"))
    assert config is not None, method
    (tmp_path / "c.yml").write_text(to_yaml(config))
    plan = from_mergekit(tmp_path / "c.yml")
    assert plan["models"] == [str(p) for p in paths]
    by_path = dict(zip(plan["models"], experts))
    if method == "dare":  # mergekit's rescale: true keeps the L1 norm: the kit's 'l1', not the exported 'inverse'
        assert plan["method"] == "dare" and plan["options"]["rescale"] == "l1"
        assert plan["options"]["p"] == pytest.approx(options["p"]) and plan["options"]["then"] == m.resolve(options)["then"]
        options = {**options, "rescale": "l1"}
    want = merge(method, experts, base=base if m.needs_base else None, weights=weights, **options)["w"]
    again_m = get_method(plan["method"])
    got = merge(plan["method"], [by_path[p] for p in plan["models"]], base=base if again_m.needs_base else None,
                weights=plan["weights"], **plan["options"])["w"]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_what_a_config_cannot_express_is_named(tmp_path):
    two = [{"model": "a", "parameters": {"density": 0.3}}, {"model": "b", "parameters": {"density": 0.5}}]
    with pytest.raises(MergeError, match="density differ.*same value"):
        from_mergekit({"merge_method": "ties", "base_model": "b0", "models": two})
    grad = [{"model": "a", "parameters": {"weight": [0.1, 0.9]}}, {"model": "b"}]
    with pytest.raises(MergeError, match="models\\[0\\].parameters.weight is list"):
        from_mergekit({"merge_method": "linear", "models": grad})
    with pytest.raises(MergeError, match="'passthrough' has no counterpart"):
        from_mergekit({"merge_method": "passthrough", "models": [{"model": "a"}]})
    with pytest.raises(MergeError, match="normalize: false"):
        from_mergekit({"merge_method": "ties", "base_model": "b0", "models": [{"model": "a"}, {"model": "b"}],
                       "parameters": {"normalize": False}})
    with pytest.raises(MergeError, match="no such mergekit config"):
        from_mergekit(tmp_path / "missing.yml")


def test_cli_runs_a_mergekit_config_on_checkpoint_folders(tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from fusionkit.cli import main
    from test_checkpoints import _classifier

    a, b, base = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1), ("base", 2)))
    config = {"merge_method": "ties", "base_model": str(base), "dtype": "float32", "parameters": {"normalize": True},
              "models": [{"model": str(p), "parameters": {"weight": 1.0, "density": 0.5}} for p in (a, b)]}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(config))
    assert main(["merge", "--config", str(tmp_path / "m.yml"), "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "ties" and report["config"]["options"]["density"] == 0.5
    states = [load_file(p / "model.safetensors") for p in (a, b, base)]
    want = merge("ties", states[:2], base=states[2], density=0.5)
    got = load_file(tmp_path / "out" / "model.safetensors")
    for name, t in want.items():
        torch.testing.assert_close(got[name], t)
