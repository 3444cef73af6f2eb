"""Soups that choose their ingredients on dev data (zoo level: they need the experts' scores)."""
from __future__ import annotations

from ..registry import register


@register("greedy_soup", "greedy soup: add experts best-first while the uniform average's mean validation score "
          "rises (evaluates on dev data)", level="zoo", reference="https://arxiv.org/abs/2203.05482")
def greedy_soup(zoo, evaluator, experts: list[str] | None = None):
    """Greedy soup (Wortsman et al. 2022, "Model soups"): visit experts best-first by mean validation score, and
    keep each one whose addition to the running uniform average raises the soup's mean validation score. Dev data
    only; nothing random.

    Returns the final soup (a :class:`~fusionkit.merging.zoo_merge.Merged`) and the trace ``[{"expert", "dev",
    "kept"}]``.
    """
    # The zoo-level helpers sit above the registry; imported when a soup is made, so listing methods stays light.
    from ...models.heads import fused_heads, shared_label_space
    from ..zoo_merge import Merged, mean_score, merge_zoo, score_merged

    pool = [zoo.expert(n) for n in experts] if experts else list(zoo.experts)
    matrix = zoo.matrix(evaluator)
    order = sorted(pool, key=lambda e: -sum(s["validation"] for s in matrix[e.name].values()) / len(matrix[e.name]))
    heads = zoo.heads()

    def soup_of(members):
        if len(members) == 1:
            body, own = members[0].body_and_head()
            m = Merged("average", {}, body, {members[0].task: own}, shared_label_space(pool), members)
        else:
            m = merge_zoo("average", zoo, [e.name for e in members])
        if m.heads_merged:  # one model, its head fused: it serves every task of the pool
            m.heads = fused_heads(pool, next(iter(m.heads.values())))
        else:
            m.heads = {**heads, **m.heads}  # tasks with no expert in the soup keep their own head
        return mean_score(score_merged(m, zoo, evaluator, splits=("validation",)), "validation"), m

    soup = [order[0]]
    best, merged = soup_of(soup)
    trace = [{"expert": order[0].name, "dev": best, "kept": True}]
    for e in order[1:]:
        score, candidate = soup_of(soup + [e])
        kept = score > best
        trace.append({"expert": e.name, "dev": score, "kept": kept})
        if kept:
            soup, best, merged = soup + [e], score, candidate
    merged.method, merged.options = "greedy_soup", {"soup": [e.name for e in soup]}
    return merged, trace
