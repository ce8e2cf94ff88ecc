"""Start-up of the command line, side by side: `slidecell --help` (and `--version`) of this checkout
against another commit's, run alternately in fresh processes (issue 18).

    git worktree add /tmp/old 4794e23
    python benchmarks/bench_startup.py /tmp/old --runs 7

Prints the median wall time of each and their ratio, and whether each imported torch."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def once(root: Path, args: list[str]) -> float:
    t0 = time.perf_counter()  # run from the checkout: its folder comes first on sys.path
    subprocess.run([sys.executable, "-m", "slidecell.cli", *args], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - t0


def imports_torch(root: Path) -> bool:
    code = "import sys, slidecell.cli; assert slidecell.cli.__file__.startswith(sys.argv[1]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(root)], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", type=Path, help="a worktree of the commit to compare with")
    ap.add_argument("--runs", type=int, default=7)
    ns = ap.parse_args()
    for args in (["--help"], ["run", "--help"]):
        times: dict[str, list[float]] = {"this": [], "other": []}
        for _ in range(ns.runs):
            times["other"].append(once(ns.other, args))
            times["this"].append(once(HERE, args))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"slidecell {' '.join(args):12s} other {med['other']:.2f} s  this {med['this']:.2f} s  "
              f"{med['other'] / med['this']:.1f}x faster  (median of {ns.runs}, alternating)")
    print(f"imports torch: other {imports_torch(ns.other)}, this {imports_torch(HERE)}")


if __name__ == "__main__":
    main()
