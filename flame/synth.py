"""The built-in PaySim-format data set that `flame synth` writes.

A stand-in for the Kaggle PaySim log (Lopez-Rojas, Elmir and Axelsson, "PaySim: A
financial mobile money simulator for fraud detection", EMSS 2016) for machines
without the real file. It reproduces the published shape, not the simulator:

- the five types in the full file's proportions; frauds only in TRANSFER and
  CASH_OUT: a fraudster TRANSFERs an account's whole balance to a mule (in 10M
  pieces above PaySim's cap), and the mule CASH_OUTs each piece in the same step;
  so frauds come in pairs, and their count is rows * fraud_rate rounded to an
  even number (at least one pair when fraud_rate > 0 and rows >= 2);
- a front-loaded volume (steps 1-400 hold 91% of rows) with a daily cycle, while
  frauds are spread evenly over the 743 steps; rows sorted by step;
- amounts and balances drawn per type from log10 quantile tables calibrated on
  the real rows in `shared/data/paysim/` (sample_12k and head_step1, 14,435
  distinct rows), with the balance mechanics and the simulator's quirks (empty
  origins, 0/0 merchant and mule balances, `isFlaggedFraud` on blocked
  transfers).

Determinism: the row counts per step come from a Generator seeded with
(seed, 0) and the rows of step s from one seeded with (seed, 1, s), so the file
depends on seed and rows only, never on the chunk size; gzip output has mtime 0.

Speed, measured once on a 2-core Xeon container: all 6,362,620 rows in 25 s
(250k rows/s, 196 MB gzip at level 6, which takes 3/4 of the time); as plain CSV
6.4 s (990k rows/s, 510 MB). Peak memory 210 MB: one chunk at a time.

    flame synth --rows 200000 --out data/synth/paysim_synth.csv.gz
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from flame.errors import ConfigError, FlameError
from flame.schema import COLUMNS, FIRST_STEP, LAST_STEP, TRANSACTION_TYPES

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Size of the full Kaggle file; also the largest data set we generate.
FULL_ROWS = 6_362_620
FULL_FRAUDS = 8_213
DEFAULT_ROWS = 200_000
DEFAULT_SEED = 42
DEFAULT_FRAUD_RATE = FULL_FRAUDS / FULL_ROWS
DEFAULT_OUT = Path("data/synth/paysim_synth.csv.gz")

# Rows formatted and written at a time: bounds memory, not the content.
CHUNK_ROWS = 100_000
GZIP_LEVEL = 6

# Money is handled in integer cents so the balance mechanics hold exactly.
# PaySim moves at most 10M per fraud transfer (and cash-out); non-fraud
# TRANSFERs may exceed it, as in the real file (the sample has one of 23M).
CAP_CENTS = 10_000_000 * 100
FLAG_MIN_CENTS = 200_000 * 100  # PaySim flags only transfers above 200k
# The full file flags 16 of 4,097 fraud TRANSFERs; about 60% of episodes end
# above 200k, so 0.0065 per eligible last transfer gives the same 0.4%.
FLAG_PROB = 0.0065

# Rows per type in the full file, and its frauds per type.
_FULL_TYPE_ROWS = {
    "CASH_IN": 1_399_284,
    "CASH_OUT": 2_237_500,
    "DEBIT": 41_432,
    "PAYMENT": 2_151_495,
    "TRANSFER": 532_909,
}
_FULL_TYPE_FRAUDS = {"CASH_OUT": 4_116, "TRANSFER": 4_097}

# Probabilities at which the log10 quantile tables below are given; values in
# between are interpolated linearly (a piecewise log-linear inverse CDF).
_QUANTILE_P = np.array([0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1])

# log10 of non-fraud amounts per type, from the real rows (see module doc).
_AMOUNT_LOG10 = {
    "CASH_IN": (2.32, 3.41, 4.15, 4.44, 4.82, 5.13, 5.35, 5.50, 5.58, 5.72, 6.01),
    "CASH_OUT": (1.96, 3.45, 4.15, 4.45, 4.83, 5.13, 5.35, 5.50, 5.58, 5.72, 5.91),
    "DEBIT": (1.17, 1.82, 2.48, 2.73, 3.16, 3.46, 3.72, 3.92, 3.98, 4.10, 4.29),
    "PAYMENT": (0.51, 2.06, 2.83, 3.10, 3.51, 3.83, 4.08, 4.26, 4.35, 4.55, 5.17),
    "TRANSFER": (2.67, 3.79, 4.43, 4.75, 5.17, 5.54, 5.83, 6.06, 6.20, 6.53, 7.36),
}
# log10 of the origin's old balance when it is not 0 (CASH_IN origins are rich:
# their table is bimodal), and how often it is 0 (a quirk of the simulator).
_ORIG_LOG10 = {
    "CASH_IN": (0.30, 2.20, 3.49, 4.03, 4.79, 6.25, 6.72, 6.92, 7.03, 7.29, 7.40),
    "CASH_OUT": (0.60, 2.00, 2.46, 3.00, 4.03, 4.48, 5.03, 5.45, 5.65, 5.97, 6.81),
    "DEBIT": (1.83, 2.15, 2.78, 3.20, 3.97, 4.48, 4.86, 5.30, 5.48, 5.75, 6.14),
    "PAYMENT": (0.00, 2.04, 2.59, 3.19, 4.05, 4.56, 5.07, 5.48, 5.70, 6.17, 6.81),
    "TRANSFER": (1.38, 2.05, 2.49, 3.00, 4.05, 4.51, 5.00, 5.46, 5.72, 6.58, 6.73),
}
_ORIG_ZERO_P = {
    "CASH_IN": 0.008,
    "CASH_OUT": 0.411,
    "DEBIT": 0.109,
    "PAYMENT": 0.235,
    "TRANSFER": 0.490,
}
# log10 of a customer destination's old balance when it is not 0; merchants
# (PAYMENT) always show 0/0, so their row is never used.
_DEST_LOG10 = {
    "CASH_IN": (1.40, 3.86, 4.62, 4.97, 5.41, 5.83, 6.24, 6.59, 6.82, 7.18, 7.51),
    "CASH_OUT": (1.49, 3.63, 4.41, 4.84, 5.33, 5.77, 6.18, 6.58, 6.81, 7.15, 7.51),
    "DEBIT": (2.96, 3.19, 4.01, 4.08, 4.42, 5.12, 5.90, 6.28, 6.52, 6.92, 7.42),
    "PAYMENT": (0.0,) * 11,
    "TRANSFER": (1.74, 2.98, 4.35, 4.75, 5.47, 6.01, 6.36, 6.72, 6.93, 7.21, 7.70),
}
# How often a destination shows 0/0 although money moved (stale), and how often
# it starts at 0 and receives the amount (new account).
_DEST_STALE_P = {
    "CASH_IN": 0.084,
    "CASH_OUT": 0.002,
    "DEBIT": 0.0,
    "PAYMENT": 1.0,
    "TRANSFER": 0.001,
}
_DEST_EMPTY_P = {
    "CASH_IN": 0.002,
    "CASH_OUT": 0.145,
    "DEBIT": 0.0,
    "PAYMENT": 0.0,
    "TRANSFER": 0.106,
}
# log10 of the balance a fraudster empties (the first transfer of each of the
# 154 fraud episodes in the real rows), and of the cash-out destination's.
_VICTIM_LOG10 = (2.26, 3.05, 4.36, 4.73, 5.03, 5.48, 6.06, 6.50, 6.80, 7.47, 7.76)
_FRAUD_DEST_LOG10 = (2.01, 3.63, 4.01, 4.39, 5.11, 5.61, 6.04, 6.41, 6.82, 7.04, 7.06)
_FRAUD_DEST_EMPTY_P = 0.31

# Relative volume per hour of day (hour = step % 24). The busiest steps of the
# full file are all at hours 18-19 and step 1 (hour 1) holds ~5% of step 19's
# rows; the night is almost silent. An approximation, not a fit.
_AM_WEIGHT = (0.10, 0.05, 0.01, 0.005, 0.005, 0.005, 0.01, 0.02, 0.05, 0.20, 0.30, 0.35)
_PM_WEIGHT = (0.40, 0.40, 0.40, 0.40, 0.45, 0.60, 0.95, 1.00, 0.55, 0.35, 0.25, 0.15)
_HOUR_WEIGHT = np.array(_AM_WEIGHT + _PM_WEIGHT)
FRONT_STEPS = 400
FRONT_SHARE = 0.91

_TYPE = {name: code for code, name in enumerate(TRANSACTION_TYPES)}
_NUM_STEPS = LAST_STEP - FIRST_STEP + 1
_ID_LIMIT = 2**31  # PaySim ids are Java ints: C0 .. C2147483647
# Customer destinations repeat (~570k distinct for 4.2M customer-bound rows);
# pool index i maps to id (A * i + offset) mod P, a bijection below the prime P.
_DEST_POOL_SHARE = 0.09
_POOL_PRIME = 2**31 - 1
_POOL_MULT = 1_103_515_245
_MONEY = pa.decimal128(18, 2)
_TYPE_NAMES = pa.array(TRANSACTION_TYPES, pa.string())
_HEADER = (",".join(COLUMNS) + "\n").encode()


class OutputExistsError(FlameError, FileExistsError):
    """The output file exists and the caller did not ask to replace it."""


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote."""

    rows: int
    frauds: int
    path: Path


@dataclass(frozen=True)
class _Plan:
    """Row counts per step (index 0 is step 1), fixed before any row is drawn."""

    legit: IntArray  # non-fraud rows
    pairs: IntArray  # fraud TRANSFER + CASH_OUT pairs
    pool_size: int
    pool_offset: int


@dataclass
class _Block:
    """Rows as parallel arrays; money in integer cents."""

    kind: npt.NDArray[np.int8]
    amount: IntArray
    old_orig: IntArray
    new_orig: IntArray
    old_dest: IntArray
    new_dest: IntArray
    orig_id: IntArray
    dest_id: IntArray
    merchant: BoolArray
    fraud: npt.NDArray[np.int8]
    flagged: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, index: IntArray | BoolArray) -> _Block:
        """The rows at `index` (positions or mask)."""
        return _Block(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(blocks: list[_Block]) -> _Block:
        """All rows of `blocks`, in order."""
        return _Block(
            **{
                f.name: np.concatenate([getattr(b, f.name) for b in blocks])
                for f in fields(_Block)
            }
        )


def _by_type(table: Mapping[str, float | tuple[float, ...]]) -> FloatArray:
    """A per-type constant table as an array indexed by type code."""
    return np.array([table[name] for name in TRANSACTION_TYPES], dtype=np.float64)


_LEGIT_MIX = _by_type(
    {t: n - _FULL_TYPE_FRAUDS.get(t, 0) for t, n in _FULL_TYPE_ROWS.items()}
)
_LEGIT_MIX /= _LEGIT_MIX.sum()
_AMOUNT_TABLE = _by_type(_AMOUNT_LOG10)
_ORIG_TABLE = _by_type(_ORIG_LOG10)
_ORIG_ZERO = _by_type(_ORIG_ZERO_P)
_DEST_TABLE = _by_type(_DEST_LOG10)
_DEST_STALE = _by_type(_DEST_STALE_P)
_DEST_EMPTY = _by_type(_DEST_EMPTY_P)
_VICTIM_TABLE = np.array([_VICTIM_LOG10])
_FRAUD_DEST_TABLE = np.array([_FRAUD_DEST_LOG10])


def step_weights() -> FloatArray:
    """Share of non-fraud rows per step (index 0 is step 1), summing to 1."""
    steps = np.arange(FIRST_STEP, LAST_STEP + 1)
    weights = _HOUR_WEIGHT[steps % 24]

    # Scale the tail so that the first FRONT_STEPS hold exactly FRONT_SHARE.
    front = steps <= FRONT_STEPS
    tail_scale = (1 - FRONT_SHARE) / FRONT_SHARE * weights[front].sum()
    weights[~front] *= tail_scale / weights[~front].sum()
    return weights / weights.sum()


def _sample_log10(
    rng: np.random.Generator, table: FloatArray, row: npt.NDArray[np.integer]
) -> FloatArray:
    """Draw one value per entry of `row` from the quantile table `table[row]`."""
    u = rng.random(len(row))
    width = len(_QUANTILE_P)
    i = np.minimum(np.searchsorted(_QUANTILE_P, u, side="right") - 1, width - 2)
    t = (u - _QUANTILE_P[i]) / (_QUANTILE_P[i + 1] - _QUANTILE_P[i])
    flat = row.astype(np.int64) * width + i
    lo, hi = table.ravel()[flat], table.ravel()[flat + 1]
    result: FloatArray = lo + t * (hi - lo)
    return result


def _cents(log10_value: FloatArray) -> IntArray:
    """Money in cents from log10 of the amount, at least one cent."""
    return np.maximum(np.rint(10.0**log10_value * 100), 1).astype(np.int64)


def _customer_ids(plan: _Plan, rng: np.random.Generator, n: int) -> IntArray:
    """Ids of `n` customer destinations, drawn from the reused pool."""
    index = rng.integers(0, plan.pool_size, n)
    return (_POOL_MULT * index + plan.pool_offset) % _POOL_PRIME


def _dest_balances(
    rng: np.random.Generator, kind: npt.NDArray[np.int8], amount: IntArray
) -> tuple[IntArray, IntArray]:
    """Old and new destination balances of non-fraud rows."""
    u = rng.random(len(kind))
    stale = u < _DEST_STALE[kind]
    empty = ~stale & (u < _DEST_STALE[kind] + _DEST_EMPTY[kind])
    old = _cents(_sample_log10(rng, _DEST_TABLE, kind))
    old[stale | empty] = 0

    # The destination pays out on CASH_IN (the agent) and receives otherwise.
    cash_in = kind == _TYPE["CASH_IN"]
    new = np.where(cash_in, np.maximum(old - amount, 0), old + amount)
    new[stale] = 0
    return old, new


def _legit_rows(plan: _Plan, rng: np.random.Generator, n: int) -> _Block:
    """`n` non-fraud rows of one step, in the full file's type mix."""
    kind = rng.choice(len(TRANSACTION_TYPES), size=n, p=_LEGIT_MIX).astype(np.int8)
    amount = _cents(_sample_log10(rng, _AMOUNT_TABLE, kind))

    # Origin: often empty (a simulator quirk); the balance never goes negative.
    empty = rng.random(n) < _ORIG_ZERO[kind]
    old_orig = np.where(empty, 0, _cents(_sample_log10(rng, _ORIG_TABLE, kind)))
    cash_in = kind == _TYPE["CASH_IN"]
    new_orig = np.where(cash_in, old_orig + amount, np.maximum(old_orig - amount, 0))

    # Destination: PAYMENT goes to a merchant (always 0/0), the rest to customers.
    old_dest, new_dest = _dest_balances(rng, kind, amount)
    merchant = kind == _TYPE["PAYMENT"]
    dest_id = np.where(
        merchant, rng.integers(0, _ID_LIMIT, n), _customer_ids(plan, rng, n)
    )
    zeros = np.zeros(n, dtype=np.int8)
    return _Block(
        kind=kind,
        amount=amount,
        old_orig=old_orig,
        new_orig=new_orig,
        old_dest=old_dest,
        new_dest=new_dest,
        orig_id=rng.integers(0, _ID_LIMIT, n),
        dest_id=dest_id,
        merchant=merchant,
        fraud=zeros,
        flagged=zeros.copy(),
    )


def _episode_balances(
    rng: np.random.Generator, pairs: int
) -> tuple[IntArray, IntArray]:
    """Balances to empty and their number of transfers, using exactly `pairs` >= 1.

    Each episode needs one transfer per started 10M; the last episode is cut
    to the pairs left.
    """
    balance = _cents(_sample_log10(rng, _VICTIM_TABLE, np.zeros(pairs, np.int64)))
    pieces = -(-balance // CAP_CENTS)

    # Keep whole episodes while they fit, then cut the one that overflows.
    used = np.cumsum(pieces)
    last = int(np.searchsorted(used, pairs))
    left = pairs - (int(used[last - 1]) if last > 0 else 0)
    pieces = np.append(pieces[:last], left)
    cut = min(int(balance[last]), left * CAP_CENTS)
    balance = np.append(balance[:last], cut)
    return balance, pieces


def _fraud_rows(
    plan: _Plan, rng: np.random.Generator, pairs: int
) -> tuple[_Block, IntArray]:
    """Fraud rows of one step and the episode number of each row.

    Each transfer of an episode moves min(10M, what is left) to a fresh mule,
    whose cash-out of the same amount follows it. A flagged (blocked) last
    transfer debits nothing, so its mule cashes out 0, as in the real file.
    """
    balance, pieces = _episode_balances(rng, pairs)
    episodes = len(balance)
    episode = np.repeat(np.arange(episodes), pieces)
    starts = np.cumsum(pieces) - pieces
    piece = np.arange(len(episode)) - starts[episode]

    # The transfers: the same victim, draining in 10M steps.
    old = balance[episode] - piece * CAP_CENTS
    amount = np.minimum(old, CAP_CENTS)
    last = piece == pieces[episode] - 1
    flagged = last & (amount > FLAG_MIN_CENTS) & (rng.random(len(old)) < FLAG_PROB)
    new = np.where(flagged, old, old - amount)
    mule = rng.integers(0, _ID_LIMIT, len(old))
    transfer = _fraud_block(
        kind=_TYPE["TRANSFER"],
        amount=amount,
        orig=(rng.integers(0, _ID_LIMIT, episodes)[episode], old, new),
        dest=(mule, np.zeros_like(old), np.zeros_like(old)),
        flagged=flagged,
    )

    # The cash-outs: the mule empties what it received.
    moved = np.where(flagged, 0, amount)
    got = _cents(_sample_log10(rng, _FRAUD_DEST_TABLE, np.zeros(len(old), np.int64)))
    got[rng.random(len(old)) < _FRAUD_DEST_EMPTY_P] = 0
    cash_out = _fraud_block(
        kind=_TYPE["CASH_OUT"],
        amount=moved,
        orig=(mule, moved, np.zeros_like(old)),
        dest=(_customer_ids(plan, rng, len(old)), got, got + moved),
        flagged=np.zeros(len(old), dtype=np.bool_),
    )

    # Interleave: each transfer is followed by its cash-out.
    both = _Block.concat([transfer, cash_out])
    rows = np.column_stack([np.arange(len(old)), len(old) + np.arange(len(old))])
    return both.take(rows.ravel()), np.concatenate([episode, episode])[rows.ravel()]


def _fraud_block(
    *,
    kind: int,
    amount: IntArray,
    orig: tuple[IntArray, IntArray, IntArray],
    dest: tuple[IntArray, IntArray, IntArray],
    flagged: BoolArray,
) -> _Block:
    """Fraud rows of one type from (id, old, new) of origin and destination."""
    n = len(amount)
    return _Block(
        kind=np.full(n, kind, dtype=np.int8),
        amount=amount,
        old_orig=orig[1],
        new_orig=orig[2],
        old_dest=dest[1],
        new_dest=dest[2],
        orig_id=orig[0],
        dest_id=dest[0],
        merchant=np.zeros(n, dtype=np.bool_),
        fraud=np.ones(n, dtype=np.int8),
        flagged=flagged.astype(np.int8),
    )


def _step_rows(plan: _Plan, seed: int, step: int) -> _Block:
    """All rows of one step: fraud episodes inserted at random places, whole."""
    rng = np.random.default_rng([seed, 1, step])
    index = step - FIRST_STEP
    legit = _legit_rows(plan, rng, int(plan.legit[index]))
    pairs = int(plan.pairs[index])
    if pairs == 0:
        return legit
    fraud, episode = _fraud_rows(plan, rng, pairs)

    # Sort by insertion point; ties keep the order, so an episode stays together.
    place = rng.random(int(episode.max()) + 1) * len(legit)
    key = np.concatenate([np.arange(len(legit)), place[episode]])
    order = np.argsort(key, kind="stable")
    return _Block.concat([legit, fraud]).take(order)


def fraud_pairs(rows: int, fraud_rate: float) -> int:
    """TRANSFER + CASH_OUT pairs in `rows` rows: rows * fraud_rate / 2, rounded.

    At least one pair when fraud_rate > 0 and there is room for one, so a
    small file still holds a fraud; never more frauds than rows.
    """
    pairs = round(rows * fraud_rate / 2)
    if fraud_rate > 0:
        pairs = max(pairs, 1)
    return min(pairs, rows // 2)


def _make_plan(rows: int, fraud_rate: float, seed: int) -> _Plan:
    """Row counts per step: volume front-loaded, frauds uniform over steps."""
    rng = np.random.default_rng([seed, 0])
    n_pairs = fraud_pairs(rows, fraud_rate)
    legit = rng.multinomial(rows - 2 * n_pairs, step_weights())
    pairs = rng.multinomial(n_pairs, np.full(_NUM_STEPS, 1 / _NUM_STEPS))
    return _Plan(
        legit=legit,
        pairs=pairs,
        pool_size=max(1, round(rows * _DEST_POOL_SHARE)),
        pool_offset=int(rng.integers(0, _POOL_PRIME)),
    )


def _chunks(plan: _Plan, seed: int) -> Iterator[tuple[IntArray, _Block]]:
    """(step per row, rows) of consecutive steps, about CHUNK_ROWS at a time."""
    blocks: list[_Block] = []
    steps: list[int] = []
    for step in range(FIRST_STEP, LAST_STEP + 1):
        blocks.append(_step_rows(plan, seed, step))
        steps.append(step)
        if sum(map(len, blocks)) >= CHUNK_ROWS or step == LAST_STEP:
            yield np.repeat(steps, [len(b) for b in blocks]), _Block.concat(blocks)
            blocks, steps = [], []


def _money(cents: IntArray) -> pa.Array:
    """Cents as a decimal(18, 2) column, so the CSV shows exactly 2 decimals."""
    # A decimal128 value is 16 little-endian bytes; amounts are >= 0, so the
    # high word is 0 and the low word is the number of cents.
    words = np.zeros((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    return pa.Array.from_buffers(_MONEY, len(cents), [None, pa.py_buffer(words)])


def _names(prefix: str | pa.Array, ids: IntArray) -> pa.Array:
    """Account names such as C1231006815 from a prefix and numeric ids."""
    digits = pc.cast(pa.array(ids), pa.string())
    return pc.binary_join_element_wise(prefix, digits, "")


def _to_table(steps: IntArray, rows: _Block) -> pa.Table:
    """The chunk as an Arrow table with PaySim's columns, in order."""
    columns = {
        "step": pa.array(steps.astype(np.int32)),
        "type": _TYPE_NAMES.take(pa.array(rows.kind)),
        "amount": _money(rows.amount),
        "nameOrig": _names("C", rows.orig_id),
        "oldbalanceOrg": _money(rows.old_orig),
        "newbalanceOrig": _money(rows.new_orig),
        "nameDest": _names(pc.if_else(pa.array(rows.merchant), "M", "C"), rows.dest_id),
        "oldbalanceDest": _money(rows.old_dest),
        "newbalanceDest": _money(rows.new_dest),
        "isFraud": pa.array(rows.fraud),
        "isFlaggedFraud": pa.array(rows.flagged),
    }
    return pa.table([columns[name] for name in COLUMNS], names=list(COLUMNS))


def _write_rows(sink: io.BufferedIOBase, plan: _Plan, seed: int, bar: tqdm) -> int:
    """Stream every chunk into `sink` as CSV lines; returns the frauds written."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    frauds = 0
    sink.write(_HEADER)
    for steps, rows in _chunks(plan, seed):
        buffer = pa.BufferOutputStream()
        pacsv.write_csv(_to_table(steps, rows), buffer, write_options=options)
        sink.write(buffer.getvalue())
        frauds += int(rows.fraud.sum())
        bar.update(len(rows))
    return frauds


def _write_file(path: Path, plan: _Plan, seed: int, *, gz: bool, progress: bool) -> int:
    """Write CSV, gzip-compressed if `gz`, to `path`; returns the frauds."""
    total = int(plan.legit.sum() + 2 * plan.pairs.sum())
    with (
        path.open("wb") as raw,
        tqdm(total=total, unit="row", unit_scale=True, disable=not progress) as bar,
    ):
        if not gz:
            return _write_rows(raw, plan, seed, bar)
        # mtime=0 and no file name in the header: same input, same bytes.
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL
        ) as sink:
            return _write_rows(sink, plan, seed, bar)


def _check_args(rows: int, seed: int, fraud_rate: float) -> None:
    """Raise ConfigError naming the rule, the value and the fix."""
    if not 1 <= rows <= FULL_ROWS:
        raise ConfigError(
            f"rows must be between 1 and {FULL_ROWS:,} (the size of the real "
            f"PaySim file), got {rows:,}; pass a --rows in that range"
        )
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}; pass a --seed >= 0")
    if not 0.0 <= fraud_rate <= 1.0:
        raise ConfigError(
            f"fraud_rate must be between 0 and 1, got {fraud_rate}; the real file "
            f"has {DEFAULT_FRAUD_RATE:.6f}"
        )


def _check_free(path: Path, force: bool) -> None:
    """Refuse to replace an existing file unless asked to."""
    if path.exists() and not force:
        raise OutputExistsError(
            f"{path} already exists; pass --force to replace it, "
            "or choose another --out"
        )


def generate(
    path: Path,
    *,
    rows: int,
    seed: int = DEFAULT_SEED,
    fraud_rate: float = DEFAULT_FRAUD_RATE,
    progress: bool = True,
    force: bool = False,
) -> SynthSummary:
    """Write `rows` PaySim-format rows to `path` (gzip if it ends in .gz).

    The file appears only when complete: rows go to a hidden temporary file in
    the same folder, renamed into place at the end and deleted on any error.
    """
    _check_args(rows, seed, fraud_rate)
    path = Path(path)
    _check_free(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = _make_plan(rows, fraud_rate, seed)
    logger.info("synth: writing %s rows (seed %s) to %s", f"{rows:,}", seed, path)

    # Write under a temporary name, then rename, so no half file is ever seen.
    started = time.perf_counter()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # The temporary name ends in .tmp: the format follows the final name.
        gz = path.suffix == ".gz"
        frauds = _write_file(temporary, plan, seed, gz=gz, progress=progress)
        _check_free(path, force)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info(
        "synth: wrote %s rows, %s frauds in %.1f s",
        f"{rows:,}",
        f"{frauds:,}",
        time.perf_counter() - started,
    )
    return SynthSummary(rows=rows, frauds=frauds, path=path)


def _parser() -> argparse.ArgumentParser:
    """The options of `flame synth`."""
    parser = argparse.ArgumentParser(
        prog="flame synth",
        description="Write the built-in PaySim-format data set (CSV, .gz = gzip).",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"rows to write, 1..{FULL_ROWS} (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="default: %(default)s"
    )
    parser.add_argument(
        "--fraud-rate",
        type=float,
        default=DEFAULT_FRAUD_RATE,
        help="share of fraud rows (default: the real file's 8213/6362620)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing --out file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`flame synth`: returns 0 on success, 1 when the file cannot be written."""
    args = _parser().parse_args(argv)
    try:
        summary = generate(
            args.out,
            rows=args.rows,
            seed=args.seed,
            fraud_rate=args.fraud_rate,
            force=args.force,
        )
    except (FlameError, OSError) as exc:
        print(f"flame synth: error: {exc}", file=sys.stderr)
        return 1
    print(f"{summary.path}: {summary.rows:,} rows, {summary.frauds:,} frauds")
    return 0
