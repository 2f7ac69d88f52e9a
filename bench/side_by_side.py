"""Two checkouts of stagewise measured side by side: `bench/run.py` in each, alternating.

    python bench/side_by_side.py --before ../before --rounds 3 -- --db both --workloads W1,W2,W3

`--before` (and `--after`, this checkout by default) is a checkout with its own `.venv`
(`make sync` there). Each round runs `bench/run.py` once in each, before first on odd
rounds and after first on even ones, with the arguments after `--`; so a machine that gets
busier or quieter during the session moves both sides alike. It prints every figure of
every round, then the medians and after/before for each (workload, variant, database), and
writes them as markdown to `bench/results/side_by_side.md`. Figures only: nothing is judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIGURES = {
    "W1": ("runs_per_s", "stages_per_s", "worker_cpu_ms_per_stage"),
    "W2": ("p50_ms", "p95_ms", "p99_ms"),
    "W3": ("wall_s",),
    "W4": ("recovery_s", "stages_executed_more_than_once"),
}
Key = tuple[str, str, str]


def measure(checkout: Path, args: list[str]) -> list[dict[str, Any]]:
    python = checkout / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "bench/run.py", *args],
        cwd=checkout,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def collect(results: list[dict[str, Any]], into: dict[Key, dict[str, list[float]]]) -> None:
    for r in results:
        key = (r["workload"], r["variant"], r["db"])
        for name in FIGURES.get(r["workload"], ()):
            if name in r:
                into[key].setdefault(name, []).append(float(r[name]))


def table(sides: dict[str, dict[Key, dict[str, list[float]]]]) -> list[str]:
    lines = [
        "| workload | variant | db | figure | before (each) | after (each) | after/before |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(sides["before"].keys() | sides["after"].keys()):
        before, after = sides["before"].get(key, {}), sides["after"].get(key, {})
        for name in FIGURES[key[0]]:
            b, a = before.get(name, []), after.get(name, [])
            if not a or not b:
                continue
            ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else 0
            each_b = ", ".join(f"{v:g}" for v in b)
            each_a = ", ".join(f"{v:g}" for v in a)
            lines.append(
                f"| {' | '.join(key)} | {name} | {each_b} → {statistics.median(b):g} "
                f"| {each_a} → {statistics.median(a):g} | {ratio:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=HERE.parent)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("run_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    run_args = [a for a in args.run_args if a != "--"]
    sides: dict[str, dict[Key, dict[str, list[float]]]] = {
        "before": defaultdict(dict),
        "after": defaultdict(dict),
    }
    for round_ in range(1, args.rounds + 1):
        order = ("before", "after") if round_ % 2 else ("after", "before")
        for side in order:
            checkout = args.before if side == "before" else args.after
            print(f"round {round_}: {side} ({checkout})", file=sys.stderr, flush=True)
            collect(measure(checkout.resolve(), run_args), sides[side])
    lines = table(sides)
    print("\n".join(lines))
    out = HERE / "results" / "side_by_side.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
