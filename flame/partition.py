"""Split a PaySim CSV into per-region Parquet partitions and a held-out test set.

Every originator account (`nameOrig`) lives in one region, chosen by a keyed
hash of its id, so a node never sees another region's customers. The test set
is taken first: stratified at random, or the last steps of the month.

Two streaming passes keep memory flat: pass 1 validates the CSV and spills
typed chunks to a temporary Parquet file while counting rows per class and per
step; pass 2 picks the test rows and routes the rest to their regions. Output
is built in a temporary sibling folder and renamed into place when complete,
so a failed run leaves nothing behind, and reruns are byte-identical.

    python scripts/partition.py PS_20174392719_1491204439457_log.csv.zip \\
        --out data/partitions --regions US=0.5,EU=0.5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from flame.errors import FlameError
from flame.paysim_csv import ARROW_SCHEMA, PaySimCsv, PaySimFormatError, ReadStats
from flame.schema import LABEL, LAST_STEP

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "flame-partitions/1"
TEST_PARTITION = "test"
TEST_SPLITS = ("random", "time")
REGION_KEY = "nameOrig"
PART_FILE = "part-00000.parquet"
DEFAULT_REGIONS = "US=0.5,EU=0.5"
# Fixed, so the Parquet bytes do not depend on --chunk-rows.
ROW_GROUP_ROWS = 131_072

# SipHash-2-4 key (16 bytes) of the region hash. Changing it moves accounts
# between regions, so it is part of the partition format.
_REGION_HASH_KEY = "flame-regions-01"
_REGION_HASH = (
    f"SipHash-2-4 of the UTF-8 {REGION_KEY} (pandas.util.hash_array, hash_key "
    f"{_REGION_HASH_KEY!r}); top 53 bits / 2**53 in [0, 1) picks the region "
    "by cumulative share"
)
_REGION_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SHARE_TOLERANCE = 1e-6
_SPILL_NAME = "_spill.parquet"
# The spill is written once and read once: speed beats size.
_SPILL_OPTIONS: dict[str, Any] = {"compression": "none", "use_dictionary": False}
# Account ids are nearly unique, so only `type` gains from a dictionary.
_PART_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": ["type"]}

TestSelector = Callable[[pa.Table], np.ndarray]


class PartitionError(FlameError, ValueError):
    """A partition option or the output folder is unusable; the message says why."""


# -- the library entry point --------------------------------------------------


def partition_csv(
    source: Path,
    out_dir: Path,
    *,
    regions: dict[str, float],
    test_split: str = "random",
    test_fraction: float = 0.2,
    seed: int = 42,
    force: bool = False,
    chunk_rows: int = 100_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Partition `source` into `out_dir`; return the manifest it wrote."""
    source, out_dir = Path(source), Path(out_dir)

    # Check every option and path before touching the disk.
    check_regions(regions)
    _check_options(test_split, test_fraction, seed, chunk_rows)
    _check_paths(source, out_dir, force=force)

    # Build in a temporary sibling folder, so a failure leaves nothing behind.
    with _writing(source, out_dir):
        tmp = _make_temp_dir(out_dir)
    try:
        with _writing(source, out_dir):
            manifest = _build(
                source,
                tmp,
                regions=regions,
                scheme=_scheme(regions, test_split, test_fraction, seed),
                chunk_rows=chunk_rows,
                progress=progress,
            )
            _move_into_place(tmp, out_dir, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build(
    source: Path,
    tmp: Path,
    *,
    regions: dict[str, float],
    scheme: dict[str, Any],
    chunk_rows: int,
    progress: bool,
) -> dict[str, Any]:
    """The two passes and the manifest, all inside the temporary folder `tmp`."""
    # Pass 1: validate, type and spill; count rows per class and per step.
    spill = tmp / _SPILL_NAME
    counts = _spill(source, spill, chunk_rows=chunk_rows, progress=progress)

    # The test set is chosen before any region sees a row.
    select_test, cutoff = _test_selector(counts, scheme)
    scheme["time_cutoff_step"] = cutoff

    # Pass 2: route every row to the test set or its originator's region.
    sinks = _distribute(
        spill, tmp, regions, select_test, total=counts.rows, progress=progress
    )
    spill.unlink()
    _warn_about_empty(sinks)

    manifest = _manifest(source, tmp, scheme, sinks, counts.read_stats)
    text = json.dumps(manifest, indent=2) + "\n"
    (tmp / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return manifest


# -- options ----------------------------------------------------------------


def parse_regions(spec: str) -> dict[str, float]:
    """Parse `US=0.5,EU=0.5` into `{"US": 0.5, "EU": 0.5}`, keeping the order."""
    regions: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, share = item.strip().partition("=")
        if not sep:
            raise PartitionError(
                f"--regions item {item!r} is not NAME=SHARE; write e.g. "
                f"{DEFAULT_REGIONS}"
            )
        if name in regions:
            raise PartitionError(
                f"--regions names {name!r} twice ({spec!r}); name each region once"
            )
        try:
            regions[name] = float(share)
        except ValueError:
            raise PartitionError(
                f"--regions share {share!r} of {name!r} is not a number; write "
                f"e.g. {DEFAULT_REGIONS}"
            ) from None
    return regions


def check_regions(regions: Mapping[str, float]) -> None:
    """Region names are folder names; shares are positive and sum to 1."""
    if not regions:
        raise PartitionError(f"no regions given; pass e.g. {DEFAULT_REGIONS}")
    seen: set[str] = set()
    for name, share in regions.items():
        if not _REGION_NAME.fullmatch(name):
            raise PartitionError(
                f"region name {name!r} must be non-empty and use only letters, "
                "digits, '_' and '-' (it becomes a folder name)"
            )
        # Folder names collide on case-insensitive file systems.
        if name.lower() == TEST_PARTITION:
            raise PartitionError(
                f"region name {name!r} is reserved for the test set; choose another"
            )
        if name.lower() in seen:
            raise PartitionError(
                f"region name {name!r} repeats another (ignoring case); choose another"
            )
        seen.add(name.lower())
        if not (math.isfinite(share) and share > 0):
            raise PartitionError(
                f"region {name!r} has share {share}; shares must be > 0"
            )
    total = math.fsum(regions.values())
    if abs(total - 1.0) > _SHARE_TOLERANCE:
        raise PartitionError(
            f"region shares sum to {total:.6g}, not 1 ({dict(regions)}); they must "
            f"sum to 1 within {_SHARE_TOLERANCE:g}, e.g. {DEFAULT_REGIONS}"
        )


def _check_options(
    test_split: str, test_fraction: float, seed: int, chunk_rows: int
) -> None:
    if test_split not in TEST_SPLITS:
        raise PartitionError(
            f"test split {test_split!r} is unknown; use one of {', '.join(TEST_SPLITS)}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise PartitionError(
            f"test fraction {test_fraction} is outside (0, 1); use e.g. 0.2"
        )
    if seed < 0:
        raise PartitionError(f"seed must be >= 0, got {seed}; pass a --seed >= 0")
    if chunk_rows < 1:
        raise PartitionError(f"chunk rows {chunk_rows} must be >= 1; use e.g. 100000")


def _check_paths(source: Path, out_dir: Path, *, force: bool) -> None:
    """The input exists and stays untouched; an existing output needs --force."""
    if source.is_dir():
        raise PartitionError(
            f"{source} is a folder, not a CSV file; pass the PaySim CSV itself "
            "(plain, .gz or .zip)"
        )
    if not source.is_file():
        raise PartitionError(
            f"{source}: no such file; pass a PaySim CSV (plain, .gz or .zip)"
        )
    out = out_dir.resolve()
    if out == source.resolve().parent or out in source.resolve().parents:
        raise PartitionError(
            f"the output folder {out_dir} holds the input {source}; choose another "
            "--out, the input is never touched"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PartitionError(
            f"{out_dir} exists and is not a folder; choose another --out"
        )
    if not force:
        raise PartitionError(
            f"output folder {out_dir} already exists; pass --force to replace it, "
            "or choose another --out"
        )
    # --force replaces earlier partitions only, never an unrelated folder.
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise PartitionError(
            f"{out_dir} is not a partition folder (no {MANIFEST_NAME}), so --force "
            "will not replace it; remove it yourself or choose another --out"
        )


def _scheme(
    regions: dict[str, float], test_split: str, test_fraction: float, seed: int
) -> dict[str, Any]:
    return {
        "region_key": REGION_KEY,
        "region_hash": _REGION_HASH,
        "region_shares": dict(regions),
        "test_split": test_split,
        "test_fraction": test_fraction,
        "seed": seed,
        "time_cutoff_step": None,
    }


# -- pass 1 -------------------------------------------------------------------


@dataclass
class _Counts:
    """What pass 2 needs to know about the whole file before choosing rows."""

    rows_per_class: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    rows_per_step: np.ndarray = field(
        default_factory=lambda: np.zeros(LAST_STEP + 1, np.int64)
    )
    read_stats: ReadStats = field(default_factory=ReadStats)

    @property
    def rows(self) -> int:
        return int(self.rows_per_class.sum())

    def add(self, table: pa.Table) -> None:
        labels = table[LABEL].to_numpy()
        self.rows_per_class += np.bincount(labels, minlength=2)
        steps = table["step"].to_numpy()
        self.rows_per_step += np.bincount(steps, minlength=LAST_STEP + 1)


def _spill(source: Path, spill: Path, *, chunk_rows: int, progress: bool) -> _Counts:
    """Validate the CSV into a typed Parquet file, one row group per chunk."""
    counts = _Counts()
    reader = PaySimCsv(source, chunk_rows=chunk_rows)
    with pq.ParquetWriter(spill, ARROW_SCHEMA, **_SPILL_OPTIONS) as writer:
        for table in reader.chunks(progress=progress):
            writer.write_table(table)
            counts.add(table)
    counts.read_stats = reader.stats
    return counts


# -- choosing the test set ------------------------------------------------------


def stratified_test_masks(
    rows_per_class: Sequence[int], fraction: float, seed: int
) -> list[np.ndarray]:
    """For each class, a mask over its rows (in file order) marking the test rows.

    Exactly round(fraction * n) rows of a class of n rows are chosen, so the
    test set keeps the fraud rate of the file.
    """
    rng = np.random.default_rng(seed)
    masks = []
    for n_rows in rows_per_class:
        mask = np.zeros(n_rows, dtype=bool)
        mask[rng.choice(n_rows, size=round(fraction * n_rows), replace=False)] = True
        masks.append(mask)
    return masks


def time_cutoff(rows_per_step: np.ndarray, fraction: float) -> int:
    """The step after which rows go to the test set.

    The smallest step c whose later rows (step > c) are nearest to `fraction`
    of all rows, keeping rows on both sides; whole steps go to one side.
    """
    total = int(rows_per_step.sum())
    later = total - np.cumsum(rows_per_step)  # later[c] = rows with step > c
    candidates = np.flatnonzero((later > 0) & (later < total))
    if candidates.size == 0:
        only = int(np.flatnonzero(rows_per_step)[0])
        raise PartitionError(
            f"a time split needs rows from two or more steps, but every row has "
            f"step {only}; use --test-split random"
        )
    distance = np.abs(later[candidates] - fraction * total)
    return int(candidates[np.argmin(distance)])  # argmin: first = smallest step


def _report_time_split(rows_per_step: np.ndarray, cutoff: int, fraction: float) -> None:
    """Say how far whole steps moved the test share from the one asked for."""
    share = rows_per_step[cutoff + 1 :].sum() / rows_per_step.sum()
    # A few points off is normal; beyond that the scores mean something else.
    log = logger.warning if abs(share - fraction) > 0.05 else logger.info
    log(
        "time split: test = steps %d..%d, %.1f%% of rows (asked %.1f%%; whole "
        "steps go to one side)",
        cutoff + 1,
        int(np.flatnonzero(rows_per_step)[-1]),
        100 * share,
        100 * fraction,
    )


class _StratifiedSelector:
    """Hands out each class's test mask chunk by chunk, in file order."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self._masks = masks
        self._used = [0] * len(masks)

    def __call__(self, table: pa.Table) -> np.ndarray:
        labels = table[LABEL].to_numpy()
        test = np.zeros(len(labels), dtype=bool)
        for label, mask in enumerate(self._masks):
            rows = labels == label
            start = self._used[label]
            self._used[label] = start + int(rows.sum())
            test[rows] = mask[start : self._used[label]]
        return test


def _test_selector(
    counts: _Counts, scheme: dict[str, Any]
) -> tuple[TestSelector, int | None]:
    """A function marking a chunk's test rows, and the time cutoff if any."""
    fraction = scheme["test_fraction"]
    if scheme["test_split"] == "time":
        cutoff = time_cutoff(counts.rows_per_step, fraction)
        _report_time_split(counts.rows_per_step, cutoff, fraction)
        return (lambda table: table["step"].to_numpy() > cutoff), cutoff
    masks = stratified_test_masks(
        counts.rows_per_class.tolist(), fraction, scheme["seed"]
    )
    return _StratifiedSelector(masks), None


# -- regions ------------------------------------------------------------------


def region_hash_unit(names: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Map account ids to [0, 1), the same for an id in every file, run and seed."""
    values = np.asarray(
        names.to_numpy(zero_copy_only=False)
        if isinstance(names, pa.Array | pa.ChunkedArray)
        else names,
        dtype=object,
    )
    hashes = pd.util.hash_array(values, hash_key=_REGION_HASH_KEY, categorize=False)
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_regions(
    names: pa.Array | pa.ChunkedArray | Sequence[str], shares: Sequence[float]
) -> np.ndarray:
    """Index of the region owning each account id, by cumulative share."""
    bounds = np.cumsum(np.asarray(shares, dtype=np.float64))
    bounds[-1] = 1.0  # shares sum to 1 only within a tolerance
    return np.searchsorted(bounds, region_hash_unit(names), side="right")


# -- pass 2 -------------------------------------------------------------------


class _PartitionSink:
    """One partition's Parquet file, written in row groups of a fixed size."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rows = 0
        self.frauds = 0
        self._writer = pq.ParquetWriter(path, ARROW_SCHEMA, **_PART_OPTIONS)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self.frauds += pc.sum(table[LABEL]).as_py() or 0
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._write_group(ROW_GROUP_ROWS)

    def close(self) -> None:
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._writer.close()

    def _write_group(self, n_rows: int) -> None:
        pending = pa.concat_tables(self._pending)
        group = pending.slice(0, n_rows).combine_chunks()
        self._writer.write_table(group, row_group_size=n_rows)
        rest = pending.slice(n_rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows


def _distribute(
    spill: Path,
    tmp: Path,
    regions: dict[str, float],
    select_test: TestSelector,
    *,
    total: int,
    progress: bool,
) -> dict[str, _PartitionSink]:
    """Route each spilled row to the test set or its originator's region."""
    names = [*regions, TEST_PARTITION]
    shares = list(regions.values())
    spilled = pq.ParquetFile(spill)
    with ExitStack() as stack:
        sinks = {}
        for name in names:
            sinks[name] = _PartitionSink(tmp / name / PART_FILE)
            stack.callback(sinks[name].close)
        bar = stack.enter_context(
            tqdm(total=total, unit="rows", desc="partition", disable=not progress)
        )
        for group in range(spilled.num_row_groups):
            table = spilled.read_row_group(group)
            test = select_test(table)
            region = assign_regions(table[REGION_KEY], shares)
            sinks[TEST_PARTITION].add(table.filter(test))
            for index, name in enumerate(regions):
                sinks[name].add(table.filter(~test & (region == index)))
            bar.update(table.num_rows)
    return sinks


def _warn_about_empty(sinks: dict[str, _PartitionSink]) -> None:
    for name, sink in sinks.items():
        if sink.frauds == 0:
            logger.warning(
                "partition %s has %d rows and no frauds: a model trained or scored "
                "there never sees one; use more rows or fewer regions",
                name,
                sink.rows,
            )


# -- manifest and move ----------------------------------------------------------


def _manifest(
    source: Path,
    tmp: Path,
    scheme: dict[str, Any],
    sinks: dict[str, _PartitionSink],
    stats: ReadStats,
) -> dict[str, Any]:
    """Everything needed to check and reproduce the partitions; no timestamps."""
    partitions = {name: _partition_entry(sink, tmp) for name, sink in sinks.items()}
    return {
        "format": MANIFEST_FORMAT,
        "source": {
            "name": source.name,
            "bytes": source.stat().st_size,
            "sha256": _sha256([source]),
        },
        "scheme": scheme,
        "regions": [name for name in sinks if name != TEST_PARTITION],
        "partitions": partitions,
        "rows": sum(entry["rows"] for entry in partitions.values()),
        "frauds": sum(entry["frauds"] for entry in partitions.values()),
        "warnings": {
            "blank_rows_skipped": stats.blank_rows,
            "spreadsheet_rounded_rows": stats.rounded_rows,
            "byte_order_mark": stats.byte_order_mark,
        },
    }


def _partition_entry(sink: _PartitionSink, tmp: Path) -> dict[str, Any]:
    return {
        "files": [sink.path.relative_to(tmp).as_posix()],
        "rows": sink.rows,
        "frauds": sink.frauds,
        "fraud_rate": sink.frauds / sink.rows if sink.rows else 0.0,
        "sha256": _sha256([sink.path]),
    }


def _sha256(paths: Sequence[Path]) -> str:
    """sha256 of the files' bytes, concatenated in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _make_temp_dir(out_dir: Path) -> Path:
    """A new empty sibling of `out_dir`: same file system, so renaming is atomic.

    Unlike tempfile.mkdtemp (mode 0700) it gets the permissions the umask gives
    any new folder, which the output folder keeps after the rename.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for attempt in count():
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}-{attempt}")
        try:
            tmp.mkdir()
        except FileExistsError:  # left by a killed run with the same pid
            continue
        return tmp
    raise AssertionError("unreachable")


@contextmanager
def _writing(source: Path, out_dir: Path) -> Iterator[None]:
    """Turn a failed write (read-only, full or not a folder) into a PartitionError.

    Only the input is read besides our own files, so an OSError naming any
    other path, or none (pyarrow's), is about the output folder.
    """
    try:
        yield
    except OSError as exc:
        if (
            exc.filename is not None
            and Path(exc.filename).resolve() == source.resolve()
        ):
            raise
        hint = ""
        if isinstance(exc, FileExistsError | NotADirectoryError):
            hint = ", a file stands where a folder is needed"
        raise PartitionError(
            f"cannot write the output folder {out_dir} ({exc}{hint}); it is built "
            "in a temporary folder beside it first, so choose a --out in a "
            "writable folder with free space"
        ) from exc


def _move_into_place(tmp: Path, out_dir: Path, *, force: bool) -> None:
    """Rename the finished folder to `out_dir`; the old one goes only after that."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    if not force:  # appeared while we worked
        raise PartitionError(
            f"output folder {out_dir} appeared during the run; pass --force to "
            "replace it, or choose another --out"
        )
    old = tmp.with_name(tmp.name + "-old")
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old)


# -- command line -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`partition CSV [options]`: 0 on success, 2 on bad input or options, 130
    when stopped by Ctrl-C or SIGTERM (leaving no partial output)."""
    args = _parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            manifest = partition_csv(
                args.csv,
                args.out,
                regions=parse_regions(args.regions),
                test_split=args.test_split,
                test_fraction=args.test_fraction,
                seed=args.seed,
                force=args.force,
                chunk_rows=args.chunk_rows,
            )
    except (PaySimFormatError, PartitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial output was left behind", file=sys.stderr)
        return 130
    print(_summary(manifest, args.out))
    return 0


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (`kill`, a stopping container) like Ctrl-C while inside.

    The KeyboardInterrupt unwinds through partition_csv, which removes its
    temporary folder. Handlers can only be set in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partition",
        description="Split a PaySim CSV (plain, .gz or Kaggle's .zip) into "
        "per-region Parquet partitions plus a held-out test set.",
    )
    parser.add_argument("csv", type=Path, help="the PaySim CSV, .csv.gz or .zip")
    parser.add_argument("--out", type=Path, default=Path("data/partitions"))
    parser.add_argument(
        "--regions",
        default=DEFAULT_REGIONS,
        help="NAME=SHARE,... in node order; shares sum to 1 (default %(default)s)",
    )
    parser.add_argument("--test-split", choices=TEST_SPLITS, default="random")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--force", action="store_true", help="replace an existing output folder"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=100_000,
        help="CSV lines per chunk; bounds memory (default %(default)s)",
    )
    return parser


def _summary(manifest: dict[str, Any], out_dir: Path) -> str:
    """A table of rows and frauds per partition, for the terminal."""
    lines = [f"{'partition':<12} {'rows':>12} {'frauds':>9} {'fraud rate':>11}"]
    for name, entry in manifest["partitions"].items():
        lines.append(
            f"{name:<12} {entry['rows']:>12,} {entry['frauds']:>9,} "
            f"{entry['fraud_rate']:>11.3%}"
        )
    lines.append(f"{'total':<12} {manifest['rows']:>12,} {manifest['frauds']:>9,}")
    lines.append(f"wrote {out_dir} ({MANIFEST_NAME} describes it)")
    return "\n".join(lines)
