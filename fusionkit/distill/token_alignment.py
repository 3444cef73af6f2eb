"""Aligning two tokenizations of one text, and one vocabulary to another: what fusing language models with
different tokenizers needs first (FuseLLM, Wan et al., ICLR 2024, arXiv 2401.10491, §3.3 "token alignment").

* **Surface** of a token: the text it stands for, read from the tokenizer's own ``offset_mapping`` (characters
  ``text[s:e]``), so byte-level BPE (``Ġthe``), SentencePiece (``▁the``) and WordPiece (``##s``) compare as text.
* **Sequence alignment** by dynamic time warping (DTW): a monotone path through the n × m grid of token pairs,
  each step (1, 0), (0, 1) or (1, 1), minimising the summed cost c(aᵢ, bⱼ) = the normalised edit distance of their
  surfaces (Levenshtein distance / the longer length). Two identical tokenizations align on the diagonal; where
  one tokenizer splits a word the other keeps whole, several tokens align to one.
* **Vocabulary mapping** (FuseLLM's MinED): a token of one vocabulary maps to the token of the other whose surface
  is nearest in edit distance - the same string where there is one. It carries a teacher's top-k distribution into
  the student's vocabulary (:func:`map_distribution`).
"""
from __future__ import annotations

import numpy as np

from ..core.errors import FusionkitError


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def token_cost(a: str, b: str) -> float:
    """Edit distance normalised to [0, 1] by the longer surface (0: the same text), surrounding spaces ignored."""
    a, b = a.strip(), b.strip()
    longest = max(len(a), len(b))
    return edit_distance(a, b) / longest if longest else 0.0


def surfaces(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """``(ids, surfaces)`` of ``text`` without special tokens, each surface the span of text its token covers."""
    if not getattr(tokenizer, "is_fast", False):
        raise FusionkitError(f"{type(tokenizer).__name__} gives no character offsets; fix: load the fast tokenizer "
                             "(AutoTokenizer.from_pretrained(..., use_fast=True))")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [text[s:e] for s, e in enc["offset_mapping"]]


def dtw_align(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """The DTW path ``[(i, j), ...]`` from (0, 0) to (n−1, m−1) with the least summed :func:`token_cost`."""
    n, m = len(a), len(b)
    if not n or not m:
        return []
    cost = np.array([[token_cost(x, y) for y in b] for x in a])
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        # ties prefer the diagonal, so equal tokenizations give the identity
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]


def align(tok_a, tok_b, text: str) -> dict:
    """Both tokenizations of ``text`` and their DTW alignment; ``one_to_one[i]`` is the token of b that a's token i
    aligns to alone (where a's token aligns to several of b's, or shares one with a neighbour, it has none)."""
    ids_a, sa = surfaces(tok_a, text)
    ids_b, sb = surfaces(tok_b, text)
    path = dtw_align(sa, sb)
    per_a: dict[int, list[int]] = {}
    per_b: dict[int, list[int]] = {}
    for i, j in path:
        per_a.setdefault(i, []).append(j)
        per_b.setdefault(j, []).append(i)
    one_to_one = {i: js[0] for i, js in per_a.items() if len(js) == 1 and len(per_b[js[0]]) == 1}
    return {"ids_a": ids_a, "ids_b": ids_b, "surfaces_a": sa, "surfaces_b": sb, "path": path,
            "one_to_one": one_to_one}


class VocabularyMap:
    """MinED: each token id of ``source`` to the id of ``target`` with the nearest surface (computed on demand and
    remembered; an exact surface match is found at once)."""

    def __init__(self, source, target):
        self.source, self.target = source, target
        self._surface = {i: self._text(target, i) for i in range(len(target))}
        self._exact: dict[str, int] = {}
        self._by_first: dict[str, list[int]] = {}  # candidates share the first character: MinED stays cheap
        for i, s in self._surface.items():
            self._exact.setdefault(s, i)
            self._by_first.setdefault(s[:1], []).append(i)
        self._memo: dict[int, int] = {}

    @staticmethod
    def _text(tokenizer, i: int) -> str:
        return tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)]).strip()

    def __getitem__(self, source_id: int) -> int:
        if source_id not in self._memo:
            s = self._text(self.source, source_id)
            hit = self._exact.get(s)
            if hit is None:
                pool = self._by_first.get(s[:1]) or list(self._surface)
                hit = min(pool, key=lambda i: (token_cost(s, self._surface[i]), i))
            self._memo[source_id] = hit
        return self._memo[source_id]


def map_distribution(logp, vocab_map: VocabularyMap, target_size: int, k: int = 10):
    """The top-``k`` of a source distribution (log-probabilities over the source vocabulary, one row per position)
    carried into the target vocabulary: each kept token's probability added to the token it maps to, renormalised
    over the kept mass. Returns probabilities ``[positions, target_size]``."""
    import torch

    top = logp.float().topk(min(k, logp.shape[-1]), dim=-1)
    out = torch.zeros(logp.shape[0], target_size)
    for row, (vals, ids) in enumerate(zip(top.values.exp(), top.indices)):
        for v, i in zip(vals.tolist(), ids.tolist()):
            out[row, vocab_map[i]] += v
    return out / out.sum(-1, keepdim=True)
