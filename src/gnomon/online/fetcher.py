"""The fetcher (SPEC §5): batch state + streamed rows, finalized, then derivations.

The value at q of a TEMPORAL feature = the upload's suffix IR for ``window_start(q, W)`` (the
events before the batch end) merged with the streamed rows in ``[window_start(q, W), q)``. A
streamed row with ``ts`` before the batch end counts only if it arrived after the upload (a late
event); earlier ones were in the warehouse the upload read. A fetch the store cannot answer exactly
— no upload yet, q before the batch end, or an upload older than the horizon — gets a non-success
status saying why, never a silently wrong value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gnomon.aggregation import decode_ir
from gnomon.aggregation.base import clean_output
from gnomon.aggregation.codec import decode_value
from gnomon.compile.features import (
    SOURCE_COLUMN,
    OnlineFeature,
    keeps_rows,
    online_features,
    row_columns,
    stream_id,
)
from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan
from gnomon.definitions.windows import DAY_MS, window_start
from gnomon.errors import UnknownObjectError
from gnomon.online.derive import Deriver
from gnomon.online.fold import FoldState, can_fold, fold_key
from gnomon.online.records import (
    BatchState,
    StreamRow,
    UploadMeta,
    batch_key,
    decode_batch_rows,
    entity_key,
    meta_key,
    rows_key,
)
from gnomon.online.stores.base import OnlineStore

SUCCESS = "Success"
DEFAULT_HORIZON_MS = 2 * 86_400_000


@dataclass
class FetchResult:
    """One key's answer: ``status`` is "Success" or names the failure, with ``error`` saying why."""

    status: str
    entity_keys: dict[str, Any]
    features: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "entityKeys": self.entity_keys,
            "features": self.features,
        }
        if self.error is not None:
            body["error"] = self.error
        return body


class FetchError(Exception):
    """A key the store cannot answer exactly; becomes a non-success result, not an exception."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    """One GroupBy's share of a fetch between ``_prepare`` (keys to read) and ``_complete`` (values)."""

    group_by: GroupByPlan
    requests: list[dict[str, Any]]
    q: int
    prefix: str
    state: _GroupByState | None
    results: list[FetchResult | None]
    wanted: list[int]  # request positions read from the store, in value_keys order
    value_keys: list[bytes]
    row_keys: list[bytes]


@dataclass
class _GroupByState:
    plan: GroupByPlan
    meta: UploadMeta
    features: list[OnlineFeature]
    deriver: Deriver | None
    read_at: float
    several_sources: bool = False
    stored: list[int] = field(default_factory=list)  # per feature, its position in the batch records
    rows_prefix: bytes = b""
    folds: bool = False  # whether its stream rows may be folded into tiles (`gnomon.online.fold`)
    fold_prefix: bytes = b""
    feature_ids: list[str] = field(default_factory=list)


class Fetcher:
    """Answers fetches for the online GroupBys and Joins of a plan from one store."""

    def __init__(
        self, plan: Plan, store: OnlineStore, horizon_ms: int = DEFAULT_HORIZON_MS, meta_ttl_s: float = 0.5
    ) -> None:
        self.plan = plan
        self.store = store
        self.horizon_ms = horizon_ms
        self.meta_ttl_s = meta_ttl_s
        self._states: dict[str, _GroupByState] = {}
        self._join_derivers: dict[str, Deriver | None] = {}

    # -------------------------------------------------------------- public

    def fetch_group_by(
        self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None = None
    ) -> list[FetchResult]:
        return _run(self._group_by_steps(name, keys, at), self.store)

    def fetch_join(
        self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None = None
    ) -> list[FetchResult]:
        return _run(self._join_steps(name, keys, at), self.store)

    async def fetch_group_by_async(
        self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None = None
    ) -> list[FetchResult]:
        """`fetch_group_by` for an asyncio server: the store read does not block the event loop."""
        return await _run_async(self._group_by_steps(name, keys, at), self.store)

    async def fetch_join_async(
        self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None = None
    ) -> list[FetchResult]:
        """`fetch_join` for an asyncio server: the store read does not block the event loop."""
        return await _run_async(self._join_steps(name, keys, at), self.store)

    # -------------------------------------------------------------- the steps of a fetch
    # A fetch is a generator: it yields the (value keys, row keys) it needs from the store once,
    # receives what the store returned, and returns the results. The sync and async entry points
    # differ only in how they read the store.

    def _group_by_steps(self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None) -> _Steps:
        group_by = self.plan.group_bys.get(name)
        if group_by is None:
            raise UnknownObjectError("GroupBy", name, self.plan.group_bys)
        q = _now_ms() if at is None else int(at)
        requests = [dict(k) for k in keys]
        pending = self._prepare(group_by, requests, q, prefix="")
        try:
            values, rows = yield pending.value_keys, pending.row_keys
        except StoreUnavailable as error:
            return [FetchResult(error.status, r, error=str(error)) for r in requests]
        return self._complete(pending, values, rows)

    def _join_steps(self, name: str, keys: Sequence[Mapping[str, Any]], at: int | None) -> _Steps:
        join = self.plan.joins.get(name)
        if join is None:
            raise UnknownObjectError("Join", name, self.plan.joins)
        q = _now_ms() if at is None else int(at)
        requests = [dict(k) for k in keys]
        results = [FetchResult(SUCCESS, k) for k in requests]
        pendings = []
        for part in join.parts:
            group_by = self.plan.group_bys[part.group_by]
            mapped = [
                {key: request.get(column) for key, column in part.key_columns.items()} for request in requests
            ]
            pendings.append(self._prepare(group_by, mapped, q, part.column_prefix))
        # one store round trip for every part of the Join
        try:
            values, rows = yield (
                [k for p in pendings for k in p.value_keys],
                [k for p in pendings for k in p.row_keys],
            )
        except StoreUnavailable as error:
            return [FetchResult(error.status, r, error=str(error)) for r in requests]
        value_at = row_at = 0
        for pending in pendings:
            part_values = values[value_at : value_at + len(pending.value_keys)]
            part_rows = rows[row_at : row_at + len(pending.row_keys)]
            value_at += len(pending.value_keys)
            row_at += len(pending.row_keys)
            for result, part_result in zip(
                results, self._complete(pending, part_values, part_rows), strict=True
            ):
                if part_result.status != SUCCESS and result.status == SUCCESS:
                    result.status, result.error = part_result.status, part_result.error
                result.features.update(part_result.features)
        deriver = self._join_deriver(join)
        for result, request in zip(results, requests, strict=True):
            if result.status == SUCCESS and deriver is not None:
                try:
                    result.features = deriver.apply({**request, **result.features}, result.features)
                except Exception as error:  # noqa: BLE001 — a bad derivation is that key's failure
                    result.status, result.error = "DerivationFailed", str(error)
            if result.status != SUCCESS:
                result.features = {}
        return results

    # -------------------------------------------------------------- internals

    def _state(self, group_by: GroupByPlan) -> _GroupByState:
        state = self._states.get(group_by.name)
        now = time.monotonic()
        if state is not None and now - state.read_at < self.meta_ttl_s:
            return state
        raw = self.store.get([meta_key(group_by.name)])[0]
        if raw is None:
            raise FetchError(
                "NotUploaded",
                f"GroupBy {group_by.name!r} has no upload yet; run "
                f"`gnomon upload {group_by.name} --ds <day>`",
            )
        meta = UploadMeta.decode(raw)
        if state is not None and state.meta == meta:
            state.read_at = now
            return state
        stored = stored_features(group_by, meta)
        features = online_features(group_by, meta.input_types) if meta.accuracy == "temporal" else []
        deriver = (
            Deriver(group_by.derivations, group_by.keys, group_by.raw_columns)
            if group_by.derivations
            else None
        )
        state = _GroupByState(
            group_by,
            meta,
            features,
            deriver,
            now,
            SOURCE_COLUMN in row_columns(group_by),
            stored,
            rows_key(stream_id(group_by), b""),
            can_fold(group_by) and meta.accuracy == "temporal",
            fold_key(stream_id(group_by), b""),
            group_by.feature_ids(),
        )
        self._states[group_by.name] = state
        return state

    def _prepare(
        self, group_by: GroupByPlan, requests: list[dict[str, Any]], q: int, prefix: str
    ) -> _Pending:
        """What one GroupBy needs from the store for these keys (failures are settled here)."""
        pending = _Pending(group_by, requests, q, prefix, None, [None] * len(requests), [], [], [])
        try:
            state = pending.state = self._state(group_by)
        except FetchError as error:
            pending.results = [FetchResult(error.status, r, error=str(error)) for r in requests]
            return pending
        except Exception as error:  # noqa: BLE001 — the store's client failed: the store is unavailable
            unavailable = StoreUnavailable(error)
            pending.results = [FetchResult(unavailable.status, r, error=str(unavailable)) for r in requests]
            return pending
        meta = state.meta
        failure = None
        if q < meta.batch_end:
            failure = (
                "BeforeBatchEnd",
                f"GroupBy {group_by.name!r}: q={q} is before the batch end "
                f"{meta.batch_end} of its upload; values before a batch end come from the offline backfill",
            )
        elif q - meta.batch_end > self.horizon_ms:
            failure = (
                "StaleUpload",
                f"GroupBy {group_by.name!r}: its upload (batch end {meta.batch_end}) is older "
                f"than the horizon of {self.horizon_ms} ms at q={q}; run `gnomon upload` for a newer day",
            )
        elif meta.accuracy == "snapshot" and q >= meta.batch_end + DAY_MS:
            failure = (
                "StaleUpload",
                f"GroupBy {group_by.name!r} is SNAPSHOT: its value at q={q} is the one at the "
                f"midnight before q, newer than its upload (batch end {meta.batch_end}); run `gnomon upload` "
                "for the day before q",
            )
        elif (
            meta.accuracy == "temporal"
            and _entities(group_by)
            and not any(s.mutation_topic for s in group_by.sources)
            and (
                q >= meta.batch_end + DAY_MS
                or (q > meta.batch_end and any(s.mutation_table for s in group_by.sources))
            )
        ):
            # without the mutation topic the day's changes (offline: the mutation table) are unknown online
            failure = (
                "StaleUpload",
                f"GroupBy {group_by.name!r}: at q={q} its value reads a snapshot newer than the "
                f"upload (batch end {meta.batch_end}) and it has no mutation topic to follow the changes; run "
                "`gnomon upload` for the newer day, or add mutation_topic=... to its EntitySource",
            )
        if failure is not None:
            pending.results = [FetchResult(failure[0], r, error=failure[1]) for r in requests]
            return pending
        temporal = meta.accuracy == "temporal"
        for index, request in enumerate(requests):
            missing = [k for k in group_by.keys if request.get(k) is None]
            if missing:
                pending.results[index] = FetchResult(
                    "MissingKey", request, error=f"key {missing[0]!r} is missing or null"
                )
                continue
            key = entity_key([request[k] for k in group_by.keys])
            pending.wanted.append(index)
            pending.value_keys.append(batch_key(group_by.name, meta.batch_end, key))
            if state.folds:
                pending.value_keys.append(state.fold_prefix + key)
            if temporal:
                pending.row_keys.append(state.rows_prefix + key)
        return pending

    def _complete(
        self, pending: _Pending, values: list[bytes | None], rows: list[list[bytes]]
    ) -> list[FetchResult]:
        """Finalize the keys of one GroupBy from what the store returned for ``_prepare``'s keys."""
        state, group_by, results = pending.state, pending.group_by, pending.results
        if state is None or not pending.wanted:
            return results  # type: ignore[return-value]
        temporal = state.meta.accuracy == "temporal"
        per_key = 2 if state.folds else 1
        for position, index in enumerate(pending.wanted):
            request = pending.requests[index]
            try:
                if temporal:
                    folded = values[position * per_key + 1] if state.folds else None
                    raw = self._temporal_values(
                        state, values[position * per_key], rows[position], pending.q, folded
                    )
                else:
                    raw = self._snapshot_values(group_by, values[position])
                if state.deriver is not None:
                    raw = state.deriver.apply({**request, **raw}, raw)
                results[index] = FetchResult(
                    SUCCESS, request, {pending.prefix + k: v for k, v in raw.items()}
                )
            except FetchError as error:  # the store cannot answer this key exactly: say why
                results[index] = FetchResult(error.status, request, error=str(error))
            except Exception as error:  # noqa: BLE001 — one bad key must not fail the others
                results[index] = FetchResult("Error", request, error=f"{type(error).__name__}: {error}")
        return results  # type: ignore[return-value]

    def _snapshot_values(self, group_by: GroupByPlan, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {c: None for c in group_by.raw_columns}
        _, values = decode_value(raw)
        return dict(values)

    def _row_values(
        self, state: _GroupByState, raw: bytes | None, row_blobs: list[bytes], q: int
    ) -> dict[str, Any]:
        """Entity GroupBys and lookups: the state's rows at q (the upload's, then the streamed
        mutations before q replayed in order, or the streamed events), aggregated or looked up."""
        meta, group_by = state.meta, state.plan
        rows = decode_batch_rows(raw) if raw is not None else []
        streamed = [StreamRow.decode(blob) for blob in row_blobs]
        if _entities(group_by):
            rows = replay_mutations(rows, streamed, meta.batch_end, q)
        else:
            late = [r for r in streamed if r.ts >= meta.batch_end or r.arrived_at > meta.uploaded_at]
            rows = rows + [(r.ts, r.values) for r in sorted(late, key=lambda r: r.seq)]
        if not group_by.features:  # a lookup: the latest row before q, the first in source order on a tie
            latest = None
            for ts, values in rows:
                if ts < q and (latest is None or ts > latest[0]):
                    latest = (ts, values)
            columns = row_columns(group_by)
            return {
                c: None if latest is None else clean_output(latest[1][columns.index(c)])
                for c in group_by.value_columns
            }
        out = {}
        ordered = sorted(
            ((ts, seq, values) for seq, (ts, values) in enumerate(rows) if ts < q),
            key=lambda row: (row[0], row[1]),
        )
        for feature in state.features:
            start = window_start(q, feature.plan.window_ms)
            ir = None
            for ts, seq, values in ordered:
                if start is None or ts >= start:
                    ir = feature.accumulate(ir, values, ts, seq)
            out[feature.plan.name] = feature.aggregator.finalize(ir)
        return out

    def _temporal_values(
        self,
        state: _GroupByState,
        raw: bytes | None,
        row_blobs: list[bytes],
        q: int,
        folded: bytes | None = None,
    ) -> dict[str, Any]:
        if keeps_rows(state.plan):
            return self._row_values(state, raw, row_blobs, q)
        meta = state.meta
        batch = BatchState(raw) if raw is not None else None
        tiles: dict[tuple[str, int], tuple[bytes, int, int]] = {}
        if folded is not None:
            tiles = FoldState.decode(folded).counted_tiles(meta.batch_end)
            inside = [start for (_, start), (_, first, last) in tiles.items() if first < q <= last]
            if inside:
                raise FetchError(
                    "FoldedPast",
                    f"GroupBy {state.plan.name!r}: q={q} falls inside the tile starting at {inside[0]} that its "
                    "streamed rows were folded into, so the events before q in it cannot be told apart; ask at a "
                    "time outside it (a tile boundary, or now)",
                )
        rows = [StreamRow.decode(blob) for blob in row_blobs]
        rows = [r for r in rows if r.ts < q and (r.ts >= meta.batch_end or r.arrived_at > meta.uploaded_at)]
        if state.several_sources:  # a ts tie between sources goes in source order, then arrival (as offline)
            rows.sort(key=lambda r: (r.ts, r.values[-1], r.seq))
            rows = [StreamRow(r.ts, r.arrived_at, position, r.values) for position, r in enumerate(rows)]
        else:
            rows.sort(key=lambda r: (r.ts, r.seq))
        out = {}
        for index, feature in enumerate(state.features):
            plan = feature.plan
            start = window_start(q, plan.window_ms)
            ir = None
            if batch is not None:
                blob = batch.suffix(state.stored[index], start)
                if blob is not None:
                    ir = decode_ir(feature.aggregator, blob)
            if tiles:
                fid = state.feature_ids[index]
                for tile_start in sorted(s for f, s in tiles if f == fid):
                    blob, _, last = tiles[fid, tile_start]
                    if (start is None or tile_start >= start) and last < q:
                        ir = feature.aggregator.merge(ir, decode_ir(feature.aggregator, blob))
            for row in rows:
                if start is None or row.ts >= start:
                    ir = feature.accumulate(ir, row.values, row.ts, row.seq)
            out[plan.name] = feature.aggregator.finalize(ir)
        return out

    def _join_deriver(self, join: JoinPlan) -> Deriver | None:
        if join.name not in self._join_derivers:
            from gnomon.compile.validate import join_feature_columns

            columns = join_feature_columns(join, self.plan)
            self._join_derivers[join.name] = (
                Deriver(join.derivations, [], columns) if join.derivations else None
            )
        return self._join_derivers[join.name]


def stored_features(group_by: GroupByPlan, meta: UploadMeta) -> list[int]:
    """Where each feature of the current definition sits in the upload's records, or `FetchError`
    ``DefinitionChanged`` when the upload (or its stream rows) cannot answer it: a changed source,
    Query, key or accuracy, a feature the upload does not hold, or other stream-row columns.
    Renamed outputs, reordered or removed features and derivations keep serving."""
    fix = f"run `gnomon upload {group_by.name} --ds <day>` and restart its stream workers"
    if meta.fingerprint is None:
        raise FetchError(
            "DefinitionChanged",
            f"GroupBy {group_by.name!r}: its upload predates definition "
            f"fingerprints, so it cannot be checked against the definition; {fix}",
        )
    if meta.fingerprint != group_by.fingerprint:
        raise FetchError(
            "DefinitionChanged",
            f"GroupBy {group_by.name!r} changed since its upload "
            f"({_changes(json.loads(meta.semantics), group_by.semantics())}); {fix}",
        )
    ids = group_by.feature_ids()
    missing = [f.name for f, i in zip(group_by.features, ids, strict=True) if i not in meta.feature_ids]
    if missing:
        raise FetchError(
            "DefinitionChanged",
            f"GroupBy {group_by.name!r}: feature {missing[0]!r} is not in its "
            f"upload (a new or changed aggregation); {fix}",
        )
    if meta.accuracy == "temporal" and tuple(row_columns(group_by)) != meta.row_columns:
        raise FetchError(
            "DefinitionChanged",
            f"GroupBy {group_by.name!r}: its stream rows hold the columns "
            f"{list(meta.row_columns)}, the definition reads {row_columns(group_by)}; {fix}",
        )
    return [meta.feature_ids.index(i) for i in ids]


def _changes(before: Any, after: Any, path: str = "") -> str:
    """The first few differences between two JSON values, as ``path: old -> new``."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = [
            _changes(before.get(k), after.get(k), f"{path}.{k}" if path else k)
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        ]
        return "; ".join(found[:3])
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = [
            _changes(b, a, f"{path}[{i}]")
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            if b != a
        ]
        return "; ".join(found[:3])
    return f"{path}: {json.dumps(before)} -> {json.dumps(after)}"


def upload_mismatch(group_by: GroupByPlan, store: OnlineStore) -> str | None:
    """Why the latest upload of a GroupBy cannot serve its current definition (None: it can, or
    there is no upload)."""
    raw = store.get([meta_key(group_by.name)])[0]
    if raw is None:
        return None
    try:
        stored_features(group_by, UploadMeta.decode(raw))
    except FetchError as error:
        return str(error)
    return None


def _entities(group_by: GroupByPlan) -> bool:
    return any(s.kind == "entities" for s in group_by.sources)


def replay_mutations(
    rows: list[tuple[int, list[Any]]], streamed: list[StreamRow], batch_end: int, q: int
) -> list[tuple[int, list[Any]]]:
    """SPEC §4 online: the uploaded rows (the snapshot at the batch end), then every streamed
    mutation with ``batch_end <= mutation_ts < q`` in the order (mutation time, before-rows first,
    arrival): an insert appends its row, a delete removes the first row of the same identity, or
    nothing when there is none — exactly the offline versions' rule. Rows carry
    `MUTATION_COLUMNS` last; earlier mutations are in the snapshot already."""
    mutations = [r for r in streamed if r.values[-3] is not None and batch_end <= r.values[-3] < q]
    mutations.sort(key=lambda r: (r.values[-3], not r.values[-2], r.seq))
    state = list(rows)
    for mutation in mutations:
        if not mutation.values[-2]:
            state.append((mutation.ts, mutation.values))
            continue
        row_id = mutation.values[-1]
        for index, (_, values) in enumerate(state):
            if values[-1] == row_id:
                del state[index]
                break
    return state


_Reads = tuple[list[bytes], list[bytes]]
_Steps = Generator[_Reads, tuple[list[bytes | None], list[list[bytes]]], list[FetchResult]]


class StoreUnavailable(FetchError):
    """The store's client failed (a connection refused or lost, a timeout): every key of the fetch
    answers ``StoreUnavailable``, never a value read from part of the store."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            "StoreUnavailable", f"the online store did not answer: {type(cause).__name__}: {cause}"[:500]
        )


def _run(steps: _Steps, store: OnlineStore) -> list[FetchResult]:
    try:
        value_keys, row_keys = next(steps)
        try:
            read = store.get_with_rows(value_keys, row_keys)
        except Exception as error:  # noqa: BLE001 — whatever the client raised: the store is unavailable
            steps.throw(StoreUnavailable(error))
        else:
            steps.send(read)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("a fetch reads the store once")


async def _run_async(steps: _Steps, store: OnlineStore) -> list[FetchResult]:
    try:
        value_keys, row_keys = next(steps)
        try:
            read = await store.get_with_rows_async(value_keys, row_keys)
        except Exception as error:  # noqa: BLE001 — whatever the client raised: the store is unavailable
            steps.throw(StoreUnavailable(error))
        else:
            steps.send(read)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("a fetch reads the store once")


def _now_ms() -> int:
    return int(time.time() * 1000)
