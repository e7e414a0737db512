"""Two checkouts of fastsend measured alternately by ``caller_probe.py``: before/after ratios in one run.

    python benchmarks/compare.py BEFORE_CHECKOUT AFTER_CHECKOUT [--rounds 4]

Each round runs the probe once in each checkout (the order alternating), in fresh processes with
that checkout first on ``PYTHONPATH``, against one receiver; printed are the medians over the
rounds and after/before. The probe and the frames come from each checkout's own ``benchmarks/``
when it has them, else from this one's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.receiver import running_receiver

HERE = Path(__file__).resolve().parents[1]


def _probe(checkout: Path, url: str) -> dict[str, dict[str, float]]:
    path = os.pathsep.join([str(checkout), str(HERE)])
    environment = {**os.environ, "PYTHONPATH": path}
    script = HERE / "benchmarks" / "caller_probe.py"
    done = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, env=environment, cwd=checkout, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"the probe failed in {checkout}: {done.stderr[-2000:]}")
    report: dict[str, dict[str, float]] = json.loads(lines[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
    with running_receiver() as url:
        for index in range(args.rounds):
            order = [("before", args.before), ("after", args.after)]
            for name, checkout in order if index % 2 == 0 else reversed(order):
                runs[name].append(_probe(checkout.resolve(), url))
    for scenario in runs["after"][0]:
        for measure in ("caller", "process"):
            before = statistics.median(run[scenario][measure] for run in runs["before"])
            after = statistics.median(run[scenario][measure] for run in runs["after"])
            print(f"{scenario:<18} {measure:<8} before {before:7.3f} ms  after {after:7.3f} ms  {after / before:.3f}×")


if __name__ == "__main__":
    main()
