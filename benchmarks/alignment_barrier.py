"""The barrier between two experts before and after permutation alignment, on notebook 01's pair: the sentiment
expert A and a subjectivity expert fine-tuned from a *permuted* MiniLM (every feed-forward block's units shuffled,
``finetune(permute=1)``), next to the subjectivity expert from the shared start. Each path θ(t) = (1 − t)θ_A + tθ_B,
t ∈ [0, 1] step 0.1, is scored on both tasks' dev examples (each task with its own expert's head); rows: the
loss and accuracy barriers, the midpoint's mean accuracy, ‖θ_A − θ_B‖ and the alignment's seconds.

    .venv/bin/python benchmarks/alignment_barrier.py [--texts 256]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import fusionkit as fk
from fusionkit import Scorer, finetune, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=256, help="dev texts for activation matching")
    ap.add_argument("--out", default=str(Path(__file__).with_name("alignment-barrier.json")))
    args = ap.parse_args()
    fk.setup(0)
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    ev = zoo.evaluator("float32")
    A, B = zoo.expert("sentiment"), zoo.expert("subjectivity")
    far = finetune(zoo.base, zoo.train_tasks[B.name], zoo.profile, seed=0, permute=1,
                   name=f"{B.name} (from a permuted base)", quiet=True)
    a, head_a = A.body_and_head()
    b, _ = B.body_and_head()
    b_far, head_far = far.body_and_head()
    tasks = {A.task: zoo.tasks[A.task], B.task: zoo.tasks[B.task]}
    names = [n for n in a if a[n].is_floating_point()]
    dist = lambda x, y: float(sum(((x[n] - y[n]).double() ** 2).sum() for n in names) ** 0.5)  # noqa: E731
    ts = [round(0.1 * i, 1) for i in range(11)]
    heads = ev.model.config.num_attention_heads
    texts = (list(zoo.tasks[A.task].data["validation"]["text"]) + list(zoo.tasks[B.task].data["validation"]["text"]))
    texts = texts[:args.texts]
    inputs = [ev.tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=zoo.profile.max_length,
                           return_tensors="pt") for i in range(0, len(texts), 32)]

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out.state, round(time.perf_counter() - t0, 1), out

    candidates = {"shared start": (b, 0.0, None), "different start": (b_far, 0.0, None),
                  "weight matching: units + heads": timed(lambda: fk.weight_matching(a, b_far, num_heads=heads)),
                  "weight matching: + residual stream": timed(
                      lambda: fk.weight_matching(a, b_far, num_heads=heads, residual=True)),
                  f"activation matching ({len(texts)} dev texts), units + residual": timed(
                      lambda: fk.activation_matching(ev.model, {**a, **head_a}, {**b_far, **head_far}, inputs,
                                                     residual=True))}
    rows = {}
    for label, (other, seconds, alignment) in candidates.items():
        head_b = B.body_and_head()[1] if label == "shared start" else head_far
        scorer = Scorer(ev, tasks, {A.task: head_a, B.task: head_b}, measure="both",
                        dev_examples=zoo.profile.search_examples, precision="float32")
        other = {n: other[n] for n in a}
        p = path(scorer, a, other, ts, "linear")
        rows[label] = {"loss barrier": round(p.barrier("loss"), 4), "accuracy barrier": round(p.barrier("accuracy"), 4),
                       "mid accuracy": round(p.at(0.5)["mean_accuracy"], 4), "distance": round(dist(a, other), 2),
                       "seconds": seconds, **({"sweeps": alignment.sweeps, "units moved": sum(alignment.moved.values())}
                                              if alignment is not None else {})}
        print(label, rows[label], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    Path(args.out).write_text(json.dumps({"machine": machine, "pair": [A.name, far.name], "rows": rows}, indent=2))
    print(f"| path A → B | loss barrier | accuracy barrier | midpoint mean acc. | ‖θ_A − θ_B‖ | align s |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['loss barrier']:.3f} | {r['accuracy barrier']:.3f} | {r['mid accuracy']:.3f} | "
              f"{r['distance']:.1f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
