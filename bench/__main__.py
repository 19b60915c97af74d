"""python -m bench [scenario ...] [--quick] [--repeat N] [--profile [--gil]] [--no-wrk]
                   [--json PATH]

Benchmarks a real jobyard server (a subprocess on a free loopback port, a fresh temp home per
scenario). Scenarios: submit (throughput), latency (submit -> RUNNING / SUCCEEDED), drain,
list (page latency over 100,000 stored jobs), memory (server RSS per running job), metrics
(GET /metrics over 100,000 stored jobs), and more (see bench/scenarios.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.profile import render, summarize
from bench.report import Machine, Result, median_of, show, write
from bench.scenarios import SCENARIOS, Options

RESULTS = Path(__file__).parent / "results"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="scenario", help=f"any of: {', '.join(SCENARIOS)} (all)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"profile the server with py-spy (its running threads); stacks and summaries\n"
        f"in {RESULTS}/profiles/",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="profile as --profile, sampling only the thread holding the GIL",
    )
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each scenario N times and report each figure's median and range\n"
        "(throughput on a small shared machine varies from run to run)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="%(default)s")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return args


def _run(names: list[str], options: Options) -> list[Result]:
    results: list[Result] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        results += median_of([SCENARIOS[name](options) for _ in range(options.repeat)])
        print(f"  {name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        profile = options.profile(name)
        if profile is not None and profile.exists():
            summary = render(summarize(profile))
            profile.with_suffix(".summary.txt").write_text(summary + "\n")
            print(f"server profile during {name}: {summary}", file=sys.stderr)
    return results


def main() -> None:
    args = _arguments()
    names = args.scenarios or list(SCENARIOS)
    options = Options(
        quick=args.quick,
        profiles=RESULTS / "profiles" if args.profile or args.gil else None,
        gil_only=args.gil,
        wrk=not args.no_wrk,
        repeat=args.repeat,
    )
    machine = Machine()
    results = _run(names, options)
    machine.finish()
    show(results)
    settings = {
        "scenarios": names,
        "quick": args.quick,
        "profile": args.profile,
        "gil": args.gil,
        "repeat": args.repeat,
    }
    write(results, machine, args.json, settings)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
