"""Tests of `flame.paysim_csv` and `flame.partition` on real PaySim rows.

The real samples live outside the repository (../shared/data/paysim); tests
that need them skip when the folder is absent. Every output goes to tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flame.partition import (
    PartitionError,
    assign_regions,
    check_regions,
    main,
    parse_regions,
    partition_csv,
    region_hash_unit,
    stratified_test_masks,
    time_cutoff,
)
from flame.paysim_csv import PaySimFormatError, read_table
from flame.schema import COLUMNS, DTYPES, LAST_STEP
from flame.synth import generate

REPO_ROOT = Path(__file__).resolve().parents[1]
PAYSIM_DIR = REPO_ROOT.parent / "shared" / "data" / "paysim"
SAMPLE = "paysim_sample_12k.csv"
REGIONS = {"US": 0.5, "EU": 0.3, "APAC": 0.2}
ARROW_TYPES = {
    "int32": pa.int32(),
    "string": pa.string(),
    "float64": pa.float64(),
    "int8": pa.int8(),
}


# -- helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def paysim_dir() -> Path:
    if not (PAYSIM_DIR / SAMPLE).is_file():
        pytest.skip(f"real PaySim samples not found in {PAYSIM_DIR}")
    return PAYSIM_DIR


@pytest.fixture(scope="module")
def sample(paysim_dir: Path) -> Path:
    return paysim_dir / SAMPLE


@pytest.fixture(scope="module")
def sample_lines(sample: Path) -> list[str]:
    """The header and the first 30 real rows: lines 1..31 of a crafted file."""
    return sample.read_text(encoding="utf-8").splitlines(keepends=True)[:31]


def run(source: Path, out: Path, **options: Any) -> dict[str, Any]:
    options = {"regions": REGIONS, "progress": False, **options}
    return partition_csv(source, out, **options)


def read(out: Path, partition: str) -> pa.Table:
    return pq.read_table(out / partition / "part-00000.parquet")


def files_of(out: Path) -> dict[str, bytes]:
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the real sample -------------------------------------------------------------


def test_sample_partitions_add_up(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    run(sample, out, chunk_rows=4_000)

    # Nothing lost: the partitions hold exactly the rows of the file.
    parts = {name: read(out, name) for name in [*REGIONS, "test"]}
    union = pa.concat_tables(parts.values()).sort_by(
        [(c, "ascending") for c in COLUMNS]
    )
    original = read_table(sample).sort_by([(c, "ascending") for c in COLUMNS])
    assert union.equals(original)
    assert union.num_rows == 12_651

    # Types come from flame.schema.
    for table in parts.values():
        assert table.schema.names == list(COLUMNS)
        assert table.schema.types == [ARROW_TYPES[DTYPES[c]] for c in COLUMNS]

    # Test set: exactly round(0.2 * n) rows of each class.
    test_labels = parts["test"]["isFraud"].to_numpy()
    assert int(test_labels.sum()) == round(0.2 * 325) == 65
    assert int((test_labels == 0).sum()) == round(0.2 * (12_651 - 325)) == 2_465

    # Every originator belongs to the region its hash names, and to one only.
    owners: dict[str, str] = {}
    for index, region in enumerate(REGIONS):
        names = parts[region]["nameOrig"]
        assert set(assign_regions(names, list(REGIONS.values()))) <= {index}
        for name in names.to_pylist():
            assert owners.setdefault(name, region) == region


def test_sample_manifest(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    manifest = run(sample, out, seed=7)

    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["regions"] == ["US", "EU", "APAC"]
    assert list(manifest["partitions"]) == ["US", "EU", "APAC", "test"]
    assert manifest["source"] == {
        "name": SAMPLE,
        "bytes": sample.stat().st_size,
        "sha256": sha256(sample),
    }
    scheme = manifest["scheme"]
    assert scheme["region_shares"] == REGIONS
    assert list(scheme["region_shares"]) == list(REGIONS)
    assert (scheme["region_key"], scheme["seed"]) == ("nameOrig", 7)
    assert (scheme["test_split"], scheme["test_fraction"]) == ("random", 0.2)
    # PaySim's own `1.013809561E7` numbers are exact, not spreadsheet damage.
    assert manifest["warnings"] == {
        "blank_rows_skipped": 0,
        "spreadsheet_rounded_rows": 0,
        "byte_order_mark": False,
    }
    assert (manifest["rows"], manifest["frauds"]) == (12_651, 325)
    for name, entry in manifest["partitions"].items():
        table = read(out, name)
        assert entry["files"] == [f"{name}/part-00000.parquet"]
        assert entry["rows"] == table.num_rows
        assert entry["frauds"] == int(table["isFraud"].to_numpy().sum())
        assert entry["fraud_rate"] == pytest.approx(entry["frauds"] / entry["rows"])
        assert entry["sha256"] == sha256(out / entry["files"][0])


def test_gz_and_zip_give_the_same_partitions(sample: Path, tmp_path: Path) -> None:
    gz = tmp_path / "sample.csv.gz"
    gz.write_bytes(gzip.compress(sample.read_bytes(), mtime=0))
    kaggle_zip = tmp_path / "paysim.zip"
    with zipfile.ZipFile(kaggle_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(sample, "PS_20174392719_1491204439457_log.csv")

    plain = run(sample, tmp_path / "plain")
    from_gz = run(gz, tmp_path / "gz", chunk_rows=5_000)
    from_zip = run(kaggle_zip, tmp_path / "zip")

    assert from_gz["partitions"] == plain["partitions"]
    assert from_zip["partitions"] == plain["partitions"]
    assert from_zip["source"]["name"] == "paysim.zip"


def test_bom_is_ignored_and_reported(
    sample: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: the byte-order mark was dropped without a word.
    monkeypatch.setattr(logging.getLogger("flame"), "propagate", True)
    caplog.set_level(logging.WARNING)
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + sample.read_bytes())

    manifest = run(with_bom, tmp_path / "out")

    assert manifest["partitions"] == run(sample, tmp_path / "plain")["partitions"]
    assert manifest["warnings"]["byte_order_mark"] is True
    warnings = [
        (r.name, r.getMessage()) for r in caplog.records if r.levelname == "WARNING"
    ]
    assert warnings == [
        (
            "flame.paysim_csv",
            f"{with_bom}: starts with a UTF-8 byte-order mark (Excel's 'CSV UTF-8' "
            "writes one); the byte-order mark was ignored, the rows are read as "
            "usual",
        )
    ]


def test_rerun_is_byte_identical(sample: Path, tmp_path: Path) -> None:
    first = run(sample, tmp_path / "first")
    again = run(sample, tmp_path / "again")
    # Row groups have a fixed size, so the chunk size leaves no trace either.
    small_chunks = run(sample, tmp_path / "small", chunk_rows=999)

    assert first == again == small_chunks
    expected = files_of(tmp_path / "first")
    assert set(expected) == {
        "manifest.json",
        "US/part-00000.parquet",
        "EU/part-00000.parquet",
        "APAC/part-00000.parquet",
        "test/part-00000.parquet",
    }
    assert files_of(tmp_path / "again") == expected
    assert files_of(tmp_path / "small") == expected


def test_time_split_puts_only_later_steps_in_test(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    manifest = run(sample, out, test_split="time", test_fraction=0.25)

    cutoff = manifest["scheme"]["time_cutoff_step"]
    assert min(read(out, "test")["step"].to_pylist()) > cutoff
    for region in REGIONS:
        assert max(read(out, region)["step"].to_pylist()) <= cutoff

    # Whole steps only: the sample's step 19 alone holds 9,504 of 12,651 rows,
    # so the nearest split to 25% has 2,243 test rows (17.7%).
    steps = read_table(sample)["step"].to_numpy()
    target = 0.25 * len(steps)
    gaps = [abs((steps > s).sum() - target) for s in set(steps) if s < steps.max()]
    test_rows = manifest["partitions"]["test"]["rows"]
    assert abs(test_rows - target) == min(gaps)
    assert (cutoff, test_rows) == (19, 2_243)


# -- damaged real files: handled and reported ---------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "frauds", "blank", "rounded"),
    [
        ("bad_spreadsheet_resaved.csv", 19_999, 81, 0, 980),
        ("bad_blank_lines.csv", 4_999, 40, 4_941, 218),
    ],
)
def test_damaged_files_partition_with_warnings(
    paysim_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    rows: int,
    frauds: int,
    blank: int,
    rounded: int,
) -> None:
    # flame's logger does not propagate to the root logger caplog listens on.
    monkeypatch.setattr(logging.getLogger("flame"), "propagate", True)
    caplog.set_level(logging.WARNING)

    manifest = run(paysim_dir / name, tmp_path / "out")

    assert (manifest["rows"], manifest["frauds"]) == (rows, frauds)
    assert manifest["warnings"] == {
        "blank_rows_skipped": blank,
        "spreadsheet_rounded_rows": rounded,
        "byte_order_mark": False,
    }
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (f"skipped {blank} blank rows" in " ".join(messages)) == bool(blank)
    assert any(
        f"the balance columns of those {rounded} rows are inexact" in m
        for m in messages
    )
    assert len(messages) == 1 + bool(blank)


def test_blank_lines_shift_reported_line_numbers(
    sample_lines: list[str], tmp_path: Path
) -> None:
    lines = list(sample_lines)
    lines[11] = set_field(lines[11], "amount", "abc")  # line 12
    lines[4:4] = ["\n", ",,,,,,,,,,\r\n", "\n"]  # so now line 15

    with pytest.raises(PaySimFormatError, match=r"line 15, column amount: value 'abc'"):
        run(write(tmp_path, lines), tmp_path / "out", chunk_rows=4)


# -- crafted bad input: each fails with its own message, leaving nothing -------------


def set_field(line: str, column: str, value: str) -> str:
    fields = line.rstrip("\n").split(",")
    fields[COLUMNS.index(column)] = value
    return ",".join(fields) + "\n"


def drop_field(line: str, column: str) -> str:
    fields = line.rstrip("\n").split(",")
    del fields[COLUMNS.index(column)]
    return ",".join(fields) + "\n"


def damage_line(
    line_no: int, column: str, value: str
) -> Callable[[list[str]], list[str]]:
    def damage(lines: list[str]) -> list[str]:
        lines[line_no - 1] = set_field(lines[line_no - 1], column, value)
        return lines

    return damage


def write(tmp_path: Path, lines: list[str], name: str = "paysim.csv") -> Path:
    path = tmp_path / name
    path.write_text("".join(lines), encoding="utf-8")
    return path


BAD_INPUTS: dict[str, tuple[Callable[[list[str]], list[str]], str]] = {
    "missing column": (
        lambda lines: [drop_field(line, "isFlaggedFraud") for line in lines],
        r"line 1: missing column\(s\) isFlaggedFraud; expected header \(line 1\): "
        r"step,type,amount,",
    ),
    "extra column": (
        lambda lines: [line.rstrip("\n") + ",note\n" for line in lines],
        r"line 1: extra column\(s\) 'note'; expected header",
    ),
    "renamed column": (
        lambda lines: [lines[0].replace("amount", "amt"), *lines[1:]],
        r"line 1: renamed column\(s\)\? missing amount; found 'amt' instead; "
        r"expected header",
    ),
    "no header": (
        lambda lines: lines[1:],
        r"line 1 looks like data, not the header",
    ),
    "non-numeric amount": (
        damage_line(12, "amount", "1.2.3"),
        r"line 12, column amount: value '1\.2\.3' is not a number",
    ),
    "non-numeric balance": (
        damage_line(20, "newbalanceDest", "n/a"),
        r"line 20, column newbalanceDest: value 'n/a' is not a number",
    ),
    "non-numeric step": (
        damage_line(12, "step", "1.5"),
        r"line 12, column step: value '1.5' is not a whole number",
    ),
    "negative amount": (
        damage_line(12, "amount", "-5.0"),
        r"line 12, column amount: value '-5.0' is negative; PaySim amounts and "
        r"balances are >= 0",
    ),
    "negative balance": (
        damage_line(31, "oldbalanceOrg", "-1E+03"),
        r"line 31, column oldbalanceOrg: value '-1E\+03' is negative",
    ),
    "unknown type": (
        damage_line(12, "type", "WIRE"),
        r"line 12, column type: value 'WIRE' is not a transaction type; expected "
        r"one of CASH_IN, CASH_OUT, DEBIT, PAYMENT, TRANSFER",
    ),
    "isFraud not 0/1": (
        damage_line(12, "isFraud", "2"),
        r"line 12, column isFraud: value '2' is not 0 or 1",
    ),
    "isFlaggedFraud not 0/1": (
        damage_line(12, "isFlaggedFraud", "yes"),
        r"line 12, column isFlaggedFraud: value 'yes' is not 0 or 1",
    ),
    "step after the month": (
        damage_line(12, "step", str(LAST_STEP + 1)),
        r"line 12, column step: value '744' is outside 1\.\.743",
    ),
    "empty value": (
        damage_line(12, "nameDest", ""),
        r"line 12, column nameDest: value '' is empty",
    ),
    "empty file": (lambda lines: [], r"is empty \(0 bytes\)"),
    "header only": (
        lambda lines: lines[:1],
        r"has a header but no data rows; the file is incomplete",
    ),
    "only blank rows": (
        lambda lines: [lines[0], ",,,,,,,,,,\n", "\n"],
        r"has a header but no data rows \(only 2 blank rows\)",
    ),
    "truncated last line": (
        lambda lines: [*lines[:-1], lines[-1][:25]],
        r"line 31 \(the last line\) has \d of 11 fields: the file looks truncated",
    ),
    "truncated last field": (
        lambda lines: [*lines[:-1], lines[-1][:-2]],
        r"line 31, column isFlaggedFraud: value '' is empty.*no line end: the "
        r"file looks truncated",
    ),
    "short line inside": (
        lambda lines: [*lines[:12], drop_field(lines[12], "type"), *lines[13:]],
        r"line 13 has 10 fields but the header has 11",
    ),
    # Regression: reported as a renamed column `isFlaggedFraud\r1`.
    "old-Mac line ends": (
        lambda lines: [line.replace("\n", "\r") for line in lines],
        r"line 1 holds carriage returns \(\\r\) but no line feed \(\\n\): the file "
        r"has old-Mac line ends \(\\r only\), so it reads as one line; save the "
        r"file with \\n or \\r\\n line ends",
    ),
    "carriage return in the header": (
        lambda lines: [lines[0].replace(",amount", "\r,amount"), *lines[1:]],
        r"line 1 holds a carriage return \(\\r\) inside the line; save the file "
        r"with \\n or \\r\\n line ends",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(
    sample_lines: list[str], tmp_path: Path, case: str
) -> None:
    damage, message = BAD_INPUTS[case]
    source = write(tmp_path, damage(list(sample_lines)))
    before = source.read_bytes()

    with pytest.raises(PaySimFormatError, match=message):
        run(source, tmp_path / "out", chunk_rows=7)

    # No output and no temporary folder left; the input is untouched.
    assert list(tmp_path.iterdir()) == [source]
    assert source.read_bytes() == before


@pytest.mark.parametrize("chunk_rows", [100_000, 1_000])
def test_truncated_gzip_fails_cleanly(
    sample: Path, tmp_path: Path, chunk_rows: int
) -> None:
    packed = gzip.compress(sample.read_bytes(), mtime=0)
    source = tmp_path / "sample.csv.gz"
    source.write_bytes(packed[: len(packed) // 2])
    # The complete lines in what can still be unpacked (header = line 1).
    intact = zlib.decompressobj(wbits=31).decompress(source.read_bytes()).count(b"\n")
    assert intact > 5_000

    # Regression: said "after about line 1", the start of the (only) chunk.
    with pytest.raises(
        PaySimFormatError,
        match=rf"the data breaks off after line {intact:,} \(.*\); the file looks "
        r"truncated or damaged",
    ):
        run(source, tmp_path / "out", chunk_rows=chunk_rows)

    assert list(tmp_path.iterdir()) == [source]


def test_old_mac_line_ends_are_named(sample: Path, tmp_path: Path) -> None:
    # Regression: the real sample with `\r` line ends (> 64 KiB, one "line")
    # was refused as "line 1 is longer than 65536 bytes".
    source = tmp_path / "mac.csv"
    source.write_bytes(sample.read_bytes().replace(b"\n", b"\r"))

    with pytest.raises(
        PaySimFormatError,
        match=r"mac\.csv: line 1 holds carriage returns .*old-Mac line ends "
        r"\(\\r only\).*save the file with \\n or \\r\\n line ends",
    ):
        run(source, tmp_path / "out")


def test_zip_with_two_csvs_is_refused(sample: Path, tmp_path: Path) -> None:
    source = tmp_path / "two.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.write(sample, "a.csv")
        archive.write(sample, "b.csv")

    with pytest.raises(PaySimFormatError, match=r"exactly one \.csv file, found 2"):
        run(source, tmp_path / "out")


def test_main_reports_bad_input_without_traceback(
    sample_lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path, damage_line(5, "type", "WIRE")(list(sample_lines)))

    code = main([str(source), "--out", str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert code == 2
    assert "line 5, column type: value 'WIRE'" in err
    assert "Traceback" not in err


def test_main_rejects_a_negative_seed(
    sample_lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: `--seed -1` ended in numpy's traceback "expected non-negative
    # integer" after the whole file had been read.
    source = write(tmp_path, sample_lines)
    message = r"seed must be >= 0, got -1; pass a --seed >= 0"

    with pytest.raises(PartitionError, match=message):
        run(source, tmp_path / "out", seed=-1)
    code = main([str(source), "--out", str(tmp_path / "out"), "--seed", "-1"])

    err = capsys.readouterr().err
    assert code == 2
    assert "error: seed must be >= 0, got -1" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [source]


def test_main_prints_a_summary(
    sample_lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path, sample_lines)

    code = main([str(source), "--out", str(tmp_path / "out"), "--regions", "A=1"])

    out = capsys.readouterr().out
    assert code == 0
    assert "total" in out and "30" in out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rows"] == 30


# -- the output folder ---------------------------------------------------------------


def test_existing_output_needs_force(sample_lines: list[str], tmp_path: Path) -> None:
    source = write(tmp_path, sample_lines)
    out = tmp_path / "out"
    run(source, out, seed=1)

    with pytest.raises(PartitionError, match=r"out already exists; pass --force"):
        run(source, out, seed=2)
    assert json.loads((out / "manifest.json").read_text())["scheme"]["seed"] == 1

    run(source, out, seed=2, force=True)
    assert json.loads((out / "manifest.json").read_text())["scheme"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "paysim.csv"]


@pytest.mark.parametrize("out", ["afile/parts", "afile/sub/parts"])
def test_unwritable_output_folder_is_reported(
    sample_lines: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out: str,
) -> None:
    # Regression: a read-only --out gave the traceback "OSError: [Errno 30]
    # Read-only file system: '.../parts.tmp-2634-0'". Tests run as root, which
    # chmod does not stop, so a file in the way stands in for a read-only disk.
    source = write(tmp_path, sample_lines)
    (tmp_path / "afile").write_text("a file, not a folder")
    out_dir = tmp_path / out
    message = (
        rf"cannot write the output folder {re.escape(str(out_dir))} "
        r"\(\[Errno \d+\] [^)]*, a file stands where a folder is needed\); it is "
        r"built in a temporary folder beside it first, so choose a --out in a "
        r"writable folder with free space"
    )

    with pytest.raises(PartitionError, match=message):
        run(source, out_dir)
    code = main([str(source), "--out", str(out_dir)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"error: cannot write the output folder {out_dir}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "paysim.csv"]


def test_force_never_replaces_an_unrelated_folder(
    sample_lines: list[str], tmp_path: Path
) -> None:
    source = write(tmp_path, sample_lines)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")

    with pytest.raises(PartitionError, match=r"is not a partition folder"):
        run(source, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_output_folder_may_not_hold_the_input(
    sample_lines: list[str], tmp_path: Path
) -> None:
    source = write(tmp_path, sample_lines)

    with pytest.raises(PartitionError, match=r"holds the input"):
        run(source, tmp_path, force=True)


def test_repeated_accounts_stay_in_one_region(
    sample_lines: list[str], tmp_path: Path
) -> None:
    rows = [
        set_field(line, "nameOrig", f"C{i % 7}")
        for i, line in enumerate(sample_lines[1:] * 10)
    ]
    source = write(tmp_path, [sample_lines[0], *rows])

    run(source, tmp_path / "out", chunk_rows=50)

    owners: dict[str, set[str]] = {}
    for region in REGIONS:
        for name in read(tmp_path / "out", region)["nameOrig"].to_pylist():
            owners.setdefault(name, set()).add(region)
    assert all(len(regions) == 1 for regions in owners.values())


# -- options and the maths behind them ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("US=0.5,EU=0.6", r"shares sum to 1\.1, not 1 .*within 1e-06"),
        ("US=0.5,test=0.5", r"'test' is reserved for the test set"),
        ("US=0.5,us=0.5", r"'us' repeats another \(ignoring case\)"),
        ("US=0.5,US=0.5", r"names 'US' twice"),
        ("U S=1", r"'U S' must be non-empty and use only letters, digits"),
        ("=1", r"'' must be non-empty"),
        ("US=half", r"share 'half' of 'US' is not a number"),
        ("US", r"item 'US' is not NAME=SHARE"),
        ("US=0,EU=1", r"'US' has share 0\.0; shares must be > 0"),
    ],
)
def test_bad_region_specs_are_rejected(spec: str, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        check_regions(parse_regions(spec))


def test_bad_options_are_rejected_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(PartitionError, match=r"no such file"):
        run(missing, tmp_path / "out")
    with pytest.raises(PartitionError, match=r"test split 'last' is unknown"):
        run(missing, tmp_path / "out", test_split="last")
    with pytest.raises(PartitionError, match=r"test fraction 1\.0 is outside"):
        run(missing, tmp_path / "out", test_fraction=1.0)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_as_input_is_named_a_folder(tmp_path: Path) -> None:
    # Regression: a folder was reported as "no such file".
    folder = tmp_path / "paysim"
    folder.mkdir()

    with pytest.raises(
        PartitionError,
        match=r"paysim is a folder, not a CSV file; pass the PaySim CSV itself",
    ):
        run(folder, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [folder]


def test_time_cutoff_picks_the_nearest_smallest_step() -> None:
    # Steps 1..5 with 10 rows each: the last step is exactly 20%.
    assert time_cutoff(np.array([0, 10, 10, 10, 10, 10]), 0.2) == 4
    # Later rows 6 (cutoff 1) and 4 (cutoff 2) are equally near 5: smallest wins.
    assert time_cutoff(np.array([0, 4, 2, 4]), 0.5) == 1
    # Both sides keep rows even when the fraction asks for (almost) all.
    assert time_cutoff(np.array([0, 1, 1, 98]), 0.99) == 1
    with pytest.raises(PartitionError, match=r"every row has step 3"):
        time_cutoff(np.array([0, 0, 0, 12]), 0.2)


def test_stratified_masks_are_exact_and_seeded() -> None:
    masks = stratified_test_masks([1_000, 33], 0.2, seed=5)

    assert [int(mask.sum()) for mask in masks] == [200, 7]
    again = stratified_test_masks([1_000, 33], 0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))


def test_region_hash_is_pinned() -> None:
    # Regression: a change here would silently move accounts between regions.
    units = region_hash_unit(["C1231006815", "C1666544295", "M1979787155"])

    assert units.tolist() == pytest.approx([0.0495992, 0.6943804, 0.6808639])
    assert assign_regions(["C1231006815", "C1666544295"], [0.5, 0.5]).tolist() == [0, 1]


# -- stopping a run ----------------------------------------------------------------


def test_sigterm_removes_the_temporary_folder(tmp_path: Path) -> None:
    # Regression: SIGTERM (kill, docker stop) left OUT.tmp-<pid>-<n> behind,
    # holding a spill file as big as the data.
    source = tmp_path / "synth.csv"
    generate(source, rows=300_000, progress=False)
    out = tmp_path / "parts"
    command = [
        sys.executable,
        "-c",
        "import sys; from flame.partition import main; sys.exit(main(sys.argv[1:]))",
        str(source),
        "--out",
        str(out),
        "--chunk-rows",
        "20000",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    # Wait until pass 1 is spilling, then stop it as `kill` would.
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("parts.tmp-*/_spill.parquet")):
        assert process.poll() is None, "partition ended before it could be stopped"
        assert time.monotonic() < deadline, "no spill file appeared in 60 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 130, err.decode()
    assert "interrupted: no partial output was left behind" in err.decode()
    assert "Traceback" not in err.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.csv"]
