"""One log format for every process of a server: the API process and the spawned model workers, which
start with a fresh interpreter and would otherwise drop their log lines (a worker's load or failure
reasons included)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
