"""Partitioning at two sizes side by side: is memory bounded and time linear?

Writes PaySim-format files with `flame.synth.generate` into a temporary folder
(plain CSV at the full size and at a fraction of it, and the full size as gzip),
then partitions each in a fresh subprocess with `flame.partition.partition_csv`.
The child reports the wall time of the call; GNU time (`/usr/bin/time`) reports
the child's peak resident memory (RSS). Runs are interleaved and ratios are
printed: of the fastest run of each input for time (other jobs only ever add
time) and of the median for memory. Absolute figures on a shared 2-core machine
are noisy; ratios measured in one run much less so.

    python benchmarks/bench_partition.py                  # 6,362,620 rows
    python benchmarks/bench_partition.py --rows 800000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flame.partition import DEFAULT_REGIONS, parse_regions, partition_csv
from flame.synth import FULL_ROWS, generate

_CHILD = "--child"
_BASELINE = "--child-baseline"
TIME = "/usr/bin/time"  # GNU time


@dataclass(frozen=True)
class Case:
    """One input file to partition."""

    name: str
    path: Path
    rows: int


@dataclass
class Runs:
    """Wall time inside the child (s) and peak RSS (MB) of each run of a case."""

    seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)

    @property
    def time(self) -> float:
        """The fastest run: load from other jobs only ever adds time."""
        return min(self.seconds)

    @property
    def memory(self) -> float:
        return statistics.median(self.peak_mb)


def run_child(args: list[str], folder: Path) -> tuple[dict[str, float], float]:
    """Run this script as a child with `args`; its JSON report and peak RSS (MB).

    GNU time forks the child from its own small process. Reading the child's
    rusage here instead (os.wait4, RUSAGE_CHILDREN) would report at least this
    process's own peak RSS: subprocess spawns with vfork, and at exec Linux
    counts the high-water mark of the memory it replaces (ours) in the child's.
    """
    if not Path(TIME).is_file():
        raise SystemExit(
            f"{TIME} not found: install GNU time (Debian: apt install time)"
        )
    rss_file = folder / "peak_kib.txt"
    script = str(Path(__file__).resolve())
    command = [TIME, "-f", "%M", "-o", str(rss_file), sys.executable, script, *args]
    result = subprocess.run(command, stdout=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child {command} failed with code {result.returncode}")
    report: dict[str, float] = json.loads(result.stdout)
    peak_kib = int(rss_file.read_text().split()[-1])
    return report, peak_kib / 1024


def partition_once(case: Case, out: Path) -> tuple[float, float]:
    """Partition `case` into `out` in a subprocess: (seconds, peak MB)."""
    report, peak_mb = run_child([_CHILD, str(case.path), str(out)], out.parent)
    if report["rows"] != case.rows:
        raise RuntimeError(f"{case.name}: partitioned {report['rows']} rows")
    shutil.rmtree(out)
    return report["seconds"], peak_mb


def make_inputs(folder: Path, rows: int, fraction: int) -> list[Case]:
    """Generate the three inputs, printing how long each took."""
    small = max(rows // fraction, 1)
    cases = [
        Case(f"plain 1/{fraction}", folder / "small.csv", small),
        Case("plain full", folder / "full.csv", rows),
        Case("gzip full", folder / "full.csv.gz", rows),
    ]
    for case in cases:
        started = time.perf_counter()
        generate(case.path, rows=case.rows, progress=False)
        seconds = time.perf_counter() - started
        size_mb = case.path.stat().st_size / 1e6
        print(
            f"generated {case.name}: {case.rows:,} rows, {size_mb:,.0f} MB, "
            f"{seconds:.1f} s"
        )
    return cases


def measure(cases: list[Case], folder: Path, repeats: int) -> dict[str, Runs]:
    """Partition every case `repeats` times, rotating the order each repetition."""
    runs = {case.name: Runs() for case in cases}
    for rep in range(repeats):
        shift = rep % len(cases)
        for case in cases[shift:] + cases[:shift]:
            seconds, peak_mb = partition_once(case, folder / f"out-{rep}")
            runs[case.name].seconds.append(seconds)
            runs[case.name].peak_mb.append(peak_mb)
            print(
                f"  rep {rep + 1}/{repeats} {case.name:<11} {seconds:6.1f} s "
                f"{peak_mb:6.0f} MB  load {os.getloadavg()[0]:.2f}"
            )
    return runs


def report(cases: list[Case], runs: dict[str, Runs], baseline_mb: float) -> None:
    """The table of medians and the ratios that carry the claims."""
    print(
        f"\n{'input':<11} {'rows':>10} {'best s':>7} {'median s':>9} "
        f"{'us/row':>7} {'peak MB':>8}"
    )
    for case in cases:
        r = runs[case.name]
        print(
            f"{case.name:<11} {case.rows:>10,} {r.time:>7.1f} "
            f"{statistics.median(r.seconds):>9.1f} "
            f"{r.time / case.rows * 1e6:>7.2f} {r.memory:>8.0f}"
        )
    print(
        f"(us/row from the best run; peak MB: median. A child that only imports "
        f"flame peaks at {baseline_mb:.0f} MB)"
    )

    small, full, gz = (runs[case.name] for case in cases)
    small_rows, full_rows = cases[0].rows, cases[1].rows
    per_row = (full.time / full_rows) / (small.time / small_rows)
    working = (full.memory - baseline_mb) / (small.memory - baseline_mb)
    print(f"\nratios ({len(full.seconds)} interleaved runs of each input):")
    for label, value, meaning in (
        (
            f"peak RSS, full / small ({full_rows / small_rows:.0f}x the rows)",
            full.memory / small.memory,
            "~1 = bounded memory",
        ),
        ("peak RSS above imports, full / small", working, "~1 = bounded memory"),
        ("time per row, full / small (best runs)", per_row, "~1 = linear"),
        ("time, gzip / plain (full, best runs)", gz.time / full.time, ""),
        ("peak RSS, gzip / plain (full)", gz.memory / full.memory, ""),
    ):
        print(f"  {label:<42} {value:5.2f}  {meaning}".rstrip())


def machine() -> str:
    """CPU model and count, for the figures' caption."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def child(argv: list[str]) -> int:
    """In the subprocess: partition one file, print rows and seconds as JSON."""
    if argv[0] == _BASELINE:
        print(json.dumps({"rows": 0, "seconds": 0.0}))
        return 0
    source, out = Path(argv[1]), Path(argv[2])
    started = time.perf_counter()
    manifest = partition_csv(
        source, out, regions=parse_regions(DEFAULT_REGIONS), progress=False
    )
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": manifest["rows"], "seconds": seconds}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=FULL_ROWS,
        help="rows of the full-size input (default %(default)s)",
    )
    parser.add_argument(
        "--fraction",
        type=int,
        default=8,
        help="the small input has rows/FRACTION rows (default 8)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per input, interleaved (default %(default)s)",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where the temporary folder goes (default: system)",
    )
    args = parser.parse_args()
    logging.getLogger("flame").setLevel(logging.WARNING)

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="flame-bench-", dir=args.tmp_dir) as tmp:
        folder = Path(tmp)
        cases = make_inputs(folder, args.rows, args.fraction)
        _, baseline_mb = run_child([_BASELINE], folder)
        runs = measure(cases, folder, args.repeats)
    report(cases, runs, baseline_mb)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in (_CHILD, _BASELINE):
        sys.exit(child(sys.argv[1:]))
    sys.exit(main())
