"""Typed access to Flower records, whose values are unions of scalars and lists."""

from __future__ import annotations

from flwr.app import ConfigRecord, MetricRecord


def scalar(record: MetricRecord | ConfigRecord, key: str) -> float:
    """A numeric scalar from a record, with an error naming the key otherwise."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"record value {key!r} should be a number, got {value!r}")
    return float(value)


def number_list(record: MetricRecord | ConfigRecord, key: str) -> list[float]:
    """A list of numbers from a record (moments, histograms, scaling stats)."""
    value = record[key]
    if not isinstance(value, list):
        raise TypeError(f"record value {key!r} should be a list, got {value!r}")
    return [float(v) for v in value]
