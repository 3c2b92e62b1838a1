"""`gnomon.yaml`: the repo's configuration, typed and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gnomon.errors import ConfigError, did_you_mean

CONFIG_FILE = "gnomon.yaml"
_KNOWN_KEYS = ("project", "warehouse", "dialect", "offline", "online", "stream")


@dataclass(frozen=True)
class OfflineConfig:
    """Which engine runs backfills, and its resource settings."""

    engine: str = "duckdb"
    memory_limit: str | None = None  # DuckDB memory_limit, e.g. "4GB"; spills to temp beyond it
    threads: int | None = None
    shards: int = 1  # key-hash shards processed one after another, to bound memory
    options: dict[str, Any] = field(default_factory=dict)


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
    stream: str = "embedded"

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
                raise ConfigError(f"{path}: unknown setting {key!r}." + did_you_mean(key, _KNOWN_KEYS)
                                  + f" Known settings: {', '.join(_KNOWN_KEYS)}.")
        dialect = raw.get("dialect", "duckdb")
        if dialect not in ("duckdb", "spark"):
            raise ConfigError(f"{path}: dialect must be 'duckdb' or 'spark', got {dialect!r}")
        offline_raw = raw.get("offline", {}) or {}
        if isinstance(offline_raw, str):
            offline_raw = {"engine": offline_raw}
        if not isinstance(offline_raw, dict):
            raise ConfigError(f"{path}: offline must be a mapping like {{engine: duckdb}}")
        known_offline = ("engine", "memory_limit", "threads", "shards")
        options = {k: v for k, v in offline_raw.items() if k not in known_offline}
        offline = OfflineConfig(
            engine=offline_raw.get("engine", "duckdb"),
            memory_limit=offline_raw.get("memory_limit"),
            threads=offline_raw.get("threads"),
            shards=int(offline_raw.get("shards", 1)),
            options=options,
        )
        if offline.engine not in ("duckdb", "spark"):
            raise ConfigError(f"{path}: offline.engine must be 'duckdb' or 'spark', got {offline.engine!r}")
        if offline.shards < 1:
            raise ConfigError(f"{path}: offline.shards must be at least 1, got {offline.shards}")
        warehouse = Path(raw.get("warehouse", "./warehouse"))
        online_raw = raw.get("online", "sqlite:///online.db")
        horizon_ms = 2 * 86_400_000
        if isinstance(online_raw, dict):
            unknown = set(online_raw) - {"url", "horizon"}
            if unknown:
                raise ConfigError(f"{path}: unknown online setting(s) {sorted(unknown)}; use url and horizon")
            if "horizon" in online_raw:
                from gnomon.definitions.windows import Window
                from gnomon.errors import DefinitionError

                try:
                    horizon_ms = Window.parse(str(online_raw["horizon"])).millis
                except DefinitionError:
                    raise ConfigError(f"{path}: online.horizon must look like 2d, 36h or 90m, "
                                      f"got {online_raw['horizon']!r}") from None
            online_raw = online_raw.get("url", "sqlite:///online.db")
        return cls(
            root=root,
            project=str(raw.get("project", root.name)),
            warehouse=warehouse if warehouse.is_absolute() else (root / warehouse).resolve(),
            dialect=dialect,
            offline=offline,
            online=str(online_raw),
            online_horizon_ms=horizon_ms,
            stream=str(raw.get("stream", "embedded")),
        )
