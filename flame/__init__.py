"""Flame: federated fraud detection on the PaySim transaction log."""

from __future__ import annotations

import logging

__version__ = "0.1.0"


def _configure_logging() -> None:
    """Give the `flame` logger one handler, so INFO progress reaches the user.

    Flower configures only its own `flwr` logger; without this our INFO lines
    would be dropped in every Flower process (ServerApp, ClientApp, CLI).
    """
    logger = logging.getLogger("flame")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s flame: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_configure_logging()
