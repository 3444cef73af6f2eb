"""Cool-Fusion (Liu et al. 2024, arXiv 2407.19807, "Cool-Fusion: Fuse Large Language Models without Training"):
language models with different vocabularies fused at generation time, with no training and no shared tokens.

Models with different tokenizers cannot be merged in weight space or averaged token by token - their tokens are
not the same pieces of text. They can agree on *text*, at positions every tokenizer treats as a boundary. One round,
from the text so far c:

1. **Propose.** Each model m decodes greedily from c until its next token would start a new word, giving a segment
   sₘ. A position just before whitespace is a token boundary for byte-level BPE (GPT-2, SmolLM2) and SentencePiece
   (Gemma) alike, which attach a space to the word after it, and for WordPiece, which starts a word without "##".
2. **Score jointly.** Every model k scores every segment: ℓₖ(s | c) = Σ log pₖ(token | prefix) over k's own tokens
   of s (k's tokenization of c + s, from the first token that c's tokenization does not already hold), divided by
   the words of s; the fused score is the mean over models, (1/K) Σₖ ℓₖ(s | c).
3. **Keep the best** segment, append it to c, and go on until the chosen model ends its text or the word budget is
   spent.

With two copies of one model every proposal is the same, so the fusion is that model's own greedy decoding.
"""
from __future__ import annotations

import time

import torch

from ..core.errors import FusionkitError
from .probes import cache_of, with_cache


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _continuation(tokenizer, ids: list[int], n_context: int, context_text: str, base: str | None = None) -> str:
    """The text that ``ids[n_context:]`` add after the context (decoded with the context, so a SentencePiece
    tokenizer keeps the space in front of the first new word); ``base``: the context's own decoding, if known."""
    full = tokenizer.decode(ids, skip_special_tokens=True)
    base = tokenizer.decode(ids[:n_context], skip_special_tokens=True) if base is None else base
    return full[len(base):] if full.startswith(base) else full[len(context_text):]


@torch.inference_mode()
def propose(model, tokenizer, context: str, max_tokens: int = 8) -> tuple[str, bool]:
    """``(segment, ended)``: greedy decoding from ``context`` up to the next word boundary (or ``max_tokens``);
    ``ended`` when the model chose its end-of-text token instead."""
    dev = next(model.parameters()).device
    ids = _ids(tokenizer, context)
    n = len(ids)
    base = tokenizer.decode(ids, skip_special_tokens=True)  # once: the context does not change while proposing
    eos = tokenizer.eos_token_id
    out = model(input_ids=torch.tensor([ids], device=dev), use_cache=True)
    past, text = cache_of(out), ""
    for _ in range(max_tokens):
        nxt = int(out.logits[0, -1].argmax())
        if eos is not None and nxt == eos:
            return text, True
        candidate = _continuation(tokenizer, ids + [nxt], n, context, base)
        if text and candidate[len(text):][:1].isspace():  # the next token opens a new word: stop before it
            return text, False
        ids.append(nxt)
        text = candidate
        out = model(input_ids=torch.tensor([[nxt]], device=dev), use_cache=True, **with_cache(model, past))
        past = cache_of(out)
    return text, False


@torch.inference_mode()
def segment_logprob(model, tokenizer, context: str, segment: str) -> float:
    """Σ log p(token | prefix) over the model's own tokens of ``segment`` after ``context`` (see the module)."""
    before, ids = _ids(tokenizer, context), _ids(tokenizer, context + segment)
    start = next((i for i, (a, b) in enumerate(zip(before, ids)) if a != b), min(len(before), len(ids)))
    start = max(start, 1)  # the first token has no prefix to be predicted from
    if start >= len(ids):
        return 0.0
    dev = next(model.parameters()).device
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=dev)).logits[0].float(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))


def words(segment: str) -> int:
    return max(1, len(segment.split()))


def cool_fusion(models: list[tuple], prompt: str, max_words: int = 20, max_tokens: int = 8) -> dict:
    """Generate from ``prompt`` with the models ``[(model, tokenizer), ...]`` fused by Cool-Fusion.

    Returns ``{"text", "rounds", "seconds"}``: the generated text (after the prompt) and per round each model's
    proposal, the matrix ``scores[m][k]`` = ℓₖ(sₘ | c) per word, the fused scores and which proposal was kept.
    """
    if len(models) < 1 or max_words < 1 or max_tokens < 1:
        raise FusionkitError(f"{len(models)} models, max_words={max_words}, max_tokens={max_tokens}; fix: at least "
                             "one (model, tokenizer) pair, max_words >= 1, max_tokens >= 1")
    for model, _ in models:
        model.eval()
    t0 = time.perf_counter()
    context, rounds, generated = prompt, [], 0
    while generated < max_words:
        proposals = [propose(m, tok, context, max_tokens) for m, tok in models]
        texts = [s for s, _ in proposals]
        scores = [[segment_logprob(m, tok, context, s) / words(s) if s else float("-inf") for m, tok in models]
                  for s in texts]
        fused = [sum(row) / len(row) for row in scores]
        best = max(range(len(texts)), key=lambda i: (fused[i], -i))
        rounds.append({"proposals": texts, "scores": [[round(v, 4) for v in row] for row in scores],
                       "fused": [round(v, 4) for v in fused], "kept": best})
        if not texts[best]:  # the best proposal ends the text
            break
        context += texts[best]
        generated += words(texts[best])
        if proposals[best][1]:
            break
    return {"text": context[len(prompt):], "rounds": rounds, "seconds": round(time.perf_counter() - t0, 2)}


@torch.inference_mode()
def greedy_text(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The model's own greedy decoding of ``max_new_tokens`` tokens after ``prompt`` (the single-model baseline)."""
    dev = next(model.parameters()).device
    ids = _ids(tokenizer, prompt)
    n = len(ids)
    out = model.generate(torch.tensor([ids], device=dev), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return _continuation(tokenizer, out[0].tolist(), n, prompt)


@torch.inference_mode()
def choose(models: list[tuple], prefix: str, candidates: list[str], sep: str = " ") -> dict:
    """Cool-Fusion's joint scoring on given candidates (a multiple-choice probe): ``scores[c][k]`` = model k's
    log-likelihood of candidate c after ``prefix`` per word, ``fused[c]`` their mean over models, ``choice`` the
    argmax. With one model it is that model's own per-word choice."""
    from .probes import candidate_logprobs

    per_model = [candidate_logprobs(m, tok, prefix, candidates, sep=sep)[0] for m, tok in models]
    scores = [[float(lp[c]) / words(cand) for lp in per_model] for c, cand in enumerate(candidates)]
    fused = [sum(row) / len(row) for row in scores]
    return {"scores": scores, "fused": fused, "choice": max(range(len(candidates)), key=lambda c: (fused[c], -c))}
