"""Loss and accuracy along a path and over a plane in weight space.

Paths (Frankle et al. 2020, *Linear Mode Connectivity and the Lottery Ticket Hypothesis*; Garipov et al. 2018):

    θ(t) = (1 − t)θ_A + tθ_B,   t ∈ [−0.5, 1.5]          (linear; t outside [0, 1] extrapolates)
    θ(t) = slerp(θ_A, θ_B, t)  per tensor               (SLERP, :func:`fusionkit.merging.ops.slerp`)

    barrier = max_{t∈[0,1]} L(t) − ½(L(0) + L(1))        (``reference="mean"``, Frankle et al.)
    barrier = max_{t∈[0,1]} [L(t) − ((1 − t)L(0) + tL(1))]   (``reference="line"``, Entezari et al. 2022)

For accuracy the analogue uses the minimum: ½(A(0) + A(1)) − min_t A(t). Only t ∈ [0, 1] enters a barrier;
the extrapolated ends are for looking at.

Planes (Garipov et al. 2018; Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets*):

* through three models: u = (θ_B − θ_A)/‖θ_B − θ_A‖, v = the part of θ_C − θ_A orthogonal to u, normalised
  (Gram–Schmidt over all evaluated parameters flattened); the point (x, y) is θ_A + xu + yv, so the models sit
  at (0, 0), (‖θ_B − θ_A‖, 0) and (⟨θ_C − θ_A, u⟩, ‖θ_C − θ_A − ⟨θ_C − θ_A, u⟩u‖);
* around one model: two random directions d, each output row of each weight matrix rescaled to the norm of
  that row of θ (Li et al.'s filter normalisation, with transformer rows in place of conv filters); the
  directions of biases and norm weights are zero, so those stay put.

Any other state (a merge) is placed on the plane by least squares, (x, y) = G⁻¹[⟨d, u⟩, ⟨d, v⟩] with
d = θ − origin and G the Gram matrix of (u, v); its distance from the plane is reported with it.

Evaluations go through the kit's one scorer (:class:`~fusionkit.models.scorer.Scorer`, its losses and scores on
one live model with ``functional_call``; :func:`~fusionkit.models.zoo.zoo_scorer` builds one for a zoo): a grid
point is two axpy's over the body and one forward pass per task - no reloads, no deep copies.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import FusionkitError
from ..models.scorer import Scorer
from .ops import slerp, slerp_cosine, slerp_mix

StateDict = dict[str, torch.Tensor]
DEFAULT_TS = tuple(round(-0.5 + 0.1 * i, 2) for i in range(21))  # −0.5 … 1.5 in steps of 0.1


def float_names(state: StateDict) -> list[str]:
    """The floating-point tensors of a state: what paths and planes move."""
    return [n for n, t in state.items() if t.is_floating_point()]


def _check_same(states: list[StateDict], names: list[str]) -> None:
    for i, s in enumerate(states):
        missing = [n for n in names if n not in s]
        if missing:
            raise FusionkitError(f"state {i} lacks {missing[:3]} ({len(missing)} in all); fix: pass bodies of one "
                             "architecture (Expert.body_and_head()[0])")
        bad = [n for n in names if s[n].shape != states[0][n].shape]
        if bad:
            raise FusionkitError(f"tensor {bad[0]!r} has shape {tuple(s[bad[0]].shape)} in state {i} but "
                             f"{tuple(states[0][bad[0]].shape)} in state 0; fix: models of one architecture")


# ------------------------------------------------------------------------------------------ paths
def lerp(a: StateDict, b: StateDict, t: float, names: list[str]) -> StateDict:
    """(1 − t)θ_A + tθ_B over ``names``."""
    return {n: torch.lerp(a[n].float(), b[n].float(), float(t)) for n in names}


def slerp_states(a: StateDict, b: StateDict, t: float, names: list[str]) -> StateDict:
    """Per-tensor SLERP of two states (the same :func:`~fusionkit.merging.ops.slerp` the merge method uses)."""
    return {n: slerp(a[n].float(), b[n].float(), float(t)) for n in names}


def _slerp_along(a: StateDict, b: StateDict, names: list[str]):
    """t ↦ :func:`slerp_states` (a, b, t), with the float64 copies and each tensor's angle computed once for the
    whole path rather than once per t (a 21-point SLERP path over MiniLM spent most of its time there); the same
    float64 arithmetic as :func:`~fusionkit.merging.ops.slerp`, so the same states."""
    flat = {n: (a[n].float().double().reshape(-1), b[n].float().double().reshape(-1)) for n in names}
    cos = {n: slerp_cosine(*flat[n]) for n in names}
    return lambda t: {n: slerp_mix(*flat[n], cos[n], float(t)).view(a[n].shape).float() for n in names}


def _linear_along(a: StateDict, b: StateDict, names: list[str]):
    return lambda t: lerp(a, b, t, names)


PATHS = {"linear": _linear_along, "slerp": _slerp_along}


def barrier(ts, values, kind: str = "loss", reference: str = "mean") -> float:
    """Height of the bump between the ends (t = 0, 1) of a path; only t ∈ [0, 1] counts.

    ``kind="loss"``: how far the loss rises above the reference; ``"accuracy"``: how far accuracy falls below it.
    ``reference="mean"``: ½(v(0) + v(1)) (Frankle et al. 2020); ``"line"``: (1 − t)v(0) + tv(1) (Entezari et al.
    2022, zero for any straight line). Needs t = 0 and t = 1 among ``ts``.
    """
    ts, values = np.asarray(ts, dtype=float), np.asarray(values, dtype=float)
    if kind not in ("loss", "accuracy"):
        raise FusionkitError(f"kind={kind!r}; fix: 'loss' or 'accuracy'")
    if reference not in ("mean", "line"):
        raise FusionkitError(f"reference={reference!r}; fix: 'mean' or 'line'")
    ends = [np.flatnonzero(np.isclose(ts, e)) for e in (0.0, 1.0)]
    if any(len(e) == 0 for e in ends):
        raise FusionkitError("the path has no point at t = 0 or t = 1; fix: include both in ts")
    v0, v1 = values[ends[0][0]], values[ends[1][0]]
    inside = (ts >= -1e-9) & (ts <= 1 + 1e-9)
    t, v = ts[inside], values[inside]
    ref = np.full_like(v, (v0 + v1) / 2) if reference == "mean" else (1 - t) * v0 + t * v1
    gap = v - ref if kind == "loss" else ref - v
    return float(gap.max())


@dataclass
class Path:
    """Scores along a path: ``points[i]`` is the scorer's dict at ``ts[i]``."""

    method: str
    ts: list[float]
    points: list[dict]
    seconds: float

    def values(self, metric: str = "loss", task: str | None = None) -> list[float]:
        """Per t: one task's ``metric`` ("loss" or "accuracy"), or the mean over tasks."""
        return [p[metric][task] if task else p[f"mean_{metric}"] for p in self.points]

    def barrier(self, metric: str = "loss", task: str | None = None, reference: str = "mean") -> float:
        return barrier(self.ts, self.values(metric, task), metric, reference)

    def at(self, t: float) -> dict:
        """The point nearest to ``t``."""
        return self.points[int(np.argmin(np.abs(np.asarray(self.ts) - t)))]

    def between(self, lo: float = 0.0, hi: float = 1.0) -> "Path":
        """The part of the path with lo ≤ t ≤ hi (no new evaluations)."""
        keep = [i for i, t in enumerate(self.ts) if lo - 1e-9 <= t <= hi + 1e-9]
        return Path(self.method, [self.ts[i] for i in keep], [self.points[i] for i in keep], self.seconds)


def path(scorer: Scorer, a: StateDict, b: StateDict, ts=DEFAULT_TS, method: str = "linear",
         names: list[str] | None = None, quiet: bool = True) -> Path:
    """Score the path from ``a`` (t = 0) to ``b`` (t = 1) at each ``t``, by ``method`` ("linear" or "slerp")."""
    if method not in PATHS:
        raise FusionkitError(f"unknown path {method!r}; fix: use one of {', '.join(PATHS)}")
    names = names or float_names(a)
    _check_same([a, b], names)
    t0 = time.perf_counter()
    at = PATHS[method](a, b, names)
    points = [scorer.losses_and_scores(at(t)) for t in tqdm(list(ts), desc=f"{method} path", disable=quiet)]
    return Path(method, [float(t) for t in ts], points, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ planes
def dot(a: StateDict, b: StateDict, names: list[str]) -> float:
    """⟨a, b⟩ over ``names``, accumulated in float64."""
    return float(sum(torch.dot(a[n].reshape(-1).double(), b[n].reshape(-1).double()) for n in names))


def _combine(terms: list[tuple[float, StateDict]], names: list[str]) -> StateDict:
    """Σ cᵢ sᵢ over ``names`` (float32)."""
    out = {}
    for n in names:
        acc = terms[0][1][n].float() * terms[0][0]
        for c, s in terms[1:]:
            acc = acc.add(s[n].float(), alpha=c)
        out[n] = acc
    return out


@dataclass
class Plane:
    """θ(x, y) = origin + x·u + y·v. ``anchors`` are labelled points (the models that define the plane)."""

    origin: StateDict
    u: StateDict
    v: StateDict
    names: list[str]
    anchors: dict[str, tuple[float, float]]
    kind: str  # "models" (orthonormal u, v) or "random" (row-normalised directions)

    def state(self, x: float, y: float) -> StateDict:
        return {n: self.origin[n].float() + x * self.u[n] + y * self.v[n] for n in self.names}

    def project(self, state: StateDict) -> tuple[float, float, float]:
        """``(x, y, distance from the plane)`` of any state, by least squares."""
        _check_same([self.origin, state], self.names)
        d = _combine([(1.0, state), (-1.0, self.origin)], self.names)
        g = np.array([[dot(self.u, self.u, self.names), dot(self.u, self.v, self.names)],
                      [dot(self.u, self.v, self.names), dot(self.v, self.v, self.names)]])
        x, y = np.linalg.solve(g, [dot(d, self.u, self.names), dot(d, self.v, self.names)])
        residual = _combine([(1.0, d), (-float(x), self.u), (-float(y), self.v)], self.names)
        return float(x), float(y), math.sqrt(max(dot(residual, residual, self.names), 0.0))


def plane_through(a: StateDict, b: StateDict, c: StateDict, labels=("A", "B", "C"),
                  names: list[str] | None = None) -> Plane:
    """The plane through three models, orthonormal axes by Gram–Schmidt; ``a`` is the origin."""
    names = names or float_names(a)
    _check_same([a, b, c], names)
    ab = _combine([(1.0, b), (-1.0, a)], names)
    ac = _combine([(1.0, c), (-1.0, a)], names)
    nab = math.sqrt(dot(ab, ab, names))
    if nab == 0:
        raise FusionkitError(f"{labels[0]} and {labels[1]} are the same point; fix: pick two different models")
    u = {n: ab[n] / nab for n in names}
    cx = dot(ac, u, names)
    w = _combine([(1.0, ac), (-cx, u)], names)
    cy = math.sqrt(dot(w, w, names))
    if cy < 1e-6 * nab:
        raise FusionkitError(f"{labels} are (nearly) on one line, so they span no plane; fix: pick another model")
    v = {n: w[n] / cy for n in names}
    anchors = {labels[0]: (0.0, 0.0), labels[1]: (nab, 0.0), labels[2]: (cx, cy)}
    return Plane({n: a[n].float() for n in names}, u, v, names, anchors, "models")


def random_direction(state: StateDict, names: list[str], generator: torch.Generator) -> StateDict:
    """Gaussian direction with each row of each weight matrix scaled to that row's norm in ``state``;
    zero for 1-D tensors (biases, norm weights)."""
    out = {}
    for n in names:
        t = state[n].float()
        if t.dim() < 2:
            out[n] = torch.zeros_like(t)
            continue
        d = torch.randn(t.shape, generator=generator).reshape(t.shape[0], -1)
        rows = t.reshape(t.shape[0], -1)
        d = d * (rows.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True).clamp_min(1e-12))
        out[n] = d.reshape(t.shape)
    return out


def random_plane(center: StateDict, seed: int = 0, label: str = "center", names: list[str] | None = None) -> Plane:
    """Two random row-normalised directions around ``center`` (Li et al. 2018); coordinates are in units of the
    weights' own row norms, so (1, 0) moves every row by its own length."""
    names = names or float_names(center)
    gen = torch.Generator().manual_seed(seed)
    u = random_direction(center, names, gen)
    v = random_direction(center, names, gen)
    return Plane({n: center[n].float() for n in names}, u, v, names, {label: (0.0, 0.0)}, "random")


def grid_axes(plane: Plane, resolution: int = 7, margin: float = 0.25, span: float = 1.0,
              points: dict | None = None) -> tuple[list[float], list[float]]:
    """Grid coordinates: for a plane through models, the box around its anchors (and any extra ``points``)
    widened by ``margin`` × its larger side; for a random plane, [−span, span]²."""
    if resolution < 2:
        raise FusionkitError(f"resolution={resolution}; fix: at least 2 points per axis")
    if plane.kind == "random":
        axis = np.linspace(-span, span, resolution).tolist()
        return axis, list(axis)
    pts = list(plane.anchors.values()) + [p[:2] for p in (points or {}).values()]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    pad = margin * max(max(xs) - min(xs), max(ys) - min(ys))
    return (np.linspace(min(xs) - pad, max(xs) + pad, resolution).tolist(),
            np.linspace(min(ys) - pad, max(ys) + pad, resolution).tolist())


@dataclass
class Grid:
    """Scores on a grid of the plane: arrays are ``[len(ys), len(xs)]`` (row = y), as contour plots want."""

    xs: list[float]
    ys: list[float]
    loss: np.ndarray  # mean over tasks
    accuracy: np.ndarray
    per_task: dict[str, dict[str, np.ndarray]]  # {"loss": {task: array}, "accuracy": {...}}
    seconds: float
    anchors: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.loss.shape

    def nearest(self, x: float, y: float, metric: str = "accuracy") -> float:
        """The mean ``metric`` at the grid point nearest to (x, y)."""
        i = int(np.argmin(np.abs(np.asarray(self.ys) - y)))
        j = int(np.argmin(np.abs(np.asarray(self.xs) - x)))
        return float(getattr(self, metric)[i, j])


def evaluate_grid(scorer: Scorer, plane: Plane, xs, ys, quiet: bool = True) -> Grid:
    """Score every grid point θ(x, y) (one state built and scored at a time)."""
    tasks = list(scorer.tasks)
    loss, acc = np.zeros((len(ys), len(xs))), np.zeros((len(ys), len(xs)))
    per = {m: {t: np.zeros((len(ys), len(xs))) for t in tasks} for m in ("loss", "accuracy")}
    t0 = time.perf_counter()
    with tqdm(total=len(xs) * len(ys), desc="plane grid", disable=quiet) as bar:
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                p = scorer.losses_and_scores(plane.state(x, y))
                loss[i, j], acc[i, j] = p["mean_loss"], p["mean_accuracy"]
                for m in per:
                    for t in tasks:
                        per[m][t][i, j] = p[m][t]
                bar.update()
    return Grid(list(map(float, xs)), list(map(float, ys)), loss, acc, per, time.perf_counter() - t0,
                dict(plane.anchors))


# ------------------------------------------------------------------------------------------ the simplex
def mix(states: list[StateDict], weights, names: list[str] | None = None) -> StateDict:
    """Σ wᵢθᵢ with the weights normalised to sum to one (a point of the models' simplex)."""
    w = np.asarray(weights, dtype=float)
    if len(w) != len(states) or (w < 0).any() or w.sum() <= 0:
        raise FusionkitError(f"weights {list(w)} for {len(states)} models; fix: one non-negative weight per model, "
                         "not all zero")
    names = names or float_names(states[0])
    return _combine([(float(wi), s) for wi, s in zip(w / w.sum(), states)], names)


def simplex_grid(steps: int = 3, k: int = 3) -> list[tuple[float, ...]]:
    """Every weighting (i₁/steps, …, i_k/steps) with Σ i = steps: the corners, edges and inside of the simplex."""
    def rec(left, parts):
        if parts == 1:
            return [(left,)]
        return [(i,) + rest for i in range(left, -1, -1) for rest in rec(left - i, parts - 1)]
    return [tuple(round(i / steps, 6) for i in combo) for combo in rec(steps, k)]


def simplex_scores(scorer: Scorer, states: list[StateDict], weightings, quiet: bool = True) -> list[dict]:
    """The scorer's dict, plus ``"weights"``, for the mix of ``states`` at each weighting."""
    names = float_names(states[0])
    return [{**scorer.losses_and_scores(mix(states, w, names)), "weights": [float(x) for x in w]}
            for w in tqdm(list(weightings), desc="simplex", disable=quiet)]


def tensor_angles(a: StateDict, b: StateDict, names: list[str] | None = None) -> dict[str, float]:
    """Per tensor, the angle Ω (degrees) between θ_A and θ_B flattened - what separates SLERP from the chord:
    at t = ½ the arc is longer than the chord by a factor 1/cos(Ω/2)."""
    names = names or float_names(a)
    out = {}
    for n in names:
        x, y = a[n].reshape(-1).double(), b[n].reshape(-1).double()
        cos = float(x @ y / (x.norm() * y.norm()).clamp_min(1e-30))
        out[n] = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    return out
