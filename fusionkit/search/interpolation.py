"""DFWE's search space: interpolations θ(w) = θ₀ + Σₖ wₖ(θₖ − θ₀) of experts, and how nevergrad proposes w.

* :class:`Interpolation` - θ(w) for any weights, built fast (one ``addmv`` per tensor over a ``[K, numel]`` matrix
  of task vectors) and, for scoring, only on the embedding rows the dev data reaches.
* :class:`Candidate` - what a worker runs: weights -> (mean dev score, seconds).
* :func:`make_parametrization` - ``simplex`` (w = softmax(z): wₖ ≥ 0, Σ wₖ = 1) or ``box`` (wₖ ∈ [lo, hi], as
  LoraHub's [−1.5, 1.5]); both start at the uniform average.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.cache import stable_hash
from ..core.errors import SearchError
from ..models.experts import Expert
from ..models.heads import base_state
from ..models.scorer import PerThread, Scorer
from .executors import timed

PARAMETRIZATIONS = ("simplex", "box")
_TENSORS: dict[str, tuple[dict, dict]] = {}  # per process: token -> (θ₀, stacked task vectors)
_TENSORS_LOCK = threading.Lock()


@dataclass
class Interpolation(PerThread):
    """θ(w) = θ₀ + Σₖ wₖ(θₖ − θ₀) over ``names``; pickles light (expert paths), loads its tensors once per process.

    The task vectors of each tensor are kept as one ``[K, numel]`` matrix, so θ(w) is one ``addmv`` per tensor
    (a single pass over the K task vectors, no temporaries).
    """

    experts: list[Expert]
    names: list[str]
    base: str
    labels: list[str]
    seed: int = 0
    token: str = field(init=False)

    def __post_init__(self):
        self.token = stable_hash([[e.id for e in self.experts], self.names, self.base, self.labels, self.seed])
        self._local = threading.local()

    def tensors(self) -> tuple[dict, dict]:
        """``(θ₀, τ)``: θ₀ per name, τ per name as a ``[K, numel]`` matrix of the flattened task vectors."""
        with _TENSORS_LOCK:
            if self.token not in _TENSORS:
                if len(_TENSORS) >= 2:  # a notebook switching zoos should not keep every zoo in memory
                    _TENSORS.pop(next(iter(_TENSORS)))
                base = base_state(self.base, self.labels, self.seed)
                states = [e.state_dict() for e in self.experts]
                theta0 = {n: base[n].float() for n in self.names}
                taus = {n: torch.stack([s[n].float().reshape(-1) for s in states]) - theta0[n].reshape(1, -1)
                        for n in self.names}
                _TENSORS[self.token] = (theta0, taus)
            return _TENSORS[self.token]

    def state(self, w) -> dict:
        """θ(w), every tensor whole (what is saved, tested and merged)."""
        theta0, taus = self.tensors()
        w = _as_weights(w)
        return {n: torch.addmv(theta0[n].reshape(-1), taus[n].t(), w).view_as(theta0[n]) for n in self.names}

    def scoring_state(self, w, rows: dict[str, torch.Tensor]) -> dict:
        """θ(w) for *scoring only*: for each ``name -> row ids`` in ``rows`` (an embedding table and the token ids
        the dev data uses) only those rows are built, into this thread's scratch copy of the table; the other rows
        hold stale values that the forward pass never reads. The returned tensors are reused by the next call on
        the same thread: score them at once, never keep them (use :meth:`state` for that)."""
        theta0, taus = self.tensors()
        w = _as_weights(w)
        out = {}
        for n in self.names:
            if n not in rows:
                out[n] = torch.addmv(theta0[n].reshape(-1), taus[n].t(), w).view_as(theta0[n])
                continue
            scratch = getattr(self._local, "scratch", None)
            if scratch is None:
                scratch = self._local.scratch = {}
            if n not in scratch:
                scratch[n] = theta0[n].clone()
            table, idx = theta0[n], rows[n]
            k, width = taus[n].shape[0], table[0].numel()
            picked = taus[n].view(k, table.shape[0], width)[:, idx].reshape(k, -1)
            scratch[n][idx] = torch.addmv(table[idx].reshape(-1), picked.t(), w).view(-1, *table.shape[1:])
            out[n] = scratch[n]
        return out


def _as_weights(w) -> torch.Tensor:
    return torch.as_tensor(np.asarray(w, dtype=np.float32))


@dataclass
class Candidate:
    """The function each worker runs: weights -> (mean dev score, seconds). Only the embedding rows the dev data
    reaches are interpolated (:meth:`Interpolation.scoring_state`): the score is the same, the cost about half."""

    space: Interpolation
    scorer: Scorer

    def __call__(self, w) -> tuple[float, float]:
        return timed(lambda: self.scorer(self.space.scoring_state(w, self.scorer.reachable_rows())))

    def __dask_tokenize__(self):  # dask hashes submitted functions; the token names the space
        return ("fusionkit.Candidate", self.space.token)


def make_parametrization(kind: str, k: int, bounds=(-1.5, 1.5), seed: int = 0):
    """``(nevergrad parameter, value -> weights)``; the parameter's initial value is the uniform average."""
    import nevergrad as ng

    if kind == "simplex":
        param = ng.p.Array(init=np.zeros(k))

        def to_weights(z):
            e = np.exp(z - np.max(z))
            return e / e.sum()
    elif kind == "box":
        lo, hi = bounds
        if not lo < 1 / k < hi:
            raise SearchError(f"box bounds {bounds} must contain the uniform start 1/{k}; fix: widen them")
        param = ng.p.Array(init=np.full(k, 1 / k), lower=lo, upper=hi)

        def to_weights(z):
            return np.asarray(z, dtype=float)
    else:
        raise SearchError(f"unknown parametrization {kind!r}; fix: use one of {', '.join(PARAMETRIZATIONS)}")
    param.random_state = np.random.RandomState(seed)
    return param, to_weights


def vertex(kind: str, k: int, i: int, bounds=(-1.5, 1.5)) -> np.ndarray | None:
    """The parameter value that puts all weight on expert ``i`` (None where the space does not contain it):
    on the simplex a logit of 20 against 0 (softmax 1 − 2e-9·k, one at the kit's 6-decimal rounding)."""
    if kind == "simplex":
        z = np.zeros(k)
        z[i] = 20.0
        return z
    lo, hi = bounds
    if lo <= 0 and hi >= 1:
        return np.eye(k)[i]
    return None
