"""Read a PaySim CSV in validated, typed chunks.

Accepts the Kaggle log as a plain CSV, gzipped, or as the `.zip` Kaggle serves.
Every chunk is an Arrow table with `flame.schema` columns and types. Bad input
raises `PaySimFormatError` naming the file, the physical line (header = line 1),
the column, the value found and the fix. Two known kinds of damage are kept and
reported instead: blank rows (skipped), numbers a spreadsheet rounded to
three significant digits (kept, but inexact) and a UTF-8 byte-order mark
(ignored).
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import compress, islice
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from flame.errors import FlameError
from flame.schema import (
    AMOUNT_COLUMNS,
    COLUMNS,
    DTYPES,
    FIRST_STEP,
    LAST_STEP,
    TRANSACTION_TYPES,
)

logger = logging.getLogger(__name__)

_ARROW_TYPES = {
    "int32": pa.int32(),
    "string": pa.string(),
    "float64": pa.float64(),
    "int8": pa.int8(),
}
# Arrow schema of a validated chunk, as stored in the Parquet partitions.
ARROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[DTYPES[name]]) for name in COLUMNS])

EXPECTED_HEADER = ",".join(COLUMNS)
LABEL_COLUMNS = ("isFraud", "isFlaggedFraud")

_BOM = b"\xef\xbb\xbf"
_MAX_HEADER_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
# Bytes a fully empty row consists of: `,,,,,,,,,,` or a blank line.
_BLANK_BYTES = b" \t\r\n,"
# What a spreadsheet writes after rounding to <= 3 significant digits
# (`1.92E+07`). PaySim's own Java output (`1.013809561E7`) has an unsigned
# exponent and all digits, so it never matches.
_SPREADSHEET_ROUNDED = r"^[+-]?\d(\.\d{1,2})?E[+-]\d\d$"
_DECIMAL = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_WHOLE_NUMBER = r"^\d{1,9}$"
_REDOWNLOAD = (
    "re-download the original file (Kaggle: PS_20174392719_1491204439457_log.csv)"
)


class PaySimFormatError(FlameError, ValueError):
    """The CSV breaks the PaySim format; the message says where and how to fix it."""


@dataclass
class ReadStats:
    """What a read found besides valid rows: the non-fatal damage it worked around."""

    rows: int = 0
    blank_rows: int = 0
    first_blank_line: int = 0
    rounded_rows: int = 0
    first_rounded_line: int = 0
    byte_order_mark: bool = False


class _LineStream(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...
    def readline(self, size: int = -1, /) -> bytes: ...
    def peek(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class _Check:
    """One validation rule: rows where `bad` is true break it."""

    column: str
    bad: pa.Array | pa.ChunkedArray
    rule: str


class PaySimCsv:
    """One PaySim CSV file, read as validated Arrow chunks of `chunk_rows` lines."""

    def __init__(self, path: Path, *, chunk_rows: int = 100_000) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.stats = ReadStats()
        self._header: list[str] = []
        self._unterminated_line = 0

    def chunks(self, *, progress: bool = False) -> Iterator[pa.Table]:
        """Yield typed tables (schema `ARROW_SCHEMA`); warn about damage at the end."""
        self.stats = ReadStats()
        if self.path.stat().st_size == 0:
            raise self._error(f"is empty (0 bytes); {_REDOWNLOAD}")

        with _open_lines(self.path) as (stream, bytes_read):
            self._header = self._read_header(stream)
            bar = tqdm(
                total=self.path.stat().st_size,
                unit="B",
                unit_scale=True,
                desc=f"read {self.path.name}",
                disable=not progress,
            )
            with bar:
                for table in self._tables(stream):
                    bar.update(bytes_read() - bar.n)
                    yield table

        self._finish()

    # -- the steps of a read ------------------------------------------------

    def _read_header(self, stream: _LineStream) -> list[str]:
        with self._unpacking(after_line=lambda: 0):
            line = stream.readline(_MAX_HEADER_BYTES)
        if not line:
            raise self._error(f"holds no text (0 bytes after unpacking); {_REDOWNLOAD}")
        too_long = len(line) == _MAX_HEADER_BYTES and not line.endswith(b"\n")
        # A byte-order mark (Excel's "CSV UTF-8") is harmless: drop it, report it.
        if line.startswith(_BOM):
            line = line.removeprefix(_BOM)
            self.stats.byte_order_mark = True
        # Checked before the length: a `\r`-only file reads as one endless line.
        if b"\r" in line.rstrip(b"\r\n"):
            raise self._error(_header_carriage_return(line))
        if too_long:
            raise self._error(
                f"line 1 is longer than {_MAX_HEADER_BYTES} bytes, so it is no CSV "
                f"header; expected header: {EXPECTED_HEADER}"
            )
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(
                f"line 1 is not UTF-8 text; is this a CSV file? "
                f"Expected header: {EXPECTED_HEADER}"
            ) from None
        found = text.rstrip("\r\n").split(",")
        _check_header(found, self._error)
        return found

    def _tables(self, stream: _LineStream) -> Iterator[pa.Table]:
        first_line = 2
        while True:
            lines = self._next_lines(stream, first_line)
            if not lines:
                return
            if not lines[-1].endswith(b"\n"):
                self._unterminated_line = first_line + len(lines) - 1
            table = self._table_from_lines(lines, first_line, stream)
            first_line += len(lines)
            if table.num_rows:
                yield table

    def _next_lines(self, stream: _LineStream, first_line: int) -> list[bytes]:
        # `extend` keeps the lines read before a failure, so an error can say
        # how far the data went.
        lines: list[bytes] = []
        with self._unpacking(after_line=lambda: first_line - 1 + len(lines)):
            lines.extend(islice(stream, self.chunk_rows))
        return lines

    @contextmanager
    def _unpacking(self, *, after_line: Callable[[], int]) -> Iterator[None]:
        """Turn a broken gzip or zip stream into a PaySimFormatError.

        `after_line` gives the last line read intact when the stream broke.
        """
        try:
            yield
        except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
            last = after_line()
            where = f"after line {last:,}" if last else "at once"
            raise self._error(
                f"the data breaks off {where} ({exc}); the file looks truncated "
                f"or damaged (e.g. an interrupted download); {_REDOWNLOAD}"
            ) from None

    def _table_from_lines(
        self, lines: list[bytes], first_line: int, stream: _LineStream
    ) -> pa.Table:
        """Blank-filter, parse, validate and type one chunk of physical lines."""
        # Drop fully empty rows first, so field counts only see real rows.
        blank = np.fromiter((not line.strip(_BLANK_BYTES) for line in lines), bool)
        kept = list(compress(lines, ~blank))
        line_numbers = first_line + np.flatnonzero(~blank)
        self._count_blank(blank, first_line)
        if not kept:
            return ARROW_SCHEMA.empty_table()

        # Parse as strings; the rules below then see every value as written.
        self._check_field_counts(kept, line_numbers, lines[-1], stream)
        text = self._parse_strings(kept, line_numbers)

        self._validate(text, line_numbers)
        self._count_rounded(text, line_numbers)
        self.stats.rows += text.num_rows
        return _typed(text)

    def _finish(self) -> None:
        stats = self.stats
        if stats.rows == 0:
            blank = f" (only {stats.blank_rows} blank rows)" if stats.blank_rows else ""
            raise self._error(
                f"has a header but no data rows{blank}; the file is incomplete: "
                f"{_REDOWNLOAD}"
            )
        if stats.blank_rows:
            logger.warning(
                "%s: skipped %d blank rows (empty lines or `,,,,,,,,,,`, first at "
                "line %d); the other %d rows are read",
                self.path,
                stats.blank_rows,
                stats.first_blank_line,
                stats.rows,
            )
        if stats.byte_order_mark:
            logger.warning(
                "%s: starts with a UTF-8 byte-order mark (Excel's 'CSV UTF-8' "
                "writes one); the byte-order mark was ignored, the rows are read "
                "as usual",
                self.path,
            )
        if stats.rounded_rows:
            logger.warning(
                "%s: %d rows hold money values a spreadsheet rounded to 3 "
                "significant digits (like 1.92E+07, first at line %d), so the "
                "balance columns of those %d rows are inexact; rows kept. For "
                "exact balances %s",
                self.path,
                stats.rounded_rows,
                stats.first_rounded_line,
                stats.rounded_rows,
                _REDOWNLOAD,
            )

    # -- helpers of `_table_from_lines` --------------------------------------

    def _count_blank(self, blank: np.ndarray, first_line: int) -> None:
        n_blank = int(blank.sum())
        if n_blank and not self.stats.blank_rows:
            self.stats.first_blank_line = first_line + int(np.argmax(blank))
        self.stats.blank_rows += n_blank

    def _check_field_counts(
        self,
        kept: list[bytes],
        line_numbers: np.ndarray,
        last_line: bytes,
        stream: _LineStream,
    ) -> None:
        commas = len(self._header) - 1
        wrong = [i for i, line in enumerate(kept) if line.count(b",") != commas]
        if not wrong:
            return
        i = wrong[0]
        fields = kept[i].count(b",") + 1
        line = int(line_numbers[i])
        is_last = kept[i] is last_line and not stream.peek(1)
        if fields < len(self._header) and is_last:
            raise self._error(
                f"line {line} (the last line) has {fields} of "
                f"{len(self._header)} fields: the file looks truncated (e.g. an "
                f"interrupted download); {_REDOWNLOAD}"
            )
        raise self._error(
            f"line {line} has {fields} fields but the header has "
            f"{len(self._header)}; a value contains a comma, or a field is "
            f"missing or extra: fix or delete line {line}. Line "
            f"{line}: {_shorten(kept[i])!r}"
        )

    def _parse_strings(self, kept: list[bytes], line_numbers: np.ndarray) -> pa.Table:
        block = b"".join(kept)
        # A lone carriage return would split a row in two and shift the lines.
        if block.count(b"\r") != block.count(b"\r\n"):
            i = next(i for i, line in enumerate(kept) if b"\r" in line.rstrip(b"\r\n"))
            raise self._error(
                f"line {line_numbers[i]} holds a carriage return (\\r) inside the "
                f"line; save the file with \\n or \\r\\n line ends"
            )
        try:
            table = pacsv.read_csv(
                io.BytesIO(block),
                read_options=pacsv.ReadOptions(column_names=self._header),
                parse_options=pacsv.ParseOptions(quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(self._header, pa.string()),
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            raise self._undecodable(kept, line_numbers, exc) from None
        return table.select(list(COLUMNS))

    def _undecodable(
        self, kept: list[bytes], line_numbers: np.ndarray, exc: Exception
    ) -> PaySimFormatError:
        for i, line in enumerate(kept):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(
                    f"line {line_numbers[i]} is not UTF-8 text "
                    f"({_shorten(line)!r}); save the file as UTF-8 CSV"
                )
        return self._error(
            f"lines {line_numbers[0]}-{line_numbers[-1]} could not be parsed "
            f"({exc}); {_REDOWNLOAD}"
        )

    def _validate(self, text: pa.Table, line_numbers: np.ndarray) -> None:
        """Raise for the first row (in file order) that breaks any rule."""
        first_bad: tuple[int, _Check] | None = None
        for check in _checks(text):
            row = pc.index(pc.fill_null(check.bad, True), True).as_py()
            if row >= 0 and (first_bad is None or row < first_bad[0]):
                first_bad = (row, check)
        if first_bad is None:
            return
        row, check = first_bad
        line = int(line_numbers[row])
        value = text[check.column][row].as_py()
        hint = ""
        if line == self._unterminated_line:
            hint = (
                " This last line has no line end: the file looks truncated (e.g. "
                f"an interrupted download); {_REDOWNLOAD}"
            )
        raise self._error(
            f"line {line}, column {check.column}: value {value!r} {check.rule}; fix "
            f"or delete line {line}.{hint}"
        )

    def _count_rounded(self, text: pa.Table, line_numbers: np.ndarray) -> None:
        rounded = pa.array(np.zeros(text.num_rows, dtype=bool))
        for column in AMOUNT_COLUMNS:
            matches = pc.match_substring_regex(text[column], _SPREADSHEET_ROUNDED)
            rounded = pc.or_(rounded, matches)
        n_rounded = pc.sum(rounded).as_py() or 0
        if n_rounded and not self.stats.rounded_rows:
            row = pc.index(rounded, True).as_py()
            self.stats.first_rounded_line = int(line_numbers[row])
        self.stats.rounded_rows += n_rounded

    def _error(self, problem: str) -> PaySimFormatError:
        return PaySimFormatError(f"{self.path}: {problem}")


def read_table(path: Path, *, chunk_rows: int = 100_000) -> pa.Table:
    """Read a whole (small) PaySim CSV into one validated table."""
    tables = list(PaySimCsv(path, chunk_rows=chunk_rows).chunks())
    return pa.concat_tables(tables)


# -- opening -------------------------------------------------------------


@contextmanager
def _open_lines(path: Path) -> Iterator[tuple[_LineStream, Callable[[], int]]]:
    """Open plain, gzip or zip input as a stream of byte lines.

    Also yields a function giving the bytes consumed from the file on disk, for
    a progress bar that works for compressed input too.
    """
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw) as unpacked:
                yield unpacked, raw.tell
        elif magic == _ZIP_MAGIC:
            with _open_zip_member(path, raw) as member:
                yield member, raw.tell
        else:
            yield raw, raw.tell


@contextmanager
def _open_zip_member(path: Path, raw: io.BufferedReader) -> Iterator[_LineStream]:
    try:
        archive = zipfile.ZipFile(raw)
    except zipfile.BadZipFile as exc:
        raise PaySimFormatError(
            f"{path}: is not a readable zip archive ({exc}); {_REDOWNLOAD}"
        ) from None
    with archive:
        csvs = [
            info.filename
            for info in archive.infolist()
            if info.filename.lower().endswith(".csv")
            and not info.filename.startswith("__MACOSX/")
        ]
        if len(csvs) != 1:
            raise PaySimFormatError(
                f"{path}: a zip archive must hold exactly one .csv file, found "
                f"{len(csvs)} ({', '.join(csvs) or 'none'}); unpack it and pass the "
                "CSV itself"
            )
        # zipfile's own readline runs in Python; a BufferedReader splits lines in C.
        member = archive.open(csvs[0])
        with io.BufferedReader(member, 1 << 20) as lines:  # type: ignore[type-var]
            yield lines


# -- rules -----------------------------------------------------------------


def _check_header(found: list[str], error: Callable[[str], PaySimFormatError]) -> None:
    """Require the eleven PaySim columns, each once, in any order."""
    if sorted(found) == sorted(COLUMNS):
        return
    expected = f"expected header (line 1): {EXPECTED_HEADER}"
    if found and _is_number(found[0]):
        raise error(f"line 1 looks like data, not the header; add the {expected}")
    duplicated = sorted({name for name in found if found.count(name) > 1})
    missing = [name for name in COLUMNS if name not in found]
    extra = [name for name in found if name not in COLUMNS]
    problems = []
    if duplicated:
        problems.append(f"duplicated column(s) {', '.join(duplicated)}")
    if missing and extra:
        problems.append(
            f"renamed column(s)? missing {', '.join(missing)}; found "
            f"{', '.join(map(repr, extra))} instead"
        )
    elif missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    elif extra:
        problems.append(f"extra column(s) {', '.join(map(repr, extra))}")
    raise error(f"line 1: {'; '.join(problems)}; {expected}")


def _checks(text: pa.Table) -> Iterator[_Check]:
    """The row rules, column by column, as masks of the rows breaking them."""
    for column in COLUMNS:
        yield _Check(
            column, pc.equal(text[column], ""), "is empty; PaySim fills every field"
        )

    step = text["step"]
    yield _Check(
        "step",
        pc.invert(pc.match_substring_regex(step, _WHOLE_NUMBER)),
        "is not a whole number; step is the hour of the month",
    )
    steps = _to_number(step, _WHOLE_NUMBER, pa.int32())
    outside = pc.or_(pc.less(steps, FIRST_STEP), pc.greater(steps, LAST_STEP))
    yield _Check(
        "step",
        pc.fill_null(outside, False),
        f"is outside {FIRST_STEP}..{LAST_STEP}, the hours of the simulated month",
    )

    yield _Check(
        "type",
        pc.invert(pc.is_in(text["type"], pa.array(TRANSACTION_TYPES))),
        f"is not a transaction type; expected one of {', '.join(TRANSACTION_TYPES)}",
    )

    for column in AMOUNT_COLUMNS:
        values = _to_number(text[column], _DECIMAL, pa.float64())
        yield _Check(
            column,
            pc.invert(pc.is_finite(values)),
            "is not a number; PaySim writes plain decimals like 9839.64 or "
            "1.013809561E7",
        )
        yield _Check(
            column,
            pc.fill_null(pc.less(values, 0), False),
            "is negative; PaySim amounts and balances are >= 0",
        )

    for column in LABEL_COLUMNS:
        yield _Check(
            column,
            pc.invert(pc.is_in(text[column], pa.array(["0", "1"]))),
            "is not 0 or 1; the labels are 0/1 flags",
        )


def _typed(text: pa.Table) -> pa.Table:
    """Convert a validated string table to `ARROW_SCHEMA` types."""
    columns = [pc.cast(text[field.name], field.type) for field in ARROW_SCHEMA]
    return pa.Table.from_arrays(columns, schema=ARROW_SCHEMA)


def _to_number(
    values: pa.ChunkedArray, pattern: str, type_: pa.DataType
) -> pa.ChunkedArray:
    """Cast strings to numbers; strings not matching `pattern` become null."""
    try:
        return pc.cast(values, type_)
    except pa.ArrowInvalid:
        # Some value is no number: null it (the rules report it), cast the rest.
        valid = pc.match_substring_regex(values, pattern)
        return pc.cast(pc.if_else(valid, values, None), type_)


def _header_carriage_return(line: bytes) -> str:
    """Why a header holding a carriage return is refused, and the fix."""
    fix = "save the file with \\n or \\r\\n line ends"
    if not line.endswith(b"\n"):
        return (
            "line 1 holds carriage returns (\\r) but no line feed (\\n): the file "
            f"has old-Mac line ends (\\r only), so it reads as one line; {fix}"
        )
    return f"line 1 holds a carriage return (\\r) inside the line; {fix}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shorten(line: bytes, limit: int = 120) -> str:
    text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."
