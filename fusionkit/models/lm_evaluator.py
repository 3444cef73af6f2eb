"""Scoring a causal language model - or any state dict on it - on text, with one live model and data tokenised once:
the :class:`~fusionkit.models.evaluator.Evaluator` of the ``causal`` zoo, searches and landscapes.

A text task (:class:`~fusionkit.data.domains.TextTask`) is scored by next-token prediction, every token after the
first of every text predicted from the ones before it (teacher forcing; padding never predicted):

* ``score``           the mean log-likelihood per token, (1/N) Σ log p(xₜ | x<ₜ) over the split's N predicted
                      tokens (nats; higher is better; perplexity = exp(−score)) - what a search maximises, so it
                      minimises dev NLL;
* ``loss_and_score``  (NLL, next-token accuracy): the loss and the top-1 accuracy of one forward pass, the two
                      surfaces a landscape draws;
* ``correct``         per text, its summed log-likelihood × (texts / tokens of the split), so that their mean is
                      ``score`` exactly: what a paired bootstrap over texts resamples (texts are the independent
                      units; a text's tokens are not), for the difference of two states' scores;
* ``ensemble_score``  the mixture of the members' next-token distributions, log (1/K) Σₖ pₖ(xₜ | x<ₜ): the output
                      ensemble a merge of K LMs tries to match in one forward pass.

Texts too short to predict anything (one token) are left out of every split, the same ones for every state, so
paired comparisons stay paired. Candidates go in through ``functional_call``; a tied input/output embedding is
swapped for both (``tie_weights``), so a state without ``lm_head.weight`` scores with its own embedding table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from ..core.errors import FusionkitError
from ..data.tasks import Task
from .evaluator import Evaluator

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
BATCH_TOKENS = 2048


def is_causal(model) -> bool:
    """Whether ``model`` is a causal language model (a ``*ForCausalLM`` / ``*LMHeadModel``)."""
    return type(model).__name__.endswith(CAUSAL_SUFFIXES)


def evaluator_for(model, tokenizer, **options) -> Evaluator:
    """The evaluator that scores ``model``: :class:`LMEvaluator` for a causal LM, else a classifier's
    :class:`~fusionkit.models.evaluator.Evaluator`."""
    return (LMEvaluator if is_causal(model) else Evaluator)(model, tokenizer, **options)


@dataclass
class EncodedText:
    """A tokenised split: length-sorted batches of ids and masks, and each kept text's place in the split."""

    batches: list[dict]
    order: torch.Tensor  # position among the kept texts of each sorted text
    kept: np.ndarray  # indices into the split of the texts that have a token to predict


class LMEvaluator(Evaluator):
    """:class:`~fusionkit.models.evaluator.Evaluator` for causal LMs on text tasks (module docstring).
    ``batch_size`` texts per forward pass, at most :data:`BATCH_TOKENS` tokens: a batch's logits are texts × tokens
    × vocabulary floats (49k for SmolLM2: 2048 tokens make 400 MB)."""

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 16, device="auto",
                 limit: int | None = None, precision: str = "float32"):
        if not is_causal(model):
            raise FusionkitError(f"{type(model).__name__} is not a causal language model; fix: score classifiers "
                                 "with fusionkit.Evaluator")
        batch_size = max(1, min(batch_size, BATCH_TOKENS // max_length))
        super().__init__(model, tokenizer, max_length, batch_size, device, limit, precision)
        self.head_prefixes = ()  # the LM head is merged with the body: one vocabulary, nothing to keep apart
        self.tied = tied_output_name(model)

    def _swap(self, params: dict | None, head: dict | None) -> dict:
        """The tensors a forward swaps in; a tied output matrix is dropped (the input table stands for both -
        functional_call refuses two values for one tied tensor, as a ``model.state_dict()`` has)."""
        swap = {**(params or {}), **(head or {})}
        if self.tied is not None:
            swap.pop(self.tied, None)
        return {k: v.to(self.device) for k, v in swap.items()}

    def encode(self, task: Task, split: str) -> EncodedText:
        ds = task.data[split]
        key = (task.name, split, ds._fingerprint, self.limit)
        if key not in self._encoded:
            if self.limit is not None and len(ds) > self.limit:
                ds = ds.select(range(self.limit))
            ids = self.tokenizer(list(ds["text"]), truncation=True, max_length=self.max_length)["input_ids"]
            kept = np.array([i for i, row in enumerate(ids) if len(row) >= 2], dtype=np.int64)
            if len(kept) == 0:
                raise FusionkitError(f"no text of {task.name}/{split} has two tokens, so nothing can be predicted; "
                                     "fix: give longer texts")
            lengths = np.array([len(ids[i]) for i in kept])
            order = np.argsort(-lengths, kind="stable")
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            batches = []
            for start in range(0, len(order), self.batch_size):
                rows = [ids[kept[i]] for i in order[start:start + self.batch_size]]
                width = len(rows[0])  # sorted longest first
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros_like(input_ids)
                for r, row in enumerate(rows):
                    input_ids[r, :len(row)] = torch.tensor(row)
                    mask[r, :len(row)] = 1
                batches.append({"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)})
            self._encoded[key] = EncodedText(batches, torch.as_tensor(order), kept)
        return self._encoded[key]

    @torch.inference_mode()
    def token_scores(self, task: Task, split: str = "validation", params: dict | None = None,
                     head: dict | None = None, precision: str | None = None, hits: bool = True) -> dict[str, np.ndarray]:
        """Per kept text, in the split's order: ``logp`` (the sum of its tokens' log-likelihoods), ``tokens`` (tokens
        predicted) and, with ``hits``, ``hits`` (tokens predicted exactly by the argmax: a pass over the logits that a
        search's score does not need)."""
        enc = self.encode(task, split)
        swap = self._swap(params, head)
        parts: dict[str, list] = {"logp": [], "tokens": [], **({"hits": []} if hits else {})}
        with self.autocast(precision):
            for batch in enc.batches:
                out = functional_call(self.model, swap, args=(), kwargs=batch, strict=False) if swap \
                    else self.model(**batch)
                for k, v in _per_text(out.logits, batch["input_ids"], batch["attention_mask"], hits).items():
                    parts[k].append(v)
        return {k: _unsort(torch.cat(v), enc.order) for k, v in parts.items()}

    def score(self, task: Task, split: str = "validation", params: dict | None = None,
              head: dict | None = None, precision: str | None = None) -> float:
        s = self.token_scores(task, split, params, head, precision, hits=False)
        return float(s["logp"].sum() / s["tokens"].sum())

    def correct(self, task: Task, split: str = "validation", params: dict | None = None,
                head: dict | None = None, precision: str | None = None) -> np.ndarray:
        s = self.token_scores(task, split, params, head, precision, hits=False)
        return s["logp"] * (len(s["tokens"]) / s["tokens"].sum())

    def loss_and_score(self, task: Task, split: str = "validation", params: dict | None = None,
                       head: dict | None = None, precision: str | None = None) -> tuple[float, float]:
        s = self.token_scores(task, split, params, head, precision)
        n = s["tokens"].sum()
        return float(-s["logp"].sum() / n), float(s["hits"].sum() / n)

    def logits(self, *args, **kwargs):
        raise FusionkitError("a causal LM is scored by next-token log-likelihood, not by class logits; fix: use "
                             "score / correct / token_scores")

    @torch.inference_mode()
    def ensemble_score(self, task: Task, split: str, members: list[tuple[dict, dict | None]]) -> float:
        """Mean log-likelihood per token of the members' mixture, log (1/K) Σₖ pₖ(xₜ | x<ₜ)."""
        enc = self.encode(task, split)
        total, count = 0.0, 0
        with self.autocast():
            for batch in enc.batches:
                per = []
                for params, head in members:
                    swap = self._swap(params, head)
                    logits = functional_call(self.model, swap, args=(), kwargs=batch, strict=False).logits
                    per.append(_gold_tokens(logits, batch["input_ids"]))
                mask = batch["attention_mask"][:, 1:].bool()
                mixed = torch.logsumexp(torch.stack(per), 0) - np.log(len(members))
                total += float(mixed[mask].sum())
                count += int(mask.sum())
        return total / count


def tied_output_name(model) -> str | None:
    """The name of the output matrix when it is the input embedding table itself (tied), else None."""
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight is not emb.weight:
        return None
    return next(n for n, m in model.named_modules() if m is out) + ".weight"


def _gold_tokens(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(xₜ | x<ₜ) for t ≥ 1: ``[batch, tokens - 1]`` (float32). cross_entropy's fused log-softmax takes 30% less
    time than log_softmax + gather over a 49k vocabulary (measured)."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                            reduction="none")
    return -nll.view(ids.shape[0], -1)


def _per_text(logits, ids, mask, hits: bool) -> dict[str, torch.Tensor]:
    """Per text: the summed log-likelihood of its real next tokens, their count and (``hits``) the argmax hits."""
    m = mask[:, 1:].float()  # token t is predicted only if it is a real token
    out = {"logp": (_gold_tokens(logits, ids) * m).sum(1), "tokens": m.sum(1)}
    if hits:
        out["hits"] = ((logits[:, :-1].argmax(-1) == ids[:, 1:]).float() * m).sum(1)
    return {k: v.double().cpu() for k, v in out.items()}


def _unsort(values: torch.Tensor, order: torch.Tensor) -> np.ndarray:
    out = torch.empty_like(values)
    out[order] = values
    return out.numpy()
