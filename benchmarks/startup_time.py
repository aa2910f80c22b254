"""Wall time of `astro --help`, `astro --version` and `astro recipes` in fresh processes.

    python benchmarks/startup_time.py [--repeats 5] [--astro /path/to/astro]

Each command runs ``--repeats`` times as a new process (the console script given by ``--astro``, or
``python -m astrocli``); the median and the range are printed, with whether torch got imported
(checked once per command with ``-X importtime``). Run it on an idle machine: start-up time is
mostly module loading, which a busy disk or CPU slows down.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["--version"], ["recipes"])


def wall_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imports_torch(args: list[str]) -> bool:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "astrocli", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.split("|")[-1].strip() for line in lines}
    return bool(modules & {"torch", "timm"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--astro", help="the `astro` console script (default: python -m astrocli)")
    opts = parser.parse_args()
    prefix = [opts.astro] if opts.astro else [sys.executable, "-m", "astrocli"]
    for args in COMMANDS:
        times = [wall_seconds([*prefix, *args]) for _ in range(opts.repeats)]
        print(
            f"astro {' '.join(args):10s} median {statistics.median(times):5.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)}), "
            f"imports torch: {'yes' if imports_torch(args) else 'no'}"
        )


if __name__ == "__main__":
    main()
