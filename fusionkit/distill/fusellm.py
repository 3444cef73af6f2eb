"""FuseLLM-style distillation across vocabularies (Wan et al., ICLR 2024, arXiv 2401.10491): a student causal LM
learns from a teacher whose tokenizer differs, on plain text, through token alignment.

For each text, both tokenizations are aligned by DTW (:func:`~fusionkit.distill.token_alignment.align`). Where the
student's token i aligns one to one with the teacher's token j, the teacher's distribution for token j (read at
its position j − 1) has its top k tokens carried into the student's vocabulary by MinED
(:func:`~fusionkit.distill.token_alignment.map_distribution`), giving a target p̃ᵢ. The student minimises

    L = λ · CE(yᵢ) + (1 − λ) · KL(p̃ᵢ ‖ q_θ,i)

averaged over its positions (the KL over aligned positions only; elsewhere the text's own next token is all there
is). λ = 1 is plain fine-tuning on the same text - the baseline the fusion must beat. Teacher targets are computed
once per text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.errors import FusionkitError
from .token_alignment import VocabularyMap, align


@dataclass
class AlignedText:
    ids: torch.Tensor  # the student's token ids, with its own leading special tokens
    targets: dict[int, torch.Tensor]  # student position p (predicting ids[p + 1]) -> teacher distribution there


def _leading_specials(tokenizer, text: str) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS), which the model expects in front."""
    enc = tokenizer(text, return_special_tokens_mask=True)
    lead = []
    for i, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        if not special:
            break
        lead.append(i)
    return lead


def student_ids(tokenizer, text: str) -> list[int]:
    """The ids a model reads for ``text``: its leading special tokens, then the text's own tokens."""
    return _leading_specials(tokenizer, text) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()  # not inference mode: the targets enter the student's (autograd) loss
def aligned_targets(teacher, t_tok, s_tok, text: str, vocab_map: VocabularyMap, student_vocab: int,
                    k: int = 10) -> AlignedText:
    """The student's ids for ``text`` and, at every position whose next token aligns one to one with a teacher
    token, the teacher's top-``k`` distribution for it mapped into the student's vocabulary."""
    from .token_alignment import map_distribution

    a = align(s_tok, t_tok, text)
    s_lead, t_lead = _leading_specials(s_tok, text), _leading_specials(t_tok, text)
    s_ids = s_lead + a["ids_a"]
    t_ids = t_lead + a["ids_b"]
    dev = next(teacher.parameters()).device
    t_logp = torch.log_softmax(teacher(input_ids=torch.tensor([t_ids], device=dev)).logits[0].float(), -1).cpu()
    targets = {}
    for i, j in a["one_to_one"].items():
        si, tj = i + len(s_lead), j + len(t_lead)
        if si >= 1 and tj >= 1:  # token i is predicted at position i - 1, by both models
            targets[si - 1] = map_distribution(t_logp[tj - 1:tj], vocab_map, student_vocab, k)[0]
    return AlignedText(torch.tensor(s_ids), targets)


def fused_loss(logits: torch.Tensor, item: AlignedText, lam: float) -> torch.Tensor:
    """λ·CE over every next token + (1 − λ)·KL(p̃ ‖ q) over the aligned positions (``logits``: [T, V])."""
    ce = F.cross_entropy(logits[:-1].float(), item.ids[1:].to(logits.device))
    if lam >= 1 or not item.targets:
        return ce
    pos = torch.tensor(sorted(item.targets), device=logits.device)
    p = torch.stack([item.targets[int(q)] for q in pos.tolist()]).to(logits.device)
    logq = torch.log_softmax(logits[pos].float(), -1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1).mean()
    return lam * ce + (1 - lam) * kl


def fuse_distill(student, s_tok, teacher, t_tok, texts: list[str], steps: int, lam: float = 0.5, k: int = 10,
                 lr: float = 1e-5, seed: int = 0, callback=None) -> dict:
    """Train ``student`` in place on ``texts`` (one text per step, seeded order) with :func:`fused_loss`; returns
    ``{"curve": [{"step", "loss", "aligned"}], "aligned_share", "seconds"}``."""
    if not texts or steps < 1 or not 0 <= lam <= 1 or k < 1:
        raise FusionkitError(f"{len(texts)} texts, steps={steps}, lam={lam}, k={k}; fix: texts, steps >= 1, "
                             "0 <= lam <= 1, k >= 1")
    t0 = time.perf_counter()
    teacher.eval()
    size = student.get_output_embeddings().weight.shape[0]
    if lam < 1:
        vocab_map = VocabularyMap(t_tok, s_tok)
        items = [aligned_targets(teacher, t_tok, s_tok, t, vocab_map, size, k) for t in texts]
    else:  # λ = 1 is plain fine-tuning: no teacher, no alignment
        items = [AlignedText(torch.tensor(student_ids(s_tok, t)), {}) for t in texts]
    dev = next(student.parameters()).device
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, fused=True)  # see training._train
    gen = torch.Generator().manual_seed(seed)
    order, curve = [], []
    for step in range(1, steps + 1):
        if not order:
            order = torch.randperm(len(items), generator=gen).tolist()
        item = items[order.pop()]
        loss = fused_loss(student(input_ids=item.ids[None].to(dev)).logits[0], item, lam)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append({"step": step, "loss": round(loss.item(), 5), "aligned": len(item.targets)})
        if callback is not None:
            callback(curve[-1])
    student.eval()
    positions = sum(len(i.ids) - 1 for i in items)
    return {"curve": curve, "aligned_share": round(sum(len(i.targets) for i in items) / max(positions, 1), 4),
            "seconds": round(time.perf_counter() - t0, 2)}
