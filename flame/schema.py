"""The PaySim transaction log: its columns, types and the facts a loader relies on.

Every module that reads or writes PaySim rows takes its names from here, so the
CSV reader, the synthetic generator, the Parquet partitions and the features
agree on one schema.
"""

from __future__ import annotations

# Column order of the Kaggle file `PS_20174392719_1491204439457_log.csv`.
COLUMNS: tuple[str, ...] = (
    "step",
    "type",
    "amount",
    "nameOrig",
    "oldbalanceOrg",
    "newbalanceOrig",
    "nameDest",
    "oldbalanceDest",
    "newbalanceDest",
    "isFraud",
    "isFlaggedFraud",
)

# The five transaction types, in the fixed order the one-hot features use.
TRANSACTION_TYPES: tuple[str, ...] = (
    "CASH_IN",
    "CASH_OUT",
    "DEBIT",
    "PAYMENT",
    "TRANSFER",
)

# Money columns: PaySim writes them as non-negative floats.
AMOUNT_COLUMNS: tuple[str, ...] = (
    "amount",
    "oldbalanceOrg",
    "newbalanceOrig",
    "oldbalanceDest",
    "newbalanceDest",
)
BALANCE_COLUMNS: tuple[str, ...] = AMOUNT_COLUMNS[1:]

LABEL = "isFraud"

# The simulated month: `step` is the hour, 1..743.
FIRST_STEP = 1
LAST_STEP = 743

# Arrow/pandas dtypes of a validated row, as stored in the Parquet partitions.
DTYPES: dict[str, str] = {
    "step": "int32",
    "type": "string",
    "amount": "float64",
    "nameOrig": "string",
    "oldbalanceOrg": "float64",
    "newbalanceOrig": "float64",
    "nameDest": "string",
    "oldbalanceDest": "float64",
    "newbalanceDest": "float64",
    "isFraud": "int8",
    "isFlaggedFraud": "int8",
}
