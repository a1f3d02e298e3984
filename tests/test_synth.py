"""Tests of flame.synth: the built-in PaySim-format data set."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flame import synth
from flame.errors import ConfigError
from flame.schema import AMOUNT_COLUMNS, COLUMNS, TRANSACTION_TYPES

PAYSIM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paysim"
SAMPLE = PAYSIM_DIR / "paysim_sample_12k.csv"
# The sample's own fraud rate (325 of 12,651 rows), so per-type rates compare.
SAMPLE_FRAUD_RATE = 325 / 12_651
DISTRIBUTION_ROWS = 200_000
QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)
FRAUD_TYPES = ("CASH_OUT", "TRANSFER")

# The sample is four contiguous blocks of the file (75% of it from step 19),
# not a uniform draw: its non-fraud CASH_OUT share is 31.3% where the full
# file's is 35.2%. The generator follows the full file, so against the sample
# a type share may be off by ~4 points; 5 still catches a swapped or missing type.
TYPE_SHARE_TOL_VS_SAMPLE = 0.05
# Against the full file's published mix the only error is sampling noise:
# at 200k rows one share's standard deviation is <= 0.11 points.
TYPE_SHARE_TOL_VS_FULL = 0.005
# The sample has 162 and 163 frauds per type, so its rates carry ~8% relative
# noise; 20% is 2.5 of those. (The CASH_OUT rate lands ~11% low because the
# full file has relatively more non-fraud CASH_OUTs than the sample.)
FRAUD_RATE_REL_TOL = 0.20
# The amount tables are fitted to these rows, so non-fraud quantiles of types
# with >= 1,000 sample rows must agree closely (0.08 decades = 20%).
AMOUNT_TOL_DECADES = 0.08
# DEBIT has 169 sample rows (its 10%/90% quantiles carry ~0.06 decades of
# noise) and its table also uses the 148 DEBITs of step 1, ~0.2 decades larger:
# the generator sits ~0.1 above the sample, near the full file's median (3,048).
SMALL_TYPE_TOL_DECADES = 0.20
# Fraud amounts come from 162/163 rows per type (~0.11 decades of noise at the
# 10%/90% quantiles) and are cut into 10M pieces: 0.3 is about 3 of those.
FRAUD_AMOUNT_TOL_DECADES = 0.30
# Money is written with 2 decimals; compare within half a cent.
CENT_TOL = 0.005


def _generate(
    path: Path,
    rows: int,
    *,
    seed: int = synth.DEFAULT_SEED,
    fraud_rate: float = synth.DEFAULT_FRAUD_RATE,
) -> Path:
    """Generate quietly into `path`; returns the path."""
    synth.generate(path, rows=rows, seed=seed, fraud_rate=fraud_rate, progress=False)
    return path


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The real fraud-enriched PaySim sample, or skip when it is not here."""
    if not SAMPLE.is_file():
        pytest.skip(f"real PaySim sample not found at {SAMPLE} (shared data absent)")
    return pd.read_csv(SAMPLE)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """200k synthetic rows at the sample's fraud rate."""
    path = tmp_path_factory.mktemp("synth") / "synth.csv.gz"
    _generate(path, DISTRIBUTION_ROWS, fraud_rate=SAMPLE_FRAUD_RATE)
    return pd.read_csv(path)


def _legit_mix(frame: pd.DataFrame) -> pd.Series:
    """Share of each type among the non-fraud rows."""
    legit = frame[frame["isFraud"] == 0]
    return (
        legit["type"]
        .value_counts(normalize=True)
        .reindex(TRANSACTION_TYPES, fill_value=0)
    )


def _log10_quantiles(amounts: pd.Series) -> np.ndarray:
    """QUANTILES of log10(amount); zero amounts count as one cent."""
    return np.quantile(np.log10(amounts.clip(lower=0.01)), QUANTILES)


def test_file_has_paysim_header_and_two_decimal_money(tmp_path: Path) -> None:
    path = _generate(tmp_path / "small.csv", 2_000)

    text = pd.read_csv(path, dtype=str)

    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert tuple(text.columns) == COLUMNS
    assert len(text) == 2_000
    for column in AMOUNT_COLUMNS:
        assert text[column].str.fullmatch(r"\d+\.\d\d").all(), column
    for column in ("nameOrig", "nameDest"):
        assert text[column].str.fullmatch(r"[CM]\d{1,10}").all(), column


def test_non_fraud_type_mix_matches_sample(
    sample: pd.DataFrame, generated: pd.DataFrame
) -> None:
    deviation = (_legit_mix(generated) - _legit_mix(sample)).abs()

    assert (deviation <= TYPE_SHARE_TOL_VS_SAMPLE).all(), deviation.to_dict()


def test_non_fraud_type_mix_matches_full_file(generated: pd.DataFrame) -> None:
    full = pd.Series(synth._LEGIT_MIX, index=TRANSACTION_TYPES)
    published = {"CASH_OUT": 0.352, "PAYMENT": 0.338, "CASH_IN": 0.220}

    deviation = (_legit_mix(generated) - full).abs()

    assert (deviation <= TYPE_SHARE_TOL_VS_FULL).all(), deviation.to_dict()
    for name, share in published.items():
        assert full[name] == pytest.approx(share, abs=0.001)


def test_frauds_only_in_transfer_and_cash_out_about_half_each(
    generated: pd.DataFrame,
) -> None:
    frauds = generated.loc[generated["isFraud"] == 1, "type"].value_counts()

    assert set(frauds.index) == set(FRAUD_TYPES)
    assert frauds.sum() == round(DISTRIBUTION_ROWS * SAMPLE_FRAUD_RATE)
    # Frauds come in TRANSFER + CASH_OUT pairs.
    assert frauds["TRANSFER"] == frauds["CASH_OUT"]


@pytest.mark.parametrize(
    ("rows", "fraud_rate", "frauds"),
    [
        (1_000, synth.DEFAULT_FRAUD_RATE, 2),  # 1.29 frauds: was 1 lone TRANSFER
        (1_000, 0.0035, 4),  # 3.5 rounds to an even 4
        (2, 1e-6, 2),  # a rate > 0 gives at least one pair
        (3, 1.0, 2),  # never more frauds than rows
        (1, 0.5, 0),  # no room for a pair
        (500, 0.0, 0),
    ],
)
def test_frauds_come_in_pairs(
    tmp_path: Path, rows: int, fraud_rate: float, frauds: int
) -> None:
    # Regression: an odd fraud count left a fraud TRANSFER with no CASH_OUT.
    path = _generate(tmp_path / "pairs.csv", rows, fraud_rate=fraud_rate)

    table = pd.read_csv(path)
    fraud = table["isFraud"] == 1
    transfers = table.index[fraud & (table["type"] == "TRANSFER")]
    cash_outs = table.index[fraud & (table["type"] == "CASH_OUT")]
    assert (len(table), fraud.sum()) == (rows, frauds)
    assert synth.fraud_pairs(rows, fraud_rate) == frauds // 2
    # Each fraud TRANSFER is followed by the mule's CASH_OUT.
    assert list(cash_outs) == [i + 1 for i in transfers]
    assert (
        table.loc[transfers, "nameDest"].to_numpy()
        == table.loc[cash_outs, "nameOrig"].to_numpy()
    ).all()


def test_fraud_rate_per_type_matches_sample(
    sample: pd.DataFrame, generated: pd.DataFrame
) -> None:
    ours = generated.groupby("type")["isFraud"].mean()
    real = sample.groupby("type")["isFraud"].mean()

    for name in FRAUD_TYPES:
        assert ours[name] / real[name] == pytest.approx(1, abs=FRAUD_RATE_REL_TOL)


@pytest.mark.parametrize("name", TRANSACTION_TYPES)
def test_non_fraud_amount_quantiles_match_sample(
    sample: pd.DataFrame, generated: pd.DataFrame, name: str
) -> None:
    ours = generated[(generated["isFraud"] == 0) & (generated["type"] == name)]
    real = sample[(sample["isFraud"] == 0) & (sample["type"] == name)]
    tolerance = AMOUNT_TOL_DECADES if len(real) >= 1_000 else SMALL_TYPE_TOL_DECADES

    deviation = _log10_quantiles(ours["amount"]) - _log10_quantiles(real["amount"])

    assert np.abs(deviation).max() <= tolerance, deviation.round(3)


@pytest.mark.parametrize("name", FRAUD_TYPES)
def test_fraud_amount_quantiles_match_sample(
    sample: pd.DataFrame, generated: pd.DataFrame, name: str
) -> None:
    ours = generated[(generated["isFraud"] == 1) & (generated["type"] == name)]
    real = sample[(sample["isFraud"] == 1) & (sample["type"] == name)]

    deviation = _log10_quantiles(ours["amount"]) - _log10_quantiles(real["amount"])

    assert np.abs(deviation).max() <= FRAUD_AMOUNT_TOL_DECADES, deviation.round(3)


def test_volume_is_front_loaded_with_a_daily_cycle_and_frauds_even(
    generated: pd.DataFrame,
) -> None:
    legit = generated[generated["isFraud"] == 0]
    frauds = generated[generated["isFraud"] == 1]
    night = legit["step"] % 24 < 7

    assert generated["step"].is_monotonic_increasing
    assert generated["step"].between(1, 743).all()
    assert (legit["step"] <= 400).mean() == pytest.approx(0.91, abs=0.005)
    assert night.mean() < 0.05  # 7 of 24 hours, under 5% of the rows
    # Frauds are uniform over the steps: 400 / 743 of them in steps 1-400.
    assert (frauds["step"] <= 400).mean() == pytest.approx(400 / 743, abs=0.04)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = _generate(tmp_path / "a.csv.gz", 3_000, seed=7).read_bytes()
    again = _generate(tmp_path / "b.csv.gz", 3_000, seed=7).read_bytes()
    other = _generate(tmp_path / "c.csv.gz", 3_000, seed=8).read_bytes()
    plain = _generate(tmp_path / "d.csv", 3_000, seed=7).read_bytes()

    assert first == again
    assert first != other
    assert gzip.decompress(first) == plain
    # The gzip header holds no time stamp (bytes 4-7) and no file name (flag 8).
    assert first[4:8] == bytes(4)
    assert not first[3] & 0x08


def test_chunk_size_does_not_change_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _generate(tmp_path / "a.csv", 3_000).read_bytes()
    monkeypatch.setattr(synth, "CHUNK_ROWS", 250)

    small_chunks = _generate(tmp_path / "b.csv", 3_000).read_bytes()

    assert small_chunks == default


def test_non_fraud_balances_follow_the_mechanics(generated: pd.DataFrame) -> None:
    rows = generated[generated["isFraud"] == 0]
    cash_in = rows["type"] == "CASH_IN"
    merchant = rows["type"] == "PAYMENT"
    old, amount = rows["oldbalanceOrg"], rows["amount"]
    old_dest, new_dest = rows["oldbalanceDest"], rows["newbalanceDest"]

    # Origin: CASH_IN adds, every other type takes, never below 0.
    origin = np.where(cash_in, old + amount, np.maximum(old - amount, 0))
    assert np.allclose(rows["newbalanceOrig"], origin, rtol=0, atol=CENT_TOL)

    # Destination: merchants show 0/0; customers move by the amount or stay 0/0.
    dest = np.where(cash_in, np.maximum(old_dest - amount, 0), old_dest + amount)
    moved = np.isclose(new_dest, dest, rtol=0, atol=CENT_TOL)
    stale = (old_dest == 0) & (new_dest == 0)
    assert (stale[merchant]).all()
    assert (moved | stale)[~merchant].all()
    assert rows.loc[merchant, "nameDest"].str.startswith("M").all()
    assert rows.loc[~merchant, "nameDest"].str.startswith("C").all()


def test_frauds_empty_the_origin_through_a_mule(generated: pd.DataFrame) -> None:
    rows = generated.reset_index(drop=True)
    transfers = rows[(rows["isFraud"] == 1) & (rows["type"] == "TRANSFER")]
    blocked = transfers["isFlaggedFraud"] == 1
    debited = np.where(blocked, 0, transfers["amount"])

    # Each transfer takes up to 10M; the victim's last one leaves 0.
    assert (transfers["amount"] <= 10_000_000).all()
    left = transfers["oldbalanceOrg"] - debited
    assert np.allclose(transfers["newbalanceOrig"], left, rtol=0, atol=CENT_TOL)
    last = transfers.groupby("nameOrig").tail(1)
    assert ((last["newbalanceOrig"] == 0) | (last["isFlaggedFraud"] == 1)).all()
    assert (transfers[["oldbalanceDest", "newbalanceDest"]] == 0).all().all()

    # Each cash-out follows its transfer: same step, the mule, the same money.
    cash_outs = rows[(rows["isFraud"] == 1) & (rows["type"] == "CASH_OUT")]
    before = rows.loc[cash_outs.index - 1]
    expected = np.where(before["isFlaggedFraud"] == 1, 0, before["amount"])
    assert (before["type"] == "TRANSFER").all()
    assert (before["step"].to_numpy() == cash_outs["step"].to_numpy()).all()
    assert (before["nameDest"].to_numpy() == cash_outs["nameOrig"].to_numpy()).all()
    assert np.allclose(cash_outs["amount"], expected, rtol=0, atol=CENT_TOL)
    assert np.allclose(cash_outs["oldbalanceOrg"], cash_outs["amount"], atol=CENT_TOL)
    assert (cash_outs["newbalanceOrig"] == 0).all()


def test_flag_is_rare_and_only_on_large_fraud_transfers(
    generated: pd.DataFrame,
) -> None:
    flagged = generated[generated["isFlaggedFraud"] == 1]
    fraud_transfers = (generated["isFraud"] == 1) & (generated["type"] == "TRANSFER")

    assert (flagged["isFraud"] == 1).all()
    assert (flagged["type"] == "TRANSFER").all()
    assert (flagged["amount"] > 200_000).all()
    # The full file flags 16 of 4,097 fraud transfers (0.4%).
    assert len(flagged) <= 0.02 * fraud_transfers.sum()


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "synth.csv"
    path.write_text("keep me\n")

    # Regression: the message showed the internal `--force (force=True)`.
    with pytest.raises(
        synth.OutputExistsError,
        match=r"synth\.csv already exists; pass --force to replace it, or choose "
        r"another --out$",
    ):
        synth.generate(path, rows=100, progress=False)

    assert path.read_text() == "keep me\n"
    synth.generate(path, rows=100, progress=False, force=True)
    assert path.read_text().startswith("step,type,amount")


def test_error_leaves_no_temporary_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> None:
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(synth, "_to_table", fail)
    old = tmp_path / "old.csv.gz"
    old.write_bytes(b"old")

    with pytest.raises(RuntimeError, match="simulated"):
        synth.generate(tmp_path / "new.csv.gz", rows=500, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        synth.generate(old, rows=500, progress=False, force=True)

    assert [p.name for p in tmp_path.iterdir()] == ["old.csv.gz"]
    assert old.read_bytes() == b"old"


@pytest.mark.parametrize(
    ("rows", "seed", "fraud_rate", "message"),
    [
        (0, 1, 0.1, r"rows must be between 1 and 6,362,620.*got 0"),
        (6_362_621, 1, 0.1, r"rows must be between 1 and 6,362,620"),
        (10, -1, 0.1, r"seed must be >= 0, got -1"),
        (10, 1, 1.5, r"fraud_rate must be between 0 and 1, got 1.5"),
    ],
)
def test_rejects_bad_arguments(
    tmp_path: Path, rows: int, seed: int, fraud_rate: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _generate(tmp_path / "x.csv", rows, seed=seed, fraud_rate=fraud_rate)

    assert list(tmp_path.iterdir()) == []


def test_main_writes_then_refuses_then_replaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli" / "synth.csv.gz"
    argv = ["--rows", "300", "--seed", "3", "--out", str(out)]

    assert synth.main(argv) == 0
    assert synth.main(argv) == 1
    err = capsys.readouterr().err
    assert "already exists; pass --force to replace it" in err
    assert "force=True" not in err
    assert synth.main([*argv, "--force", "--fraud-rate", "0.5"]) == 0
    assert pd.read_csv(out)["isFraud"].sum() == 150
