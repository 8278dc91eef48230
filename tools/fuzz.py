"""Long structure-aware fuzz run of the readers (tests/fuzzing.py): every format x entropy stage,
float and QArray blobs, and .lsc files, each case in a worker under RLIMIT_AS and a time limit.

    nice -n 10 python tools/fuzz.py --cases 50000 --seed 1

Writes benchmarks/results/fuzz.json (counts per outcome, per seed, the limits, every finding
with its reproducer in hex) and the reproducers under --findings; exits 1 on any finding.
"""

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fuzz.json")
    parser.add_argument("--findings", type=Path, default=ROOT / "benchmarks/results/fuzz_findings")
    args = parser.parse_args()
    report = fuzzing.fuzz(args.cases, args.seed, args.findings)
    result = dataclasses.asdict(report) | {
        "command": " ".join(["python", "tools/fuzz.py", *sys.argv[1:]]),
        "seed": args.seed,
        "memory_limit_bytes": fuzzing.MEMORY_LIMIT,
        "time_limit_s": fuzzing.TIME_LIMIT,
        "budget": "64 x input bytes + 1 MiB (max_bytes=)",
        "allowed_peak": "budget + 128 x input bytes + 4 MiB (tracemalloc)",
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("cases", "outcomes", "max_seconds", "seconds")}))
    print(
        f"max peak / allowed: {report.max_peak_over_budget:.4f}; findings: {len(report.findings)}"
    )
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
