"""Perplexity of a causal LM on a user's text - the score of a merged language model when the data is plain text.

    ppl = perplexity(model, tokenizer, texts, params=merged_state)

exp of the mean next-token negative log-likelihood over every predicted token of every text (token-weighted,
so long texts count for their tokens, as in a corpus perplexity); padding is never predicted. ``params`` swaps
in another state dict through ``functional_call`` (one live model scores many merges), as the
:class:`~fusionkit.models.evaluator.Evaluator` does for classifiers. ``per_text`` NLLs (mean per token) come back
too, so two models can be compared with a paired bootstrap over texts.
"""
from __future__ import annotations

import math
import torch
from torch.func import functional_call

from ..core.errors import TaskError
from ..core.runtime import pick_device
from ..data.domains import read_texts  # noqa: F401  (the one home of the text-file rule; re-exported)


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], params: dict | None = None, max_length: int = 256,
               batch_size: int = 8, device="auto") -> dict:
    """``{"perplexity", "nll", "tokens", "per_text"}`` of ``model`` (or ``params`` on it) on ``texts``."""
    device = pick_device(device)
    model = model.to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    swap = {k: v.to(device) for k, v in (params or {}).items()}
    per_text, total_nll, total_tokens = [], 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts[start:start + batch_size]]
        width = max(len(ids) for ids in enc)
        ids = torch.full((len(enc), width), pad if pad is not None else 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(enc):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        ids, mask = ids.to(device), mask.to(device)
        batch = {"input_ids": ids, "attention_mask": mask}
        out = functional_call(model, swap, args=(), kwargs=batch, strict=False) if swap else model(**batch)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]  # token t predicted from tokens < t
        counts = mask[:, 1:].sum(1)
        for s, n in zip(nll.sum(1).tolist(), counts.tolist()):
            if n:
                per_text.append(s / n)
                total_nll += s
                total_tokens += n
    if total_tokens == 0:
        raise TaskError("no text is longer than one token, so nothing can be predicted; fix: give longer texts")
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens, "per_text": per_text}
