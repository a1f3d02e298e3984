"""Features are identical on every node; agreed statistics equal pooled ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord

from flame.features import (
    FEATURE_NAMES,
    FeatureMoments,
    FeatureStats,
    compute_features,
    labels_of,
)
from tests.conftest import require_paysim


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(require_paysim())


def test_a_row_gets_the_same_features_whatever_node_holds_it(
    sample: pd.DataFrame,
) -> None:
    # Two "nodes" holding different rows, both holding rows 0-99.
    node_a = sample.iloc[:3000]
    node_b = pd.concat([sample.iloc[:100], sample.iloc[9000:]]).sample(
        frac=1.0, random_state=1
    )

    features_a = pd.DataFrame(compute_features(node_a), index=node_a.index)
    features_b = pd.DataFrame(compute_features(node_b), index=node_b.index)

    shared = sample.index[:100]
    np.testing.assert_array_equal(features_a.loc[shared], features_b.loc[shared])


def test_ids_and_flag_are_not_features(sample: pd.DataFrame) -> None:
    rows = sample.iloc[:500].copy()
    changed = rows.copy()
    changed["nameOrig"] = "C0"
    changed["isFlaggedFraud"] = 1 - changed["isFlaggedFraud"]

    np.testing.assert_array_equal(compute_features(rows), compute_features(changed))
    assert not any("name" in f or "Flagged" in f for f in FEATURE_NAMES)


def test_balance_gap_by_hand() -> None:
    row = pd.DataFrame(
        [
            {
                "step": 25,
                "type": "TRANSFER",
                "amount": 100.0,
                "nameOrig": "C1",
                "oldbalanceOrg": 100.0,
                "newbalanceOrig": 0.0,
                "nameDest": "M2",
                "oldbalanceDest": 0.0,
                "newbalanceDest": 0.0,
                "isFraud": 1,
                "isFlaggedFraud": 0,
            }
        ]
    )
    values = dict(zip(FEATURE_NAMES, compute_features(row)[0], strict=True))

    assert values["type_TRANSFER"] == 1 and values["type_CASH_IN"] == 0
    assert values["orig_balance_gap"] == 0  # the origin lost exactly the amount
    # The destination should have gained 100 but shows 0: gap of +100.
    assert values["dest_balance_gap"] == pytest.approx(np.log1p(100.0))
    assert values["hour"] == 1 and values["dest_is_merchant"] == 1


def test_agreed_statistics_equal_the_pooled_training_rows(
    sample: pd.DataFrame,
) -> None:
    parts = np.array_split(np.arange(len(sample)), 3)
    moments = [
        FeatureMoments.of(compute_features(sample.iloc[p]), labels_of(sample.iloc[p]))
        for p in parts
    ]

    agreed = FeatureStats.from_moments(FeatureMoments.combine(moments))

    pooled = compute_features(sample).astype(np.float64)
    std = pooled.std(axis=0)
    np.testing.assert_allclose(agreed.mean, pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(agreed.std, np.where(std > 1e-6, std, 1.0), rtol=1e-6)
    frauds = int(sample["isFraud"].sum())
    assert agreed.pos_weight == pytest.approx((len(sample) - frauds) / frauds)


def test_statistics_round_trip_through_a_config_record() -> None:
    stats = FeatureStats(
        mean=np.array([1.5, -2.0]), std=np.array([0.5, 3.0]), pos_weight=38.0
    )

    back = FeatureStats.from_config(ConfigRecord(stats.to_config()))

    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.std, stats.std)
    assert back.pos_weight == 38.0


def test_no_positive_rows_anywhere_gives_unit_weight() -> None:
    features = np.ones((4, 2), dtype=np.float32)
    stats = FeatureStats.from_moments(FeatureMoments.of(features, np.zeros(4)))
    assert stats.pos_weight == 1.0
    np.testing.assert_array_equal(stats.std, [1.0, 1.0])  # constant columns
