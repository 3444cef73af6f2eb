"""Exercise checkers: each runs a student's function on random cases and compares it with the kit.

``check_ties(fn)`` and friends return a one-line verdict when ``fn`` agrees with the kit on every case and raise
``AssertionError`` naming the first case that differs (its inputs' shapes and the largest deviation), so a student
sees what to fix. Deterministic methods are compared value by value; random ones (DARE's drop, DE's crossover) by
the properties that define them (unbiasedness, the entries' origin, the rate), which any correct implementation
has whatever generator it draws from.
"""
from __future__ import annotations

from typing import Callable

from ..core.lazy import lazy_import

torch = lazy_import("torch")


def _cases(seed: int, trials: int):
    gen = torch.Generator().manual_seed(seed)
    for i in range(trials):
        yield i, gen


def _returned(name: str, got):
    """The student's result as a float64 tensor; a function that returns nothing is named, not a crash."""
    if got is None:
        raise AssertionError(f"{name}: your function returned None; fix: return the result")
    return torch.as_tensor(got, dtype=torch.float64)


def _close(name: str, i: int, got, want, atol: float = 1e-5, what: str = "") -> None:
    got = _returned(name, got)
    want = torch.as_tensor(want, dtype=torch.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: case {i} returned shape {tuple(got.shape)}, expected {tuple(want.shape)}{what}")
    dev = float((got - want).abs().max()) if got.numel() else 0.0
    if not dev <= atol:
        raise AssertionError(f"{name}: case {i} differs from the kit by up to {dev:.3g} (tolerance {atol:g}){what}")


def _ok(name: str, trials: int, against: str) -> str:
    return f"✓ {name}: your function agrees with {against} on {trials} random cases"


def check_lerp(fn: Callable, trials: int = 5, seed: int = 0) -> str:
    """``fn(a, b, t)`` on two tensors: the straight line (1 − t)a + tb (``landscape.lerp``)."""
    from ..merging.landscape import lerp

    for i, gen in _cases(seed, trials):
        a, b = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
        t = float(torch.rand(1, generator=gen) * 2 - 0.5)
        _close("check_lerp", i, fn(a, b, t), lerp({"w": a}, {"w": b}, t, ["w"])["w"], what=f" at t={t:.2f}")
    return _ok("check_lerp", trials, "fusionkit.lerp")


def check_slerp(fn: Callable, trials: int = 5, seed: int = 0) -> str:
    """``fn(a, b, t)`` on two tensors: the great-circle interpolation of the flattened tensors (``ops.slerp``)."""
    from ..merging.ops import slerp

    for i, gen in _cases(seed, trials):
        a, b = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
        t = float(torch.rand(1, generator=gen))
        _close("check_slerp", i, fn(a, b, t), slerp(a, b, t), atol=1e-4, what=f" at t={t:.2f}")
    return _ok("check_slerp", trials, "fusionkit's SLERP")


def check_ties(fn: Callable, trials: int = 5, seed: int = 0) -> str:
    """``fn(base, experts, density, lam)``: TIES on one tensor (trim, elect by mass, disjoint mean, θ₀ + λτ)."""
    from ..merging.merge import merge

    for i, gen in _cases(seed, trials):
        base = torch.randn(6, 5, generator=gen)
        experts = [base + torch.randn(6, 5, generator=gen) for _ in range(3)]
        density, lam = [0.2, 0.5, 1.0, 0.3, 0.8][i % 5], [1.0, 0.7, 1.3, 1.0, 0.5][i % 5]
        want = merge("ties", [{"w": e} for e in experts], base={"w": base}, density=density, lam=lam)["w"]
        _close("check_ties", i, fn(base, experts, density, lam), want, what=f" (density={density}, λ={lam})")
    return _ok("check_ties", trials, "fusionkit.merge('ties')")


def check_emr(fn: Callable, trials: int = 5, seed: int = 0) -> str:
    """``fn(taus) -> (unified, masks, scales)`` on stacked task vectors ``[k, n]``: EMR-merging's elected vector,
    one 0/1 mask per task and each task's rescaler (Σ|τᵢ| / Σ|Mᵢ ⊙ τ_uni|)."""
    from ..merging.task_models import merge_task_specific

    for i, gen in _cases(seed, trials):
        k = 2 + i % 3
        taus = torch.randn(k, 12, generator=gen)
        want = merge_task_specific("emr", [{"w": t} for t in taus], {"w": torch.zeros(12)})
        got = fn(taus.clone())
        if not isinstance(got, tuple) or len(got) != 3:
            raise AssertionError(f"check_emr: case {i}: return (unified, masks, scales), got {type(got).__name__}")
        uni, masks, scales = got
        _close("check_emr", i, uni, want.shared["w"], what=" (the unified vector)")
        _close("check_emr", i, torch.stack([torch.as_tensor(m) for m in masks]).double(),
               torch.stack([m["w"] for m in want.masks]).double(), what=" (the masks)")
        _close("check_emr", i, torch.as_tensor(scales), torch.tensor(want.scales), atol=1e-4, what=" (the rescalers)")
    return _ok("check_emr", trials, "fusionkit.merge_task_specific('emr')")


def check_dare(fn: Callable, p: float = 0.7, draws: int = 400, seed: int = 0) -> str:
    """``fn(tau, p)``: DARE's drop and rescale. Every entry is 0 or τ/(1−p); about a fraction p is dropped; and
    the mean over many draws is τ itself (the rescaling makes the drop unbiased)."""
    gen = torch.Generator().manual_seed(seed)
    tau = torch.randn(200, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    outs = torch.stack([_returned("check_dare", fn(tau.clone(), p)) for _ in range(draws)])
    if outs.shape[1:] != tau.shape:
        raise AssertionError(f"check_dare: returned shape {tuple(outs.shape[1:])}, expected {tuple(tau.shape)}")
    kept = outs != 0
    if not torch.allclose(outs[kept], (tau / (1 - p)).expand_as(outs)[kept], atol=1e-6):
        raise AssertionError("check_dare: a kept entry is not τ/(1−p): rescale the survivors by 1/(1−p)")
    rate = 1 - float(kept.double().mean())
    if abs(rate - p) > 0.02:
        raise AssertionError(f"check_dare: dropped {rate:.3f} of the entries, expected p = {p}")
    bias = float((outs.mean(0) - tau).abs().mean() / tau.abs().mean())
    # the mean of `draws` Bernoulli-rescaled copies deviates by about sqrt(p/(1-p)/draws) ≈ 0.076 of |τ| here
    if bias > 4 * (p / (1 - p) / draws) ** 0.5:
        raise AssertionError(f"check_dare: the mean over {draws} draws is {bias:.1%} away from τ: it should be unbiased")
    return f"✓ check_dare: entries 0 or τ/(1−p), {rate:.1%} dropped (p = {p}), mean over {draws} draws ≈ τ"


def check_regmean(fn: Callable, trials: int = 4, seed: int = 0) -> str:
    """``fn(weights, grams, alpha)``: RegMean's closed form for one linear layer, Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ with
    G̃ᵢ = αGᵢ + (1−α)diag(Gᵢ); ``weights[i]`` is [out, in], ``grams[i]`` is [in, in]."""
    from ..merging.merge import merge

    for i, gen in _cases(seed, trials):
        ws = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
        xs = [torch.randn(20, 4, generator=gen, dtype=torch.float64) * torch.rand(4, generator=gen, dtype=torch.float64)
              for _ in range(2)]
        gs = [x.T @ x / len(x) for x in xs]
        alpha = [1.0, 0.5, 0.0, 0.9][i % 4]
        want = merge("regmean", [{"lin.weight": w} for w in ws], stats=[{"lin": g} for g in gs], alpha=alpha)
        _close("check_regmean", i, fn(ws, gs, alpha), want["lin.weight"], atol=1e-6, what=f" (α={alpha})")
    return _ok("check_regmean", trials, "fusionkit.merge('regmean')")


def check_fisher(fn: Callable, trials: int = 4, seed: int = 0) -> str:
    """``fn(thetas, fishers)``: the Fisher-weighted average Σ Fᵢθᵢ / Σ Fᵢ of one tensor (no normalisation)."""
    from ..merging.merge import merge

    for i, gen in _cases(seed, trials):
        thetas = [torch.randn(4, 3, generator=gen) for _ in range(3)]
        fishers = [torch.rand(4, 3, generator=gen) ** 2 + 1e-3 for _ in range(3)]
        want = merge("fisher", [{"w": t} for t in thetas], stats=[{"w": f} for f in fishers], normalize=False)["w"]
        _close("check_fisher", i, fn(thetas, fishers), want, atol=1e-5)
    return _ok("check_fisher", trials, "fusionkit.merge('fisher', normalize=False)")


def check_distill_loss(fn: Callable, trials: int = 4, seed: int = 0) -> str:
    """``fn(student_logits, teacher_logits, tau)`` on [positions, vocab]: τ² · mean over positions of
    KL(p_teacher ‖ p_student), both softened by τ (the kit's distillation loss)."""
    from ..distill.training import kl_loss

    for i, gen in _cases(seed, trials):
        s, t = torch.randn(5, 11, generator=gen) * 3, torch.randn(5, 11, generator=gen) * 3
        tau = [1.0, 2.0, 0.5, 4.0][i % 4]
        want = kl_loss(s, torch.log_softmax(t / tau, -1), tau)
        _close("check_distill_loss", i, fn(s, t, tau), want, atol=1e-5, what=f" (τ={tau})")
    return _ok("check_distill_loss", trials, "fusionkit.distill.training.kl_loss")


def check_ensemble_kl(fn: Callable, trials: int = 4, seed: int = 0) -> str:
    """``fn(student_logits, expert_logits, tau)``: ``student_logits[task]`` is [B, C], ``expert_logits[task]`` is
    [k, B, C] (the task's k teachers). The ensemble-distillation loss: per task τ² · mean over the batch of
    KL(softmax(mean of the teachers' logits / τ) ‖ softmax(student / τ)), then the mean over tasks."""
    from ..distill.ensemble import ensemble_kl

    for i, gen in _cases(seed, trials):
        tau = [1.0, 2.0, 0.5, 4.0][i % 4]
        shapes = {"a": (1, 6, 3), "b": (3, 6, 5)}  # one teacher for a, three for b; label spaces of 3 and 5
        experts = {t: torch.randn(*sh, generator=gen) * 3 for t, sh in shapes.items()}
        student = {t: torch.randn(*sh[1:], generator=gen) * 3 for t, sh in shapes.items()}
        want = ensemble_kl(student, {t: torch.log_softmax(z.mean(0) / tau, -1) for t, z in experts.items()}, tau)
        _close("check_ensemble_kl", i, fn(student, experts, tau), want, atol=1e-5, what=f" (τ={tau})")
    return _ok("check_ensemble_kl", trials, "fusionkit.distill.ensemble.ensemble_kl")


def check_crossover(fn: Callable, CR: float = 0.3, draws: int = 300, seed: int = 0) -> str:
    """``fn(parent, donor, CR)``: binomial crossover. Each entry comes from the donor with probability CR (else the
    parent), and at least one entry always comes from the donor (classic DE's j_rand)."""
    parent, donor = torch.zeros(40), torch.ones(40)
    torch.manual_seed(seed)
    took = []
    for k in range(draws):
        child = _returned("check_crossover", fn(parent.clone(), donor.clone(), CR))
        if child.shape != parent.shape or not ((child == 0) | (child == 1)).all():
            raise AssertionError("check_crossover: every entry must be the parent's or the donor's value")
        if child.sum() == 0:
            raise AssertionError(f"check_crossover: draw {k} took nothing from the donor (j_rand must come from it)")
        took.append(float(child.mean()))
    rate = sum(took) / draws
    expected = CR + (1 - CR) / 40  # j_rand adds one entry in 40 when the coin said "parent"
    if abs(rate - expected) > 0.02:
        raise AssertionError(f"check_crossover: took {rate:.3f} of the entries from the donor, expected ≈ {expected:.3f}")
    return f"✓ check_crossover: entries from parent or donor, {rate:.1%} from the donor (CR = {CR}), never none"


def check_barrier(fn: Callable, trials: int = 5, seed: int = 0) -> str:
    """``fn(ts, losses)``: the loss barrier max_{t∈[0,1]} L(t) − ½(L(0) + L(1)) of a path (``landscape.barrier``)."""
    from ..merging.landscape import barrier

    for i, gen in _cases(seed, trials):
        ts = [round(-0.5 + 0.1 * k, 2) for k in range(21)]
        losses = (torch.rand(21, generator=gen) + torch.linspace(-1, 1, 21) ** 2).tolist()
        _close("check_barrier", i, fn(ts, losses), barrier(ts, losses, "loss"), atol=1e-9)
    return _ok("check_barrier", trials, "fusionkit.barrier")


def check_plane_coordinates(fn: Callable, trials: int = 4, seed: int = 0) -> str:
    """``fn(o, a, b, m)`` on flat tensors: ``(x, y, off)``, the coordinates of ``m`` on the plane through ``o, a,
    b`` with Gram–Schmidt axes (u along a − o) and its distance from that plane (``Plane.project``)."""
    from ..merging.landscape import plane_through

    for i, gen in _cases(seed, trials):
        o, a, b, m = (torch.randn(30, generator=gen) for _ in range(4))
        want = plane_through({"w": o}, {"w": a}, {"w": b}).project({"w": m})
        got = tuple(float(v) for v in _returned("check_plane_coordinates", fn(o, a, b, m)))
        _close("check_plane_coordinates", i, got, want, atol=1e-4, what=" (x, y, off)")
    return _ok("check_plane_coordinates", trials, "Plane.project")
