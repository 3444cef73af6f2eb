"""The exercise checkers accept a from-scratch implementation and reject the classic mistakes; the computed
"what to notice" sentences say when an ordering did not come out."""
import math

import pytest
import torch

from fusionkit.reproduce.table import compare
from fusionkit.teaching import checkers
from fusionkit.teaching.notice import claim, ordering


def lerp(a, b, t):
    return (1 - t) * a + t * b


def slerp(a, b, t):
    a64, b64 = a.double().flatten(), b.double().flatten()
    omega = torch.arccos(torch.clamp(a64 @ b64 / (a64.norm() * b64.norm()), -1, 1))
    out = (torch.sin((1 - t) * omega) * a64 + torch.sin(t * omega) * b64) / torch.sin(omega)
    return out.view(a.shape)


def ties(base, experts, density, lam, elect="mass"):
    taus = torch.stack([e.double() - base.double() for e in experts])
    k = max(1, round(density * taus[0].numel()))
    cut = taus.abs().flatten(1).topk(k, dim=1).values[:, -1:]
    trimmed = taus * (taus.abs().flatten(1) >= cut).view_as(taus)
    sign = torch.sign(trimmed.sum(0)) if elect == "mass" else torch.sign(torch.sign(trimmed).sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    mean = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
    return base.double() + lam * mean


def dare(tau, p, rescale=True):
    kept = tau * (torch.rand(tau.shape, dtype=torch.float64) >= p)
    return kept / (1 - p) if rescale else kept


def regmean(weights, grams, alpha):
    gs = [alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g)) for g in grams]
    return torch.linalg.solve(sum(gs), sum(g @ w.T for g, w in zip(gs, weights))).T


def fisher(thetas, fishers):
    return sum(f * t for f, t in zip(fishers, thetas)) / sum(fishers)


def distill_loss(s, t, tau, reverse=False):
    ls, lt = torch.log_softmax(s / tau, -1), torch.log_softmax(t / tau, -1)
    kl = (ls.exp() * (ls - lt)) if reverse else (lt.exp() * (lt - ls))
    return tau ** 2 * kl.sum(-1).mean()


def crossover(parent, donor, CR, j_rand=True):
    mask = torch.rand(parent.shape) < CR
    if j_rand:
        mask[torch.randint(parent.numel(), (1,))] = True
    return torch.where(mask, donor, parent)


def barrier(ts, losses):
    inside = [(t, v) for t, v in zip(ts, losses) if 0 <= t <= 1]
    ends = (dict(inside)[0.0] + dict(inside)[1.0]) / 2
    return max(v for _, v in inside) - ends


def emr(taus, elect="max"):
    sign = torch.sign(taus.sum(0))
    agree = taus * sign > 0
    uni = sign * ((taus.abs() * agree).amax(0) if elect == "max" else (taus.abs() * agree).sum(0) / agree.sum(0).clamp_min(1))
    masks = [t * uni > 0 for t in taus]
    return uni, masks, [float(t.abs().sum() / (m * uni).abs().sum()) for t, m in zip(taus, masks)]


def ensemble_kl(student, experts, tau, mean="logits"):
    losses = []
    for t, z in experts.items():
        if mean == "logits":
            p = torch.softmax(z.mean(0) / tau, -1)
        else:  # the mean of the teachers' distributions: a different teacher when they disagree
            p = torch.softmax(z / tau, -1).mean(0)
        q = torch.log_softmax(student[t] / tau, -1)
        losses.append(tau ** 2 * (p * (p.log() - q)).sum(-1).mean())
    return torch.stack(losses).mean()


def plane_coordinates(o, a, b, m, orthogonalise=True):
    u = (a - o) / (a - o).norm()
    w = (b - o) - ((b - o) @ u) * u if orthogonalise else b - o
    v = w / w.norm()
    x, y = (m - o) @ u, (m - o) @ v
    return float(x), float(y), float((m - o - x * u - y * v).norm())


@pytest.mark.parametrize("check, right, wrong", [
    (checkers.check_plane_coordinates, plane_coordinates,
     lambda o, a, b, m: plane_coordinates(o, a, b, m, orthogonalise=False)),
    (checkers.check_lerp, lerp, lambda a, b, t: (1 - t) * a + t * a),
    (checkers.check_slerp, slerp, lerp),  # the chord is not the arc
    (checkers.check_ties, ties, lambda b, e, d, lam: ties(b, e, d, lam, elect="count")),
    (checkers.check_ties, ties, lambda b, e, d, lam: ties(b, e, d, 1.0)),  # λ ignored
    (checkers.check_dare, dare, lambda tau, p: dare(tau, p, rescale=False)),
    (checkers.check_dare, dare, lambda tau, p: tau),  # nothing dropped
    (checkers.check_regmean, regmean, lambda w, g, a: sum(w) / len(w)),  # the average
    (checkers.check_regmean, regmean, lambda w, g, a: regmean(w, g, 1.0)),  # α ignored
    (checkers.check_fisher, fisher, lambda th, f: sum(th) / len(th)),
    (checkers.check_distill_loss, distill_loss, lambda s, t, tau: distill_loss(s, t, tau, reverse=True)),
    (checkers.check_distill_loss, distill_loss, lambda s, t, tau: distill_loss(s, t, tau) / tau ** 2),
    (checkers.check_crossover, crossover, lambda p, d, cr: crossover(p, d, cr, j_rand=False)),
    (checkers.check_crossover, crossover, lambda p, d, cr: crossover(p, d, 1 - cr)),
    (checkers.check_barrier, barrier, lambda ts, ls: max(ls) - (ls[5] + ls[15]) / 2),  # t outside [0, 1] counted
    (checkers.check_emr, emr, lambda taus: emr(taus, elect="mean")),  # the mean of the agreeing, not the max
    (checkers.check_emr, emr, lambda taus: (*emr(taus)[:2], [1.0] * len(taus))),  # no rescaler
    (checkers.check_ensemble_kl, ensemble_kl, lambda s, e, tau: ensemble_kl(s, e, tau, mean="probs")),
    (checkers.check_ensemble_kl, ensemble_kl, lambda s, e, tau: ensemble_kl(s, e, 1.0)),  # τ ignored
])
def test_checker_accepts_the_method_and_rejects_a_mistake(check, right, wrong):
    assert check(right).startswith("✓")
    with pytest.raises(AssertionError, match=check.__name__):
        check(wrong)


def test_checker_names_a_wrong_shape_and_a_missing_return():
    with pytest.raises(AssertionError, match="shape"):
        checkers.check_fisher(lambda th, f: th[0].flatten())
    for check in (checkers.check_ties, checkers.check_dare, checkers.check_crossover, checkers.check_plane_coordinates):
        with pytest.raises(AssertionError, match="returned None"):
            check(lambda *args: None)


def test_ordering_states_the_order_and_admits_a_miss():
    ok = ordering({"RegMean": 0.68, "average": 0.53, "Fisher": 0.58}, ["RegMean", "Fisher", "average"], "mean test")
    assert ok.holds and "RegMean − Fisher = +10.0 points" in str(ok) and "Fisher − average = +5.0 points" in str(ok)
    miss = ordering({"TIES": 0.51, "average": 0.53}, ["TIES", "average"], "mean test")
    assert not miss.holds and "did **not** come out" in str(miss) and "TIES − average = -2.0 points" in str(miss)
    within = ordering({"a": 0.54, "b": 0.53}, ["a", "b"], "x", margin=0.02)
    assert not within.holds and "by more than 2.0 points" in str(within)  # within the margin
    errors = ordering({"average": 6.73, "RegMean": 0.0669}, ["average", "RegMean"], "error", accuracy=False)
    assert errors.holds and "average 6.73 > RegMean 0.0669" in str(errors) and "= +6.66" in str(errors)
    assert "What to notice" in ok._repr_markdown_()
    with pytest.raises(KeyError, match="no recorded value"):
        ordering({"a": 1.0}, ["a", "b"], "x")


def test_claim_sentence_carries_the_rows_verdict():
    a = [1.0] * 80 + [0.0] * 20
    b = [1.0] * 50 + [0.0] * 50
    row = compare("A > B", "A", {"t": a}, "B", {"t": b}, paper="p", setting="s")
    text = str(claim(row))
    assert claim(row).holds == (row.verdict == "reproduces") and row.verdict in text
    assert f"{100 * row.interval['diff']:+.1f} points" in text and not math.isnan(row.interval["lo"])
