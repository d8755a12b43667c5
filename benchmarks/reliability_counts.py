"""Counts of the reliability suites' outcomes (issue 13), for this scadv or an older one.

Runs the cases of ``tests/reliability`` and counts how each ended:

* bad-input matrix (``cases.bad_input_cases``): a clean ``ScadvInputError`` (and whether
  the AnnData was left untouched), another exception (an internal crash), or silently
  accepted;
* tampered files (``cases.tampered_cases``): per loader call, a clean error, a crash, or
  accepted (the loader worked);
* fuzzed datasets (``fuzz.examples``): valid results, a clean error, a crash (a dead process
  included), invalid results (silently wrong), per step.

To count an older scadv, put its ``src`` first on the path (the cases use only the public
API)::

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/reliability_counts.py

Run::

    python benchmarks/reliability_counts.py [--suites bad tampered fuzz] [--fuzz 500]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability import cases as CS  # noqa: E402
from tests.reliability import fuzz as FZ  # noqa: E402


def bad_inputs() -> None:
    t0 = time.perf_counter()
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for case, out in CS.iter_outcomes(CS.bad_input_cases()):
        kind = out.kind if out.unchanged else f"{out.kind}, AnnData changed"
        counts[kind] += 1
        if kind != "error":
            examples[kind].append(f"{case.id}: {out.message.splitlines()[0][:120]}"
                                  if out.message else case.id)
    print(f"bad-input matrix: {sum(counts.values())} cases, {dict(counts)} "
          f"({time.perf_counter() - t0:.0f} s)")
    for kind, items in examples.items():
        print(f"  {kind}, e.g.: " + "; ".join(items[:8]))


def tampered() -> None:
    t0 = time.perf_counter()
    cases = CS.tampered_cases()
    counts: collections.Counter[str] = collections.Counter()
    per_case: collections.Counter[str] = collections.Counter()
    crashes = []
    for t in cases:
        outs = CS.run_tampered(t)
        for name, out in outs:
            counts[out.kind] += 1
            if out.kind == "crash":
                crashes.append(f"{t.id} → {name}: {out.message.splitlines()[0][:100]}")
        per_case["crash" if any(o.kind == "crash" for _, o in outs) else "clean"] += 1
    print(f"tampered files: {len(cases)} cases, {sum(counts.values())} loader calls "
          f"{dict(counts)}; cases with a crash: {per_case['crash']} "
          f"({time.perf_counter() - t0:.0f} s)")
    for line in crashes[:15]:
        print("  " + line)


def fuzzed(n: int) -> None:
    t0 = time.perf_counter()
    examples = FZ.examples(n)
    outcomes = FZ.run_all(examples)
    counts = collections.Counter((kind, step) for kind, step, _ in outcomes)
    kinds = collections.Counter(kind for kind, _, _ in outcomes)
    print(f"fuzzed datasets: {len(outcomes)} examples {dict(kinds)} "
          f"({time.perf_counter() - t0:.0f} s)")
    for key, value in sorted(counts.items()):
        print(f"  {value:4d} {key}")
    for p, (kind, step, detail) in zip(examples, outcomes, strict=True):
        if kind in ("crash", "invalid"):
            print(f"  {kind} at {step}: {detail.splitlines()[0][:150]} "
                  f"[{p['kind']}, {p['dtype']}, classes {p['class_sizes']}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", default=["bad", "tampered", "fuzz"])
    parser.add_argument("--fuzz", type=int, default=500)
    args = parser.parse_args()
    import scadv

    print(f"scadv from {Path(scadv.__file__).parent}")
    if "bad" in args.suites:
        bad_inputs()
    if "tampered" in args.suites:
        tampered()
    if "fuzz" in args.suites:
        fuzzed(args.fuzz)


if __name__ == "__main__":
    main()
