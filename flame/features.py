"""Features of a PaySim row, and the scaling statistics the nodes agree on.

Every node computes the same features from the same row: fixed category order,
no state fitted on local rows. Scaling statistics and the class balance come
from a federated round of sufficient statistics (count, sum, sum of squares per
feature), so no node ever fits a scaler on its own rows and no row moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord

from flame.records import number_list, scalar
from flame.schema import LABEL, TRANSACTION_TYPES

FEATURE_NAMES: tuple[str, ...] = (
    *(f"type_{name}" for name in TRANSACTION_TYPES),
    "log_amount",
    "log_oldbalance_orig",
    "log_newbalance_orig",
    "log_oldbalance_dest",
    "log_newbalance_dest",
    "orig_balance_gap",
    "dest_balance_gap",
    "hour",
    "hour_sin",
    "hour_cos",
    "dest_is_merchant",
)
NUM_FEATURES = len(FEATURE_NAMES)
HOURS_PER_DAY = 24


def signed_log(values: np.ndarray) -> np.ndarray:
    """log1p of the magnitude with the sign kept: tames balances spanning 1e0-1e8."""
    return np.sign(values) * np.log1p(np.abs(values))


def compute_features(frame: pd.DataFrame) -> np.ndarray:
    """Features of PaySim rows as a float32 matrix in FEATURE_NAMES order.

    Raw account ids and `isFlaggedFraud` are never features: ids do not
    generalise across regions and the flag is a proxy of the label.
    """
    kinds = frame["type"].astype(str).to_numpy()
    amount = frame["amount"].to_numpy(dtype=np.float64)
    old_orig = frame["oldbalanceOrg"].to_numpy(dtype=np.float64)
    new_orig = frame["newbalanceOrig"].to_numpy(dtype=np.float64)
    old_dest = frame["oldbalanceDest"].to_numpy(dtype=np.float64)
    new_dest = frame["newbalanceDest"].to_numpy(dtype=np.float64)
    hour = frame["step"].to_numpy(dtype=np.int64) % HOURS_PER_DAY

    one_hot = np.stack([kinds == name for name in TRANSACTION_TYPES], axis=1)
    # CASH_IN adds money to the originator and takes it from the destination
    # (an agent); every other type moves money the other way.
    flow = np.where(kinds == "CASH_IN", 1.0, -1.0)

    # What the balances should have become versus what they became: the
    # simulator's fraud leaves these gaps, which carry most of the signal.
    orig_gap = old_orig + flow * amount - new_orig
    dest_gap = old_dest - flow * amount - new_dest
    angle = 2.0 * np.pi * hour / HOURS_PER_DAY
    merchant = frame["nameDest"].astype(str).str.startswith("M").to_numpy()

    columns = [
        *one_hot.T.astype(np.float64),
        np.log1p(amount),
        np.log1p(old_orig),
        np.log1p(new_orig),
        np.log1p(old_dest),
        np.log1p(new_dest),
        signed_log(orig_gap),
        signed_log(dest_gap),
        hour.astype(np.float64),
        np.sin(angle),
        np.cos(angle),
        merchant.astype(np.float64),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """The fraud label as float32 (what BCEWithLogitsLoss takes)."""
    return frame[LABEL].to_numpy(dtype=np.float32)


@dataclass(frozen=True)
class FeatureMoments:
    """Sufficient statistics of one node's training rows; they add up across nodes."""

    count: int
    positives: int
    sums: np.ndarray
    sums_sq: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray, labels: np.ndarray) -> FeatureMoments:
        values = features.astype(np.float64)
        return cls(
            count=int(values.shape[0]),
            positives=int(labels.sum()),
            sums=values.sum(axis=0),
            sums_sq=(values**2).sum(axis=0),
        )

    @classmethod
    def combine(cls, parts: Sequence[FeatureMoments]) -> FeatureMoments:
        return cls(
            count=sum(part.count for part in parts),
            positives=sum(part.positives for part in parts),
            sums=np.sum([part.sums for part in parts], axis=0),
            sums_sq=np.sum([part.sums_sq for part in parts], axis=0),
        )


@dataclass(frozen=True)
class FeatureStats:
    """The agreed scaling and class balance that travel with the global model."""

    mean: np.ndarray
    std: np.ndarray
    pos_weight: float

    @classmethod
    def from_moments(cls, moments: FeatureMoments) -> FeatureStats:
        if moments.count == 0:
            raise ValueError("no training rows on any node: cannot scale features")
        mean = moments.sums / moments.count
        variance = np.maximum(moments.sums_sq / moments.count - mean**2, 0.0)
        # A constant feature (e.g. a type absent everywhere) keeps unit scale
        # instead of dividing by zero.
        std = np.where(variance > 1e-12, np.sqrt(variance), 1.0)
        negatives = moments.count - moments.positives
        pos_weight = negatives / moments.positives if moments.positives else 1.0
        return cls(mean=mean, std=std, pos_weight=float(pos_weight))

    def standardize(self, features: np.ndarray) -> np.ndarray:
        scaled = (features.astype(np.float64) - self.mean) / self.std
        return scaled.astype(np.float32)

    def to_config(self) -> dict[str, Any]:
        """Plain lists for a Flower ConfigRecord."""
        return {
            "feature-mean": [float(v) for v in self.mean],
            "feature-std": [float(v) for v in self.std],
            "pos-weight": self.pos_weight,
        }

    @classmethod
    def from_config(cls, config: ConfigRecord) -> FeatureStats:
        return cls(
            mean=np.asarray(number_list(config, "feature-mean")),
            std=np.asarray(number_list(config, "feature-std")),
            pos_weight=scalar(config, "pos-weight"),
        )
