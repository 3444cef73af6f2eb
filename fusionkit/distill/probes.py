"""Multiple-choice probes for a causal LM, and the numbers that say whether an edit helped or hurt.

* **Probe score** (Onoe et al. 2023; Padmanabhan et al. 2023): for a prefix x and candidates y_1..y_K,
  s_k = Σ_j log p(y_k,j | x, y_k,<j); the prediction is argmax_k s_k. Accuracy is split explicit / implicit.
  The gold candidate's log-prob s_gold and its per-token NLL (-s_gold / |y_gold|, ECBD-style) are kept too.
* **Gold-span NLL** (ECBD, Onoe et al. 2022): a probe with no candidates has only its gold span; its score is the
  span's mean per-token NLL, and a set of probes reports the mean of those (``gold_nll``) and its exp, the
  perplexity (``gold_ppl``, as the reference's ``compute_total_perplexity``). Accuracy counts choice probes only.
* **Prepend** scores the same probes with the definition d in front: [d; x] (the upper bound, no training).
* **Specificity**: the same scores on probes the edit should not touch (other entities, well-known facts),
  before vs after.
* **Drift**: mean over tokens of KL(p_base ‖ p_edited) on neutral text; 0 means the edit changed nothing there.
* **Gap closed** = (NLL_pre - NLL_post) / (NLL_pre - NLL_prepend): 1 = as good as reading the definition.

``context_ids`` is the one place where a context is joined to a text: the distillation teacher and the prepend
baseline both use it, so their token positions are the same by construction.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from ..core.errors import DistillError
from .entities import Probe

NEUTRAL_TEXTS = (
    "The weather was mild for most of the week, with light rain on Thursday afternoon.",
    "She opened the window, poured a cup of tea and started reading the morning paper.",
    "The committee will meet again next month to review the budget for the new library.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
    "He parked the car near the station and walked the rest of the way to the office.",
    "Most of the apples in the orchard were picked before the first frost of the year.",
    "The museum is open every day except Monday, and entry is free for children.",
    "After dinner they played cards and talked about their plans for the summer holidays.",
)


def check_tokenizer(tokenizer) -> None:
    """Batched scoring pads candidates; a tokenizer without a pad token cannot do that."""
    if tokenizer.pad_token_id is None:
        raise DistillError("the tokenizer has no pad token; fix: set tokenizer.pad_token = tokenizer.eos_token "
                         "(fusionkit.load_base does this for causal models)")


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_ids(tokenizer, context: str, text: str) -> tuple[list[int], list[int]]:
    """``(ids of the context, ids of the text)``, tokenized apart so the text's tokens are the same with or
    without a context in front; an empty context gives no tokens at all."""
    ctx = token_ids(tokenizer, context.strip()) if context and context.strip() else []
    return ctx, token_ids(tokenizer, (" " + text.lstrip()) if ctx else text)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def with_cache(model, cache) -> dict:
    """The keyword that hands a key/value cache to ``model``'s forward: ``cache`` since transformers 5.25
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def cache_of(output):
    """The key/value cache a forward returned, under either name (see :func:`with_cache`)."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


@torch.no_grad()
def candidate_logprobs(model, tokenizer, prefix: str, candidates, context: str = "",
                       sep: str = " ") -> tuple[torch.Tensor, list[int]]:
    """Sum of log p(candidate tokens | [context;] prefix) per candidate, and each candidate's token count.

    ``sep`` joins prefix and candidate: a space, or ``""`` for a slot glued to the word before it.

    The shared prefix is read once and its key/value cache repeated for the K candidates, so a probe costs
    |prefix| + K·(|candidate| − 1) token positions instead of K·(|prefix| + |candidate|): 5× fewer on the bundled
    probes, 1.6× faster on 2 CPU cores, where the two calls' fixed cost is what is left (benchmarks/probe_scoring.py).
    Same sums as K separate passes, to float rounding.
    """
    check_tokenizer(tokenizer)
    ctx, pre = context_ids(tokenizer, context, prefix)
    pre = ctx + pre
    if not pre:  # an answer slot at the very start: condition on the end-of-text token
        pre = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id]
    cands = [token_ids(tokenizer, sep + c) for c in candidates]
    if not all(cands):
        raise DistillError(f"a candidate of {list(candidates)!r} has no tokens; fix: give every candidate text")
    dev = _device(model)
    out = model(input_ids=torch.tensor([pre], device=dev), use_cache=True)
    # The prefix's last position predicts every candidate's first token.
    first = F.log_softmax(out.logits[0, -1].float(), -1).cpu()
    scores = first[[c[0] for c in cands]].clone()
    width = max(map(len, cands))
    if width > 1:  # the rest of each candidate, right-padded, after the repeated prefix cache
        cache = cache_of(out)
        cache.batch_repeat_interleave(len(cands))
        ids = torch.full((len(cands), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(cands), len(pre) + width - 1), dtype=torch.long)
        mask[:, :len(pre)] = 1
        for i, c in enumerate(cands):
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, len(pre):len(pre) + len(c) - 1] = 1
        logits = model(input_ids=ids[:, :-1].to(dev), attention_mask=mask.to(dev),
                       **with_cache(model, cache)).logits
        logp = F.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None].to(dev)).squeeze(-1).cpu()
        lens = torch.tensor([len(c) for c in cands])[:, None]
        scores += (logp * (torch.arange(width - 1)[None] < lens - 1)).sum(1)
    return scores, [len(c) for c in cands]


def score_probes(model, tokenizer, probes: list[Probe], contexts: dict[str, str] | None = None) -> list[dict]:
    """One row per probe: its ``uid``, prediction, correctness, the gold log-prob and per-token NLL.

    A gold-span probe (no candidates) has ``pred`` and ``correct`` None. ``contexts`` maps an entity name to a
    text put in front of its probes (the prepend baseline).
    """
    was_training = model.training
    model.eval()
    rows = []
    for p in probes:
        ctx = (contexts or {}).get(p.entity, "")
        scores, lens = candidate_logprobs(model, tokenizer, p.prefix, p.candidates or (p.gold,), ctx, p.sep)
        g = p.gold_index if p.is_choice else 0
        pred = int(scores.argmax()) if p.is_choice else None
        rows.append({"uid": p.uid, "ex_id": p.ex_id, "entity": p.entity, "probe_type": p.probe_type,
                     "pred": None if pred is None else p.candidates[pred],
                     "correct": None if pred is None else pred == g,
                     "gold_logprob": float(scores[g]), "gold_nll": -float(scores[g]) / lens[g]})
    model.train(was_training)
    return rows


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def summarize(rows: list[dict]) -> dict:
    """Accuracy (all / explicit / implicit, over choice probes: None when there are none), mean gold log-prob,
    mean per-probe gold NLL and its perplexity (over every probe)."""
    choice = [r for r in rows if r["correct"] is not None]
    nll = _mean(r["gold_nll"] for r in rows)
    return {"acc": _mean(float(r["correct"]) for r in choice),
            "explicit_acc": _mean(float(r["correct"]) for r in choice if r["probe_type"] == "explicit"),
            "implicit_acc": _mean(float(r["correct"]) for r in choice if r["probe_type"] == "implicit"),
            "gold_logprob": _mean(r["gold_logprob"] for r in rows), "gold_nll": nll,
            "gold_ppl": None if nll is None else math.exp(min(nll, 700.0)), "n": len(rows)}


def chance(probes: list[Probe]) -> float:
    """Expected accuracy of a uniform guess over the choice probes: mean of 1/K."""
    return _mean(1 / len(p.candidates) for p in probes if p.is_choice) or 0.0


def gap_closed(pre: float, post: float, prepend: float) -> float | None:
    """(pre - post) / (pre - prepend) on gold NLL; None when reading the definition does not help at all."""
    gap = pre - prepend
    return None if abs(gap) < 1e-9 or any(map(math.isnan, (pre, post, prepend))) else (pre - post) / gap


class DriftMeter:
    """KL(base ‖ model) per token on fixed neutral texts; the base distributions are computed once."""

    def __init__(self, base, tokenizer, texts=NEUTRAL_TEXTS):
        self.ids = [torch.tensor([token_ids(tokenizer, t)]) for t in texts]
        self.base = [self._logp(base, ids) for ids in self.ids]

    @staticmethod
    @torch.no_grad()
    def _logp(model, ids):
        was_training = model.training
        model.eval()
        out = F.log_softmax(model(input_ids=ids.to(_device(model))).logits.float()[0], -1).cpu()
        model.train(was_training)
        return out

    def __call__(self, model) -> float:
        kls = [F.kl_div(self._logp(model, ids), b, log_target=True, reduction="none").sum(-1).mean()
               for ids, b in zip(self.ids, self.base)]
        return float(torch.stack(kls).mean())
