"""Online stores, opened from the ``online`` URL of ``gnomon.yaml``.

Accepted URLs:

- ``sqlite:///online.db`` — a SQLite file relative to the repo root (the default);
  ``sqlite:////abs/path.db`` (four slashes) — an absolute path;
- ``redis://host:port/db`` (``rediss://`` for TLS) — a Redis server.

Store modules are imported only when their URL is opened, so ``redis`` stays optional.
"""

from __future__ import annotations

from pathlib import Path

from gnomon.errors import ConfigError
from gnomon.online.stores.base import OnlineStore

__all__ = ["OnlineStore", "open_store"]

_ACCEPTED = "sqlite:///relative/path.db, sqlite:////absolute/path.db or redis://host:port/db"


def open_store(url: str, root: Path) -> OnlineStore:
    """The online store at ``url``; relative SQLite paths are relative to the repo ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> store = open_store("sqlite:///online.db", root)
    >>> store.path == (root / "online.db").absolute()
    True
    >>> store.close()
    >>> open_store("postgres://db", root)
    Traceback (most recent call last):
    ...
    gnomon.errors.ConfigError: online store URL 'postgres://db' is not supported; expected sqlite:///relative/path.db, sqlite:////absolute/path.db or redis://host:port/db
    """
    if url.startswith("sqlite:///"):
        from gnomon.online.stores.sqlite import SQLiteStore

        path = url[len("sqlite:///") :]
        if not path or path.endswith("/"):
            raise ConfigError(f"online store URL {url!r} names no database file; expected {_ACCEPTED}")
        return SQLiteStore(Path(root) / Path(path).expanduser())
    if url.startswith(("redis://", "rediss://")):
        from gnomon.online.stores.redis import RedisStore

        return RedisStore(url)
    raise ConfigError(f"online store URL {url!r} is not supported; expected {_ACCEPTED}")
