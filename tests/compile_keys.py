"""Which compiled programs a piece of code looked up in the persistent compilation cache, from JAX's own log: for the
tests that a resumed run compiles the same programs as the fresh one (a cache hit, not a second compile)."""

from __future__ import annotations

import logging
import re

LOGGER = "jax._src.compiler"  # log it at DEBUG (pytest's caplog.at_level(logging.DEBUG, logger=LOGGER))
LEVEL = logging.DEBUG


def compiled_keys(records: list[logging.LogRecord]) -> dict[str, set[str]]:
    """Program name (`jit_train_chunk`) -> the persistent-cache keys it was looked up by, hit or miss."""
    keys: dict[str, set[str]] = {}
    for record in records:
        found = re.search(r"cache (?:hit|miss) for '(\w+)' with key '([^']+)'", record.getMessage(), re.IGNORECASE)
        if found:
            keys.setdefault(found[1], set()).add(found[2])
    return keys
