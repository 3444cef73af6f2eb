"""Task-vector analysis: how similar experts' changes are, and where they conflict in sign (the interference TIES
resolves). Notation as in :mod:`fusionkit.merging.statedict`: τᵢ = θᵢ − θ₀.
"""
from __future__ import annotations

import torch

from .ops import trim
from .statedict import StateDict, flatten


def cosine_matrix(taus: list[StateDict], names: list[str] | None = None) -> torch.Tensor:
    """Pairwise cosine similarity of flattened task vectors (near 0: the tasks change different directions)."""
    names = names or [n for n in taus[0] if taus[0][n].is_floating_point()]
    flat = torch.stack([flatten(t, names).double() for t in taus])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (flat @ flat.T).float()


def sign_conflicts(taus: list[StateDict], density: float = 0.2, group=lambda name: name) -> dict[str, float]:
    """Per group of parameters: among entries that at least two trimmed task vectors change, the fraction
    where they disagree in sign - the interference TIES resolves (Yadav et al. 2023, Fig. 2)."""
    counts: dict[str, list[int]] = {}
    for name in taus[0]:
        if not taus[0][name].is_floating_point() or taus[0][name].dim() == 0:
            continue
        trimmed = torch.stack([trim(t[name].float(), density) for t in taus])
        nonzero = trimmed != 0
        touched = nonzero.sum(0) >= 2
        pos = ((trimmed > 0) & nonzero).any(0)
        neg = ((trimmed < 0) & nonzero).any(0)
        c = counts.setdefault(group(name), [0, 0])
        c[0] += int((touched & pos & neg).sum())
        c[1] += int(touched.sum())
    return {g: (a / b if b else 0.0) for g, (a, b) in counts.items()}


def layer_of(name: str) -> str:
    """Group parameter names by transformer block (``layer.3``), else by their top module."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layer", "layers", "h") and parts[i + 1].isdigit():
            return f"layer {int(parts[i + 1]):02d}"
    return parts[1] if len(parts) > 2 else parts[0]
