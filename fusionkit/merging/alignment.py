"""Permutation alignment by weight matching (Ainsworth et al. 2023, *Git Re-Basin*, algorithm 2), for BERT-family
encoders: reorder one model's hidden units so that they line up with another's before the two are interpolated.

A network has many weight vectors for one function: permuting the hidden units of a feed-forward block (rows of
its first matrix and bias, columns of its second) or the heads of an attention layer (blocks of rows of Q, K, V,
blocks of columns of the output projection) changes no output. Two models trained from different starts may be
close *after* such a reordering while far apart before it - averaging unit *i* of one with unit *i* of the other
then mixes unrelated features, which is the barrier of notebook 01. Weight matching picks, per block, the
permutation P that maximises the inner product of the reference's weights with the permuted other's,

    P* = argmax_P  Σ_W ⟨W_A, P W_B⟩   (summed over every matrix the block's units index: rows and columns),

a linear assignment problem solved exactly by the Hungarian method (``scipy.optimize.linear_sum_assignment``).
Blocks whose units feed only one another (one feed-forward block; the heads of one attention layer) are solved
independently and exactly. ``residual=True`` also matches the residual stream: one permutation of the hidden
dimension shared by every tensor that reads or writes it - the embeddings' columns and LayerNorm, every layer's Q,
K, V and intermediate columns, the rows of both output projections and their LayerNorms, the pooler's columns.
Its similarity depends on how the blocks are ordered and theirs on it, so Git Re-Basin's coordinate descent
alternates - the residual permutation given the blocks, then each block given the residual - until a whole sweep
moves nothing (each step cannot lower the objective). Not aligned: the dimensions inside a head (Q with K, V with
the output projection), which leave the function unchanged too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import MergeError
from ..core.lazy import lazy_import

torch = lazy_import("torch")

FFN = re.compile(r"^(?P<layer>.*)\.intermediate\.dense\.weight$")


@dataclass
class Alignment:
    """The other model reordered (``state``), the permutation of each block (``perms[block]``: unit i of the
    aligned model is unit ``perms[block][i]`` of the other) and how many units each block moved."""

    state: dict
    perms: dict
    moved: dict
    sweeps: int = 1  # coordinate-descent sweeps (1 without the residual stream: the blocks are independent)

    def __repr__(self) -> str:
        total = sum(len(p) for p in self.perms.values())
        return (f"Alignment({len(self.perms)} blocks, {sum(self.moved.values())} of {total} units moved"
                f"{f', {self.sweeps} sweeps' if self.sweeps > 1 else ''})")


def _assign(similarity) -> "torch.Tensor":
    """The permutation maximising the total similarity: row i of the reference takes column perm[i] of the other."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(similarity.double().cpu().numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


def _check(reference: dict, other: dict, names: list[str]) -> None:
    for n in names:
        if n not in other:
            raise MergeError(f"weight matching: {n!r} is in the reference but not in the other model; fix: align two "
                             "checkpoints of the same architecture")
        if tuple(reference[n].shape) != tuple(other[n].shape):
            raise MergeError(f"weight matching: {n!r} has shape {tuple(reference[n].shape)} in the reference but "
                             f"{tuple(other[n].shape)} in the other model; fix: align same-architecture checkpoints")


def _match(reference: dict, state: dict, rows: list[str], cols: list[str], size: int = 1):
    """One block: its units are the rows of the ``rows`` tensors and the columns of the ``cols`` tensors, ``size``
    consecutive units moving together (1 for feed-forward units, the head width for heads). Permutes ``state`` in
    place and returns the permutation of the groups."""
    rows = [n for n in rows if n in reference]  # biases are optional
    _check(reference, state, rows + cols)

    def grouped(t, by_cols):  # [groups, everything a group owns]
        t = t.double().T if by_cols else t.double()
        return t.reshape(t.shape[0] // size, -1)

    sim = sum(grouped(reference[n], by_cols) @ grouped(state[n], by_cols).T
              for names, by_cols in ((rows, False), (cols, True)) for n in names)
    perm = _assign(sim)
    _permute(state, rows, cols, perm, size)
    return perm


def _permute(state: dict, rows: list[str], cols: list[str], perm, size: int = 1) -> None:
    """Reorder one block's units in ``state`` (in place): unit i becomes unit ``perm[i]``."""
    units = (perm[:, None] * size + torch.arange(size)).reshape(-1)
    for n in rows:
        state[n] = state[n][units]
    for n in cols:
        state[n] = state[n][:, units]


def _ffn(reference: dict, state: dict, layer: str):
    """A feed-forward block: rows of intermediate.dense (weight, bias), columns of output.dense."""
    return _match(reference, state, [f"{layer}.intermediate.dense.weight", f"{layer}.intermediate.dense.bias"],
                  [f"{layer}.output.dense.weight"])


def _heads(reference: dict, state: dict, layer: str, num_heads: int):
    """An attention layer's heads: head h is rows [h·d, (h+1)·d) of Q, K, V (weights and biases) and the same
    columns of the output projection; heads move as whole blocks."""
    att = f"{layer}.attention"
    out = f"{att}.output.dense.weight"
    _check(reference, state, [out])
    width = reference[out].shape[1]
    if width % num_heads:
        raise MergeError(f"weight matching: {att} has width {width}, not divisible by num_heads={num_heads}; fix: "
                         "pass the model's config.num_attention_heads")
    rows = [f"{att}.self.{p}.{k}" for p in ("query", "key", "value") for k in ("weight", "bias")]
    return _match(reference, state, rows, [out], size=width // num_heads)


def residual_tensors(state: dict) -> tuple[list[str], list[str]]:
    """The tensors that index the residual stream of a BERT-family model: ``(rows, cols)`` - names whose first
    dimension is the hidden size (output projections, their biases, every LayerNorm) and names whose second is
    (embeddings, Q/K/V, the intermediate projection, the pooler)."""
    layers = [m.group("layer") for n in state if (m := FFN.match(n))]
    emb = next((n.removesuffix(".LayerNorm.weight") for n in state if n.endswith("embeddings.LayerNorm.weight")), None)
    if emb is None:
        raise MergeError("residual matching: no '*embeddings.LayerNorm.weight'; fix: align BERT-family models, or "
                         "leave residual=False")
    rows = [f"{emb}.LayerNorm.weight", f"{emb}.LayerNorm.bias"]
    cols = [n for n in state if n.startswith(emb + ".") and n.endswith("_embeddings.weight")]
    for layer in layers:
        att = f"{layer}.attention"
        cols += [f"{att}.self.{p}.weight" for p in ("query", "key", "value")] + [f"{layer}.intermediate.dense.weight"]
        rows += [f"{block}.{part}" for block in (f"{att}.output", f"{layer}.output")
                 for part in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias")]
    cols += [n for n in state if n.endswith("pooler.dense.weight")]
    return [n for n in rows if n in state], cols


def weight_matching(reference: dict, other: dict, num_heads: int | None = None, residual: bool = False,
                    max_sweeps: int = 20) -> Alignment:
    """Align ``other`` to ``reference`` (two state dicts of one BERT-family architecture, bodies or whole models):
    every feed-forward block's hidden units and, with ``num_heads``, every attention layer's heads, each by an
    exact linear assignment on the weights; with ``residual=True`` also the residual stream, by coordinate descent
    over at most ``max_sweeps`` sweeps (module docstring). ``other`` is not modified; the aligned copy computes
    the same function as ``other``. Interpolate ``reference`` with ``.state`` instead of with ``other``."""
    layers = [m.group("layer") for n in reference if (m := FFN.match(n))]
    if not layers:
        raise MergeError("weight matching: no '*.intermediate.dense.weight' feed-forward blocks in the reference; "
                         "fix: pass BERT-family state dicts (encoder layers with intermediate/output dense blocks)")
    state = dict(other)
    blocks = {}
    if residual:
        rows, cols = residual_tensors(reference)
        blocks["residual"] = lambda: _match(reference, state, rows, cols)
    for layer in layers:
        blocks[f"{layer}:ffn"] = lambda layer=layer: _ffn(reference, state, layer)
        if num_heads:
            blocks[f"{layer}:heads"] = lambda layer=layer: _heads(reference, state, layer, num_heads)
    perms: dict = {}
    sweeps = 0
    for sweeps in range(1, (max_sweeps if residual else 1) + 1):
        changed = False
        for key, solve in blocks.items():
            perm = solve()  # aligned unit i = unit perm[i] of the state before this step
            changed |= bool((perm != torch.arange(len(perm))).any())
            perms[key] = perm if key not in perms else perms[key][perm]
        if not changed:
            break
    moved = {k: int((p != torch.arange(len(p))).sum()) for k, p in perms.items()}
    return Alignment(state, perms, moved, sweeps)


def _activations(model, state: dict, inputs: list[dict], modules: dict[str, str]) -> dict:
    """Each named module's output on every non-padding token of ``inputs``, ``{key: [tokens, width]}`` (float64)."""
    got: dict = {k: [] for k in modules}
    masks = []

    def keep(key):
        def hook(module, args, out):
            got[key].append((out[0] if isinstance(out, tuple) else out).detach())
        return hook

    handles = [model.get_submodule(m).register_forward_hook(keep(k)) for k, m in modules.items()]
    try:
        with torch.no_grad():
            for batch in inputs:
                torch.func.functional_call(model, state, args=(), kwargs=dict(batch), strict=False)
                masks.append(batch["attention_mask"].bool())
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat([a[m] for a, m in zip(v, masks)]).double() for k, v in got.items()}


def _correlation(a, b):
    """Pearson correlation of every unit of ``a`` with every unit of ``b`` over tokens: ``[width_a, width_b]``."""
    za = (a - a.mean(0)) / a.std(0).clamp_min(1e-12)
    zb = (b - b.mean(0)) / b.std(0).clamp_min(1e-12)
    return za.T @ zb / (len(a) - 1)


def activation_matching(model, reference: dict, other: dict, inputs: list[dict], residual: bool = False) -> Alignment:
    """Align ``other`` to ``reference`` by what the units *do* (Git Re-Basin's activation matching, Ainsworth et al.
    2023 §3.1; Li et al. 2016): run both on ``inputs`` (tokenised batches with an ``attention_mask``, e.g. a few
    hundred dev texts) through ``model`` (the architecture, via ``functional_call``), and per feed-forward block
    assign the other's units to the reference's by the Pearson correlation of their activations over every
    non-padding token (Hungarian, maximised). With ``residual=True`` the residual stream too: one permutation
    from the correlations of the embeddings' and every layer's output, summed over layers. Permuting a model does
    not change what its units compute, only their order, so one forward pass of each model serves every block.
    Attention heads are left in place (``weight_matching(num_heads=...)`` aligns them)."""
    layers = [m.group("layer") for n in reference if (m := FFN.match(n))]
    if not layers:
        raise MergeError("activation matching: no '*.intermediate.dense.weight' feed-forward blocks; fix: pass "
                         "BERT-family state dicts")
    if not inputs or any("attention_mask" not in b for b in inputs):
        raise MergeError("activation matching needs tokenised inputs with an attention_mask; fix: pass "
                         "[tokenizer(texts, padding=True, return_tensors='pt')] (a few hundred dev texts)")
    modules = {f"{layer}:ffn": f"{layer}.intermediate" for layer in layers}
    if residual:
        rows, cols = residual_tensors(reference)
        emb = rows[0].removesuffix(".LayerNorm.weight")
        modules.update({"residual:embeddings": emb, **{f"residual:{layer}": f"{layer}.output" for layer in layers}})
    acts_ref = _activations(model, reference, inputs, modules)
    acts_other = _activations(model, other, inputs, modules)
    state, perms = dict(other), {}
    for layer in layers:
        key = f"{layer}:ffn"
        perms[key] = _assign(_correlation(acts_ref[key], acts_other[key]))
        _permute(state, [f"{layer}.intermediate.dense.weight", f"{layer}.intermediate.dense.bias"],
                 [f"{layer}.output.dense.weight"], perms[key])
    if residual:
        keys = [k for k in modules if k.startswith("residual:")]
        perms["residual"] = _assign(sum(_correlation(acts_ref[k], acts_other[k]) for k in keys))
        _permute(state, rows, cols, perms["residual"])
    moved = {k: int((p != torch.arange(len(p))).sum()) for k, p in perms.items()}
    return Alignment(state, perms, moved)
