"""The online store interface: a small key-value contract every store implements.

Two kinds of records live in a store, both under opaque byte keys built by the caller:

- **values** (``get`` / ``put``): whole records, replaced on write (batch uploads, metadata);
- **rows** (``add_rows`` / ``get_rows``): per key, a set of rows identified by an event id. Adding a
  row whose id the key already holds changes nothing, so replaying a stream is harmless.

``add_rows`` also records the consumer's offsets in the same atomic step, so that a crash between
"state written" and "offset committed" cannot happen. With ``fence``, those offsets also decide
whether the write happens at all: a batch whose offsets were already recorded is skipped whole (a
Spark micro-batch replayed after a crash, `gnomon.streaming.spark`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence


class OnlineStore(ABC):
    """Multi-get, multi-put, and idempotent row sets committed atomically with consumer offsets."""

    url: str

    @abstractmethod
    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The value of each key, None where missing, in order."""

    @abstractmethod
    def put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Write values (replacing), all or nothing."""

    @abstractmethod
    def delete(self, keys: Sequence[bytes]) -> None:
        """Remove values and row sets of these keys."""

    @abstractmethod
    def add_rows(
        self,
        rows: Sequence[tuple[bytes, bytes, bytes]],
        consumer: str | None = None,
        offsets: Mapping[str, str] | None = None,
        *,
        fence: bool = False,
    ) -> bool:
        """Add (key, event_id, row) triples, ignoring ids a key already holds, and record ``offsets``
        (partition -> last processed offset) for ``consumer`` — all in one atomic step.

        With ``fence``, nothing at all is written unless every offset of ``offsets`` is beyond the
        one recorded for its partition (checked in the same atomic step); returns whether the rows
        and offsets were written (always True without ``fence``)."""

    @abstractmethod
    def get_rows(self, keys: Sequence[bytes]) -> list[list[bytes]]:
        """Every row each key holds (any order), in key order."""

    def get_with_rows(
        self, keys: Sequence[bytes], row_keys: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[list[bytes]]]:
        """``get(keys)`` and ``get_rows(row_keys)`` together; a networked store does it in one round trip."""
        return (self.get(keys) if keys else []), (self.get_rows(row_keys) if row_keys else [])

    async def get_with_rows_async(
        self, keys: Sequence[bytes], row_keys: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[list[bytes]]]:
        """`get_with_rows` for an asyncio server. A local store answers in microseconds and simply
        calls it; a networked one awaits the reply without blocking the event loop."""
        return self.get_with_rows(keys, row_keys)

    @abstractmethod
    def scan_rows(self, prefix: bytes) -> Iterator[tuple[bytes, list[tuple[bytes, bytes]]]]:
        """Every row set whose key starts with ``prefix``: (key, [(event id, row), ...])."""

    @abstractmethod
    def get_rows_with_ids(self, keys: Sequence[bytes]) -> list[list[tuple[bytes, bytes]]]:
        """Every (event id, row) each key holds, in key order."""

    @abstractmethod
    def apply_fold(
        self,
        row_key: bytes,
        fold_key: bytes,
        expected: bytes | None,
        fold: bytes,
        marks_key: bytes,
        marks: bytes,
        delete: Sequence[bytes],
    ) -> bool:
        """Atomically, unless the value ``fold_key`` is no longer ``expected`` (then False): write the
        fold record and its marks and delete these event ids of ``row_key`` (`gnomon.online.fold`).
        ``add_rows`` refuses a row of ``rows|<stream>|<key>`` that the marks under
        ``foldwm|<stream>|<key>`` say was folded."""

    @abstractmethod
    def delete_rows(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """Remove these (key, event id) rows (a missing one is ignored)."""

    @abstractmethod
    def offsets(self, consumer: str) -> dict[str, str]:
        """The offsets last recorded for ``consumer`` (empty when none)."""

    def close(self) -> None:
        """Release connections."""
