"""Multiple-choice probe scoring on SmolLM2-135M: one padded batch of prefix + candidate per probe (the kit before
2026-12-04) against the prefix read once and its key/value cache repeated for the candidates (the kit), side by
side on the same bundled probes in one process.

The work is counted in token positions through the model: K·(|prefix| + |candidate|) for the padded batch,
|prefix| + K·(|candidate| − 1) with a shared prefix. Their ratio is the most a shared prefix can save; what is
left is per-call overhead (two forward calls instead of one).

    .venv/bin/python benchmarks/probe_scoring.py [--entities 30] [--repeats 2]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from fusionkit.data.assets import load_base
from fusionkit.distill import load_entities, load_facts
from fusionkit.distill.probes import candidate_logprobs, context_ids, token_ids


@torch.no_grad()
def padded_batch(model, tok, prefix, candidates, sep=" "):
    """The previous formulation: every candidate with its own copy of the prefix, right-padded, one forward."""
    _, pre = context_ids(tok, "", prefix)
    cands = [token_ids(tok, sep + c) for c in candidates]
    seqs = [pre + c for c in cands]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], -1)
    logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    pos = torch.arange(width - 1)[None]
    lens = torch.tensor([len(c) for c in cands])[:, None]
    return (logp * ((pos >= len(pre) - 1) & (pos < len(pre) - 1 + lens))).sum(1)


def positions(tok, probes):
    full = shared = 0
    for p in probes:
        pre = len(context_ids(tok, "", p.prefix)[1])
        cands = [len(token_ids(tok, p.sep + c)) for c in p.candidates]
        full += len(cands) * (pre + max(cands))
        shared += pre + len(cands) * (max(cands) - 1)
    return full, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model, tok = load_base("smollm2-135m")
    model.eval()
    probes = [p for e in load_entities("bundled", "test")[:args.entities] for p in e.probes] + load_facts()[:30]
    probes = [p for p in probes if p.is_choice]
    seconds = {"padded batch (before)": [], "shared prefix (kit)": []}
    worst, same = 0.0, 0
    for r in range(args.repeats + 1):  # the first round warms up both and is not timed
        t = time.perf_counter()
        old = [padded_batch(model, tok, p.prefix, p.candidates, p.sep) for p in probes]
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        new = [candidate_logprobs(model, tok, p.prefix, p.candidates, sep=p.sep)[0] for p in probes]
        t_new = time.perf_counter() - t
        if r:
            seconds["padded batch (before)"].append(t_old)
            seconds["shared prefix (kit)"].append(t_new)
    worst = max(float((a - b).abs().max()) for a, b in zip(old, new))
    same = sum(int(a.argmax()) == int(b.argmax()) for a, b in zip(old, new))
    full, shared = positions(tok, probes)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; SmolLM2-135M, "
          f"{len(probes)} choice probes ({args.entities} test entities + 30 facts), best of {args.repeats}")
    print("| scoring | s for all probes | ms per probe | token positions | × kit |")
    print("|---|---|---|---|---|")
    kit = min(seconds["shared prefix (kit)"])
    for name, pos in (("padded batch (before)", full), ("shared prefix (kit)", shared)):
        s = min(seconds[name])
        print(f"| {name} | {s:.2f} | {1000 * s / len(probes):.0f} | {pos} | {s / kit:.2f} |")
    print(f"token-position ratio (the most a shared prefix saves): {full / shared:.2f}; largest |difference| of a "
          f"candidate's log-prob: {worst:.1e}; same prediction on {same}/{len(probes)} probes")


if __name__ == "__main__":
    main()
