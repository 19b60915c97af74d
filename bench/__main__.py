"""python -m bench [scenario ...] [--quick] [--json PATH]"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import show, write
from bench.scenarios import SCENARIOS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        choices=[*SCENARIOS, []],
        metavar="scenario",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    args = parser.parse_args()
    results = []
    for name in args.scenarios or list(SCENARIOS):
        print(f"running {name} ...", flush=True)
        results += SCENARIOS[name](args.quick)
    show(results)
    write(results, args.json)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
