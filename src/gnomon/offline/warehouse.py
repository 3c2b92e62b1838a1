"""The Parquet warehouse: ``<warehouse>/ns/name/ds=YYYY-MM-DD/*.parquet`` (SPEC §6).

Partitions are written into a hidden staging folder and renamed into place, so a reader never sees
a half-written partition and a failed job leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gnomon.errors import WarehouseError, did_you_mean
from gnomon.timeline import DAY_MS, ds_range, ds_to_ms, entity_partitions, ms_to_ds, shift_ds

__all__ = [
    "DAY_MS",
    "Warehouse",
    "as_arrow",
    "ds_range",
    "ds_to_ms",
    "entity_partitions",
    "ms_to_ds",
    "shift_ds",
]


def as_arrow(data: Any) -> pa.Table:
    """Accept a pyarrow Table, a pandas or Polars DataFrame, or a dict of columns."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "to_arrow"):  # polars
        return data.to_arrow()
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, dict):
        return pa.table(data)
    raise TypeError(f"expected a pyarrow Table, pandas or Polars DataFrame, got {type(data).__name__}")


class Warehouse:
    """A folder of ``ds``-partitioned Parquet tables named ``namespace.table``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def table_path(self, table: str) -> Path:
        namespace, _, name = table.partition(".")
        if not namespace or not name or "." in name:
            raise WarehouseError(f"{table!r} is not a table name; write 'namespace.table'")
        return self.root / namespace / name

    def tables(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            f"{ns.name}.{t.name}"
            for ns in self.root.iterdir()
            if ns.is_dir()
            for t in ns.iterdir()
            if t.is_dir() and not t.name.startswith(".")
        )

    def exists(self, table: str) -> bool:
        return self.table_path(table).is_dir()

    def partitions(self, table: str) -> list[str]:
        """The ds values present, sorted; a partition counts only once complete (renamed into place)."""
        path = self.table_path(table)
        if not path.is_dir():
            return []
        return sorted(p.name[3:] for p in path.iterdir() if p.is_dir() and p.name.startswith("ds="))

    def require_table(self, table: str) -> None:
        if not self.exists(table):
            raise WarehouseError(
                f"table {table!r} does not exist in the warehouse {self.root}."
                + did_you_mean(table, self.tables())
                + " Fix: write its partitions under "
                f"{self.table_path(table)}/ds=YYYY-MM-DD/, or correct the table name."
            )

    def require_partitions(self, table: str, wanted: Iterable[str]) -> None:
        """Raise naming the table and the first missing ds."""
        self.require_table(table)
        have = set(self.partitions(table))
        missing = [ds for ds in wanted if ds not in have]
        if missing:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise WarehouseError(
                f"table {table!r} is missing partition ds={missing[0]} "
                f"({len(missing)} missing: {shown}). Fix: land those partitions, or backfill "
                "a range the table covers."
            )

    def partition_files(
        self, table: str, start_ds: str | None = None, end_ds: str | None = None
    ) -> list[str]:
        files = []
        for ds in self.partitions(table):
            if (start_ds is None or ds >= start_ds) and (end_ds is None or ds <= end_ds):
                files.extend(sorted(str(f) for f in (self.table_path(table) / f"ds={ds}").glob("*.parquet")))
        return files

    def latest_schema(self, table: str | None) -> pa.Schema | None:
        """The Arrow schema of the table's newest partition file (None: no table or no data yet)."""
        files = self.partition_files(table) if table else []
        return pq.read_schema(files[-1]) if files else None

    def read_table(self, table: str, start_ds: str | None = None, end_ds: str | None = None) -> pa.Table:
        """Read partitions [start_ds, end_ds] into one Arrow table with a string ``ds`` column."""
        self.require_table(table)
        pieces = []
        for ds in self.partitions(table):
            if (start_ds is None or ds >= start_ds) and (end_ds is None or ds <= end_ds):
                for file in sorted((self.table_path(table) / f"ds={ds}").glob("*.parquet")):
                    piece = pq.read_table(file)
                    if "ds" in piece.column_names:
                        piece = piece.drop(["ds"])
                    pieces.append(piece.append_column("ds", pa.array([ds] * piece.num_rows, pa.string())))
        if not pieces:
            return pa.table({"ds": pa.array([], pa.string())})
        return pa.concat_tables(pieces, promote_options="permissive")

    def write_partition(self, table: str, ds: str, data: Any) -> Path:
        """Atomically replace partition ``ds`` of ``table`` with ``data``."""
        arrow = as_arrow(data)
        if "ds" in arrow.column_names:
            arrow = arrow.drop(["ds"])
        with self.staging(table) as stage:
            pq.write_table(arrow, stage / "part-0.parquet")
            self.commit_partition(table, ds, stage)
        return self.table_path(table) / f"ds={ds}"

    def staging(self, table: str) -> _Staging:
        """A temporary folder inside the table's folder (same filesystem, so rename is atomic)."""
        return _Staging(self.table_path(table) / f".staging-{uuid.uuid4().hex}")

    def commit_partition(self, table: str, ds: str, staged: Path) -> None:
        """Move a fully written partition folder into place, replacing an older one."""
        final = self.table_path(table) / f"ds={ds}"
        if final.exists():
            trash = final.with_name(f".trash-{uuid.uuid4().hex}")
            os.replace(final, trash)
            os.replace(staged, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staged, final)


class _Staging:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
