"""Shared fixtures: a tiny random BERT built in code, a toy task, and an isolated cache per unit test.

Unit tests never touch the real cache: each gets its own FUSIONKIT_CACHE under tmp_path. Tests marked
``assets`` or ``notebook`` use the real offline models and corpora in the user's (or CI's) cache.
"""
from __future__ import annotations

import random

import pytest

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "a", "movie", "plot", "was", "is", "very",
         "quite", "film", "story", "acting", "and", "but", "so"]


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    if request.node.get_closest_marker("assets") or request.node.get_closest_marker("notebook"):
        return
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path / "cache"))


def ties_by_definition(base, experts, w, density: float, lam: float):
    """TIES written out in float64 for one tensor (Yadav et al. 2023): trim each τᵢ = θᵢ − θ₀ at its k-th largest
    |τᵢ| (ties kept), elect s = sgn(Σ wᵢτ̂ᵢ), average the agreeing entries weighted by wᵢ (0 where none agrees).
    Returns the merge and the elected signs."""
    import torch

    w = torch.as_tensor(w, dtype=torch.float64).view(-1, *([1] * base.dim()))
    taus = torch.stack([e.double() - base.double() for e in experts])
    k = round(density * taus[0].numel())
    cut = taus.abs().flatten(1).kthvalue(taus[0].numel() - k + 1, dim=1).values.view(w.shape)
    trimmed = taus * (taus.abs() >= cut)
    sign = torch.sign((w * trimmed).sum(0))
    agree = ((torch.sign(trimmed) == sign) & (trimmed != 0)).double()
    den = (w * agree).sum(0)
    mean = torch.where(den != 0, (w * trimmed * agree).sum(0) / torch.where(den != 0, den, 1.0), 0.0)
    return base.double() + lam * mean, sign


def tiny_tokenizer():
    """A WordPiece tokenizer over the 20 toy words (and BERT's 5 special tokens), built in code."""
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT with a 25-word vocabulary, saved as a local transformers folder."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = tiny_tokenizer()
    assert tokenizer.unk_token_id not in tokenizer("good movie")["input_ids"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def toy_frame(n: int = 240, seed: int = 0):
    """Sentences whose label is decided by one sentiment word: easy to learn, so learning is testable."""
    import pandas as pd

    rng = random.Random(seed)
    pos, neg, filler = WORDS[:3], WORDS[3:6], WORDS[6:]
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(filler, 5) + [rng.choice(pos if label else neg)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    return pd.DataFrame(rows)


TINY_FAST = dict(epochs=6, batch_size=16, lr=3e-3, max_length=16)


@pytest.fixture(scope="session")
def tiny_zoo(tiny_bert, tmp_path_factory):
    """Two tiny experts of different label spaces ("two": 2 labels, "three": 3), trained once per session in a
    cache of their own; the zoo's base is the tiny BERT."""
    from fusionkit.core.profiles import get_profile
    from fusionkit.data.tasks import task_from
    from fusionkit.models.training import finetune
    from fusionkit.models.zoo import Zoo

    two = task_from(toy_frame(240), name="two")
    df = toy_frame(240, seed=1)
    df.loc[::3, "label"] = "neutral"
    tasks = {"two": two, "three": task_from(df, name="three")}
    profile = get_profile("smoke").with_(**TINY_FAST, eval_batch_size=64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONKIT_CACHE", str(tmp_path_factory.mktemp("zoo-cache")))
        experts = [finetune(tiny_bert, task, profile, quiet=True) for task in tasks.values()]
    return Zoo("tiny", profile, tasks, experts, {e.name: tasks[e.task] for e in experts}, base=tiny_bert)


@pytest.fixture
def toy_task():
    from fusionkit.data.tasks import task_from

    return task_from(toy_frame(), name="toy", label_names=["negative", "positive"])


def run_smoke(prefix: str, tmp_path, **parameters) -> dict:
    """Execute the notebook whose name starts with ``prefix`` in the smoke profile (plus any ``parameters``);
    fail with its error."""
    from fusionkit.tour import notebooks, run_notebook

    nb = next(p for p in notebooks() if p.name.startswith(prefix))
    row = run_notebook(nb, tmp_path, {"profile": "smoke", **parameters}, timeout=1800)
    assert row["status"] == "ok", row["error"]
    return row["record"]


def kill_mid_write(code: str) -> int:
    """Run ``code`` in a fresh interpreter until it prints "writing", SIGKILL it there, and return its pid: a
    writer that dies with its temporary half written (what atomic writes must survive)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return proc.pid
