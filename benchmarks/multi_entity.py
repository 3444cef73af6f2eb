"""Many entities at once: implicit-probe accuracy after injecting n new entities into one student, against no update.

    python benchmarks/multi_entity.py [--profile smoke] [--sizes 5,10,20,50]

Padmanabhan et al. (2023) pool the (entity, continuation) pairs of up to 150 entities, shuffle them and distil
them into one model in sequence; the question is whether propagation survives as the edits pile up, and what it
costs the model's other knowledge. Each size n takes the first n bundled test entities (nested sets, so the curve
compares like with like) through the kit's ``fusionkit.distill.multi_entity_curve`` with the
settings the reproduction table chose on dev entities (read from ``reproduction-<profile>.json``; the profile's
defaults, said so, if that file is missing). Every point has a paired bootstrap interval over the n entities'
implicit probes, the well-known facts before/after (specificity) and the drift KL on neutral text.

Writes ``benchmarks/multi-entity-<profile>.json`` and the section "multi-entity" of ``benchmarks/README.md``. The
full profile's curve (to 150) is meant for a GPU; the smoke curve's measured time is in the results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distill_full import machine, write_section

from fusionkit.core.cache import atomic_write_text
from fusionkit.core.intervals import paired_bootstrap, verdict
from fusionkit.core.runtime import quiet_transformers, seed_everything

HERE = Path(__file__).resolve().parent
SIZES = {"smoke": (5, 10, 20, 50), "full": (10, 50, 150)}


def chosen_settings(profile: str):
    """The distillation settings the reproduction table chose on dev entities, and where they came from."""
    from fusionkit.distill import settings

    path = HERE / f"reproduction-{profile}.json"
    if path.exists():
        chosen = json.loads(path.read_text())["distill"]["details"]["chosen"]
        return settings(profile, **chosen), f"chosen on dev entities by benchmarks/reproduce.py ({path.name})"
    return settings(profile), f"the {profile} profile's defaults ({path.name} is missing: run reproduce.py first)"


def point(report: dict, seconds: float) -> dict:
    """One point of the curve from ``run``'s multi-entity report: the gain on implicit probes with its interval."""
    from fusionkit.reproduce.distillation import _correct

    raw, res = report["raw"], report["results"]
    implicit = paired_bootstrap(_correct(raw["distill"]["rows"], "implicit"),
                                _correct(raw["no_update"]["rows"], "implicit"))
    facts_delta = paired_bootstrap(_correct(raw["distill"]["spec"], spec_kind="fact"),
                                   _correct(raw["distill"]["spec_before"], spec_kind="fact"))
    return {"n": len({r["entity"] for r in raw["no_update"]["rows"]}),
            "distill_implicit": res["distill"]["implicit_acc"], "no_update_implicit": res["no_update"]["implicit_acc"],
            "prepend_implicit": res["prepend"]["implicit_acc"], "implicit_gain": implicit, "verdict": verdict(implicit),
            "facts_delta": facts_delta, "gold_nll": {m: res[m]["gold_nll"] for m in ("no_update", "distill")},
            "drift": res["distill"]["drift"], "seconds": round(seconds, 1)}


def table(points: list[dict], source: str, profile: str, seconds: float) -> str:
    pts = lambda iv: f"{iv['diff'] * 100:+.1f} [{iv['lo'] * 100:+.1f}, {iv['hi'] * 100:+.1f}]"  # noqa: E731
    lines = [f"### Many entities at once ({profile} profile)", "",
             f"Written by `python benchmarks/multi_entity.py --profile {profile}` on {machine()}, "
             f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s in all. Settings {source}. Implicit-probe accuracy of "
             "the first n test entities after all n were distilled into one SmolLM2-135M student, in points "
             "with a 95% paired bootstrap interval over their probes; facts: the well-known facts after − before.", "",
             "| entities at once | no update | distilled | prepend (upper bound) | distilled − no update | verdict "
             "| facts after − before | drift KL | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['n']} | {p['no_update_implicit']:.3f} | {p['distill_implicit']:.3f} | "
                     f"{p['prepend_implicit']:.3f} | {pts(p['implicit_gain'])} over {p['implicit_gain']['n']} probes "
                     f"| {p['verdict']} | {pts(p['facts_delta'])} | {p['drift']:.3f} | {p['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from fusionkit.data.assets import load_base
    from fusionkit.distill import load_entities, load_facts, multi_entity_curve, run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke", choices=list(SIZES))
    ap.add_argument("--sizes", help="entities at once, comma-separated (default: 5,10,20,50 smoke; 10,50,150 full)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES[args.profile])
    quiet_transformers()
    seed_everything(0)
    cfg, source = chosen_settings(args.profile)
    model, tok = load_base("smollm2-135m")
    test, facts = load_entities("bundled", "test"), load_facts()
    if max(sizes) > len(test):
        raise SystemExit(f"--sizes asks for {max(sizes)} entities; the bundled test split has {len(test)}")
    t0, points = time.perf_counter(), []

    def runner(*a, **kw):  # the kit's curve runs each size; this keeps each report for its interval
        start = time.perf_counter()
        report = run(*a, **kw)
        points.append(point(report, time.perf_counter() - start))
        print(json.dumps({k: points[-1][k] for k in ("n", "no_update_implicit", "distill_implicit", "seconds")}),
              flush=True)
        return report

    multi_entity_curve(model, tok, test, facts, cfg, sizes, "smollm2-135m", runner=runner)
    seconds = time.perf_counter() - t0
    atomic_write_text(HERE / f"multi-entity-{args.profile}.json",
                      json.dumps({"source": source, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                  "seconds": round(seconds, 1), "points": points}, indent=1))
    write_section(table(points, source, args.profile, seconds), section=f"multi_{args.profile}")


if __name__ == "__main__":
    main()
