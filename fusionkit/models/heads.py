"""The head policy: which classifier head each task gets when experts are fused - one rule for merging, search,
evolution, landscapes and the zoo's score matrix.

A sequence classifier is a shared *body* (``model.base_model``: embeddings, encoder, pooler) plus a task *head*
(the top-level modules outside it, e.g. BERT's ``classifier``).

* **Different label spaces** (the ``multitask`` zoo; RegMean's GLUE setting, Jin et al. 2023 §4): heads cannot be
  averaged - their rows mean different classes. Only bodies are fused; each task keeps the head of the first expert
  trained on it, put on top of the fused body.
* **One shared label space** (the ``partitions`` and ``transfer`` zoos): heads are fused with the bodies by the same
  method - merged by the merge, interpolated by DFWE, evolved by the Evolver. Methods that need θ₀ get the head
  every expert started from (:func:`base_state`: experts are fine-tuned from a seeded head initialisation).

Explicitly given heads always win: they are kept fixed whatever the label spaces.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..core.errors import FusionkitError

StateDict = dict


def head_prefixes(model) -> tuple[str, ...]:
    """Top-level module names outside the shared body (``model.base_model``): the task head.

    For BERT this is ``classifier`` (the pooler belongs to the body), for RoBERTa ``classifier`` (dense +
    out_proj), for DistilBERT ``pre_classifier`` and ``classifier``.
    """
    prefix = model.base_model_prefix
    return tuple(name for name, child in model.named_children()
                 if name != prefix and next(child.parameters(), None) is not None)


def split_head(state: dict, prefixes: tuple[str, ...]) -> tuple[dict, dict]:
    """Split a state dict into (body, head) by the head's top-level module names."""
    head = {k: v for k, v in state.items() if k.split(".", 1)[0] in prefixes}
    body = {k: v for k, v in state.items() if k not in head}
    return body, head


def shared_label_space(experts) -> bool:
    """Whether every expert was trained on the same label names (so their heads can be fused)."""
    return all(e.recipe["labels"] == experts[0].recipe["labels"] for e in experts)


def task_heads(experts, tasks=None, states: list[StateDict] | None = None) -> dict[str, StateDict]:
    """Per task (all the experts' tasks, or those in ``tasks``), the head of the first expert trained on it;
    ``states`` (the experts' state dicts, when the caller has them) saves reading them again."""
    heads = {}
    for i, e in enumerate(experts):
        if (tasks is None or e.task in tasks) and e.task not in heads:
            heads[e.task] = split_head(states[i], e.head_prefixes)[1] if states is not None else e.body_and_head()[1]
    return heads


def fused_heads(experts, head: StateDict) -> dict[str, StateDict]:
    """Experts that share one label space fused into one model: it serves every one of their tasks (one task for the
    classifier zoos, each text domain for the causal zoo) with the same, fused head."""
    return {t: head for t in dict.fromkeys(e.task for e in experts)}


def head_for(task: str, expert_task: str, own: StateDict, heads: dict[str, StateDict]) -> StateDict:
    """The head an expert's body is scored with on ``task``: its own if it was trained on that task, else the task's
    head (``heads[task]``) - which asks how well the body serves the task, as merged bodies are scored."""
    return own if expert_task == task else heads[task]


@dataclass(frozen=True)
class HeadPolicy:
    """What a fusion of some experts does with their heads (see the module docstring).

    ``heads is None``: heads are fused with the bodies (shared label space); otherwise ``heads[task]`` is the
    fixed head of each task and only bodies are fused."""

    prefixes: tuple[str, ...]
    heads: dict[str, StateDict] | None

    @property
    def fused_heads(self) -> bool:
        return self.heads is None

    def fused_part(self, state: StateDict) -> StateDict:
        """The tensors a fusion moves: the whole state (heads fused) or the body."""
        return state if self.fused_heads else split_head(state, self.prefixes)[0]

    def float_names(self, state: StateDict) -> list[str]:
        """The floating-point tensors a fusion moves (integer buffers such as position ids stay put)."""
        return [n for n, t in self.fused_part(state).items() if t.is_floating_point()]

    def require(self, tasks) -> None:
        """Fail early when a task to score has no head."""
        missing = [] if self.fused_heads else sorted(set(tasks) - set(self.heads))
        if missing:
            raise FusionkitError(f"no head for task(s) {missing}; fix: pass heads={{task: head_state}}")


def head_policy(experts, heads: dict[str, StateDict] | None = None,
                states: list[StateDict] | None = None) -> HeadPolicy:
    """The policy for fusing ``experts``: given ``heads`` are kept; else a shared label space fuses heads with the
    bodies; else each task keeps the head of its first expert (read from ``states`` when given)."""
    prefixes = experts[0].head_prefixes
    if heads is not None:
        return HeadPolicy(prefixes, dict(heads))
    if shared_label_space(experts):
        return HeadPolicy(prefixes, None)
    return HeadPolicy(prefixes, task_heads(experts, states=states))


def base_state(base: str, labels: list[str], seed: int) -> StateDict:
    """θ₀ as the experts saw it: the pretrained body and the seeded head initialisation.

    A notebook merges dozens of times against the same bundled θ₀, so a bundled base's state is kept per
    (base, labels, seed) and each call gets its own copy of the tensors (a copy is milliseconds; loading the model
    is most of a second), so a caller that changes θ₀ in place cannot change the next merge's. Any other base (a
    folder that may change on disk, a hub id) is loaded on every call."""
    from ..data.assets import BASES

    labels = None if labels is None else tuple(labels)  # None: a causal LM, no classifier head
    if base not in BASES:
        return _base_state.__wrapped__(base, labels, seed)
    return {n: t.clone() for n, t in _base_state(base, labels, seed).items()}


@functools.lru_cache(maxsize=4)
def _base_state(base: str, labels: tuple[str, ...] | None, seed: int) -> StateDict:
    import torch

    from ..data.assets import load_base

    with torch.random.fork_rng():  # reproduce the experts' head initialisation without touching the caller's RNG
        torch.manual_seed(seed)  # finetune seeds the same way before creating the head
        model, _ = load_base(base, labels=None if labels is None else list(labels))
    return model.state_dict()
