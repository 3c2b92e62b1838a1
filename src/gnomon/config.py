"""`gnomon.yaml`: the repo's configuration, typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gnomon.errors import ConfigError, did_you_mean

CONFIG_FILE = "gnomon.yaml"
_KNOWN_KEYS = ("project", "warehouse", "dialect", "offline", "online", "stream", "serving")


@dataclass(frozen=True)
class OfflineConfig:
    """Which engine runs backfills, and its resource settings."""

    engine: str = "duckdb"
    memory_limit: str | None = None  # DuckDB memory_limit, e.g. "4GB"; spills to temp beyond it
    threads: int | None = None
    shards: int = 1  # key-hash shards processed one after another, to bound memory
    stats: bool = True  # data-quality statistics after every backfill partition (gnomon.offline.stats)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingLimits:
    """What one HTTP request may carry (``serving: {limits: {...}}``); over a limit is a 413 or 400."""

    body_bytes: int = 8 * 1024 * 1024  # request body of a fetch or a push
    keys: int = 10_000  # key objects per fetch
    events: int = 10_000  # events per push
    depth: int = 32  # JSON nesting depth of a body (the array itself is depth 1)


@dataclass(frozen=True)
class ServingConfig:
    """``serving:`` in gnomon.yaml: the HTTP service's auth, metrics access, limits and fetch logging."""

    tokens_file: Path | None = None  # serving.auth.tokens_file, resolved against the repo; None: auth off
    metrics: str = "token"  # "token": /metrics needs a token (any scope) when auth is on; "open": it does not
    limits: ServingLimits = ServingLimits()
    log: dict[str, Any] = field(default_factory=dict)  # serving.log, as written (read by the fetch logger)

    @property
    def auth(self) -> bool:
        return self.tokens_file is not None


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def _load_online(online_raw: Any, path: Path) -> tuple[str, int, int, int]:
    """``online:``: a store URL, or ``{url, horizon, fold_every, fold_delay}``."""
    horizon_ms = 2 * 86_400_000
    fold_every, fold_delay_ms = 256, 300_000
    if isinstance(online_raw, dict):
        unknown = set(online_raw) - {"url", "horizon", "fold_every", "fold_delay"}
        if unknown:
            raise ConfigError(
                f"{path}: unknown online setting(s) {sorted(unknown)}; use url, horizon, fold_every, fold_delay"
            )
        fold_every = online_raw.get("fold_every", fold_every)
        if not isinstance(fold_every, int) or isinstance(fold_every, bool) or fold_every < 0:
            raise ConfigError(
                f"{path}: online.fold_every must be a count of rows (0: never fold), got {fold_every!r}"
            )
        if "fold_delay" in online_raw:
            fold_delay_ms = _duration_ms(online_raw["fold_delay"], "online.fold_delay", path)
        if "horizon" in online_raw:
            from gnomon.definitions.windows import Window
            from gnomon.errors import DefinitionError

            try:
                horizon_ms = Window.parse(str(online_raw["horizon"])).millis
            except DefinitionError:
                raise ConfigError(
                    f"{path}: online.horizon must look like 2d, 36h or 90m, got {online_raw['horizon']!r}"
                ) from None
        online_raw = online_raw.get("url", "sqlite:///online.db")
    return str(online_raw), horizon_ms, fold_every, fold_delay_ms


def _duration_ms(value: Any, setting: str, path: Path) -> int:
    """``0``, a number of seconds, or a window string (``90m``, ``1h``) as milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value * 1000)
    from gnomon.definitions.windows import Window
    from gnomon.errors import DefinitionError

    try:
        return Window.parse(str(value)).millis
    except DefinitionError:
        raise ConfigError(
            f"{path}: {setting} must be seconds or look like 90m or 1h, got {value!r}"
        ) from None


def _size(value: Any, setting: str, path: Path) -> int:
    """Bytes from an integer or a string like ``8MiB``, ``512KB``."""
    import re

    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if found is None or found.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(
                f"{path}: {setting} must be a number of bytes or like 8MiB or 512KB, got {value!r}"
            )
        number, unit = int(found.group(1)), found.group(2).lower()
    if number < 1:
        raise ConfigError(f"{path}: {setting} must be at least 1 byte, got {value!r}")
    return int(number) * _SIZE_UNITS[unit]


def _mapping(value: Any, setting: str, known: tuple[str, ...], example: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {setting} must be a mapping like {example}, got {type(value).__name__}")
    for key in value:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown setting {setting}.{key}."
                + did_you_mean(str(key), known)
                + f" Known: {', '.join(known)}."
            )
    return value


def _load_serving(raw: Any, root: Path, path: Path) -> ServingConfig:
    """``serving: {auth: {tokens_file}, metrics: token|open, limits: {...}, log: {...}}``."""
    serving = _mapping(
        raw, "serving", ("auth", "metrics", "limits", "log"), "{auth: {tokens_file: tokens.yaml}}", path
    )
    auth = _mapping(serving.get("auth"), "serving.auth", ("tokens_file",), "{tokens_file: tokens.yaml}", path)
    tokens_file: Path | None = None
    if serving.get("auth") is not None:
        if not isinstance(auth.get("tokens_file"), str) or not auth["tokens_file"].strip():
            raise ConfigError(
                f"{path}: serving.auth.tokens_file must name a file, e.g. tokens.yaml (relative to the repo)"
            )
        tokens_file = Path(auth["tokens_file"])
        tokens_file = tokens_file if tokens_file.is_absolute() else (root / tokens_file).resolve()
    metrics = serving.get("metrics", "token")
    if metrics not in ("token", "open"):
        raise ConfigError(
            f"{path}: serving.metrics must be 'token' (the default: a token of any scope) or 'open', "
            f"got {metrics!r}"
        )
    given = _mapping(
        serving.get("limits"),
        "serving.limits",
        ("body_bytes", "keys", "events", "depth"),
        "{keys: 10000}",
        path,
    )
    values: dict[str, int] = {}
    for name, value in given.items():
        if name == "body_bytes":
            values[name] = _size(value, "serving.limits.body_bytes", path)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: serving.limits.{name} must be a positive integer, got {value!r}")
        elif name == "depth" and value > 256:
            raise ConfigError(f"{path}: serving.limits.depth must be at most 256, got {value}")
        else:
            values[name] = value
    log = serving.get("log") or {}
    if not isinstance(log, dict):
        raise ConfigError(
            f"{path}: serving.log must be a mapping like {{sample: 0.05}}, got {type(log).__name__}"
        )
    return ServingConfig(
        tokens_file=tokens_file, metrics=metrics, limits=ServingLimits(**values), log=dict(log)
    )


@dataclass(frozen=True)
class Config:
    """A repo's settings (SPEC §6); every field has an embedded default."""

    root: Path
    project: str = "gnomon"
    warehouse: Path = Path("warehouse")
    dialect: str = "duckdb"
    offline: OfflineConfig = OfflineConfig()
    online: str = "sqlite:///online.db"
    online_horizon_ms: int = 2 * 86_400_000  # how long after its batch end an upload may be served
    online_fold_every: int = 256  # a worker folds a key's streamed rows into tiles once it wrote this many
    online_fold_delay_ms: int = 300_000  # rows published less than this long ago are never folded
    stream: str = "embedded"
    serving: ServingConfig = ServingConfig()

    @classmethod
    def load(cls, root: str | Path) -> Config:
        """Read ``<root>/gnomon.yaml``; a missing file means all defaults."""
        root = Path(root).resolve()
        path = root / CONFIG_FILE
        raw: dict[str, Any] = {}
        if path.exists():
            try:
                raw = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path}: not valid YAML: {error}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
        for key in raw:
            if key not in _KNOWN_KEYS:
                raise ConfigError(
                    f"{path}: unknown setting {key!r}."
                    + did_you_mean(key, _KNOWN_KEYS)
                    + f" Known settings: {', '.join(_KNOWN_KEYS)}."
                )
        dialect = raw.get("dialect", "duckdb")
        if dialect not in ("duckdb", "spark"):
            raise ConfigError(f"{path}: dialect must be 'duckdb' or 'spark', got {dialect!r}")
        offline_raw = raw.get("offline", {}) or {}
        if isinstance(offline_raw, str):
            offline_raw = {"engine": offline_raw}
        if not isinstance(offline_raw, dict):
            raise ConfigError(f"{path}: offline must be a mapping like {{engine: duckdb}}")
        known_offline = ("engine", "memory_limit", "threads", "shards", "stats")
        options = {k: v for k, v in offline_raw.items() if k not in known_offline}
        offline = OfflineConfig(
            engine=offline_raw.get("engine", "duckdb"),
            memory_limit=offline_raw.get("memory_limit"),
            threads=offline_raw.get("threads"),
            shards=int(offline_raw.get("shards", 1)),
            stats=offline_raw.get("stats", True),
            options=options,
        )
        if not isinstance(offline.stats, bool):
            raise ConfigError(
                f"{path}: offline.stats must be true or false (data-quality statistics after every "
                f"backfill partition), got {offline.stats!r}"
            )
        if offline.engine not in ("duckdb", "spark"):
            raise ConfigError(f"{path}: offline.engine must be 'duckdb' or 'spark', got {offline.engine!r}")
        if offline.shards < 1:
            raise ConfigError(f"{path}: offline.shards must be at least 1, got {offline.shards}")
        warehouse = Path(raw.get("warehouse", "./warehouse"))
        online_url, horizon_ms, fold_every, fold_delay_ms = _load_online(
            raw.get("online", "sqlite:///online.db"), path
        )
        return cls(
            root=root,
            project=str(raw.get("project", root.name)),
            warehouse=warehouse if warehouse.is_absolute() else (root / warehouse).resolve(),
            dialect=dialect,
            offline=offline,
            online=online_url,
            online_horizon_ms=horizon_ms,
            online_fold_every=fold_every,
            online_fold_delay_ms=fold_delay_ms,
            stream=str(raw.get("stream", "embedded")),
            serving=_load_serving(raw.get("serving"), root, path),
        )
