"""Progress for long jobs: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("gnomon.progress")


def progress(items: Sequence[T] | Iterable[T], description: str) -> Iterator[T]:
    """Yield ``items``, showing how far along the job is."""
    items = list(items)
    if len(items) > 1 and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=description, unit="step", leave=False)
        return
    started = time.monotonic()
    for index, item in enumerate(items):
        yield item
        log.info("%s: %d/%d done (%.1f s)", description, index + 1, len(items), time.monotonic() - started)
