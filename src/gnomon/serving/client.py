"""`gnomon.Client`: fetch and push in-process on a repo, or over HTTP on a running `gnomon serve`."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gnomon.errors import GnomonError


class Client:
    """``Client("path/to/repo")`` works in-process; ``Client("http://host:port")`` talks to a server.

    Both return, per key, ``{"status", "entityKeys", "features"[, "error"]}`` as the HTTP API does.

    Over HTTP, ``token`` (default: the ``GNOMON_TOKEN`` environment variable) is sent as
    ``Authorization: Bearer <token>`` to a server with auth on; in-process there is no auth and it is
    not used. For ``https://``, ``verify`` is True (the system's CAs, or ``SSL_CERT_FILE``), a CA
    bundle file (e.g. a self-signed server certificate), or False (no verification: tests only).
    """

    def __init__(
        self, repo_or_url: str | Path = ".", token: str | None = None, verify: bool | str | Path = True
    ) -> None:
        target = str(repo_or_url)
        self._http: _HttpTransport | None = None
        self._local: _LocalTransport | None = None
        if target.startswith(("http://", "https://")):
            self._http = _HttpTransport(
                target, token if token is not None else os.environ.get("GNOMON_TOKEN"), verify
            )
        else:
            self._local = _LocalTransport(Path(target))

    def fetch_join(
        self, name: str, keys: Sequence[Mapping[str, Any]] | Mapping[str, Any], at: int | None = None
    ) -> list[dict[str, Any]]:
        """Feature vectors of a Join for each key object (a single object is accepted too)."""
        return self._fetch("join", name, _as_list(keys), at)

    def fetch_group_by(
        self, name: str, keys: Sequence[Mapping[str, Any]] | Mapping[str, Any], at: int | None = None
    ) -> list[dict[str, Any]]:
        """Values of one GroupBy for each key object."""
        return self._fetch("groupby", name, _as_list(keys), at)

    def push(self, topic: str, events: Sequence[Mapping[str, Any]], sync: bool = False) -> list[str]:
        """Publish events to a topic; with ``sync``, return once they are servable."""
        if self._http is not None:
            query = "?sync=true" if sync else ""
            return self._http.post(f"/v1/events/{urllib.parse.quote(topic)}{query}", list(events))["eventIds"]  # type: ignore[no-any-return]
        return self._local.push(topic, events, sync)  # type: ignore[union-attr]

    def close(self) -> None:
        """Close the store (in-process) or the keep-alive connections (HTTP)."""
        if self._local is not None:
            self._local.close()
        if self._http is not None:
            self._http.close()

    def _fetch(
        self, kind: str, name: str, keys: list[dict[str, Any]], at: int | None
    ) -> list[dict[str, Any]]:
        if self._http is not None:
            query = f"?at={int(at)}" if at is not None else ""
            return self._http.post(f"/v1/features/{kind}/{urllib.parse.quote(name)}{query}", keys)["results"]  # type: ignore[no-any-return]
        return self._local.fetch(kind, name, keys, at)  # type: ignore[union-attr]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_list(keys: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(keys, Mapping):
        return [dict(keys)]
    if not isinstance(keys, (list, tuple)):
        raise TypeError(f"keys must be a key object or a list of them, got {type(keys).__name__}")
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise TypeError(
                f'keys[{index}] must be an object like {{"user": "bob"}}, got {type(key).__name__}'
            )
    return [dict(k) for k in keys]


class _LocalTransport:
    def __init__(self, repo: Path) -> None:
        from gnomon.project import Project

        self.project = Project(repo)
        self.store = self.project.store()
        self.fetcher = self.project.fetcher(self.store)
        self._broker: Any = None

    def fetch(self, kind: str, name: str, keys: list[dict[str, Any]], at: int | None) -> list[dict[str, Any]]:
        fetch = self.fetcher.fetch_join if kind == "join" else self.fetcher.fetch_group_by
        return [result.to_json() for result in fetch(name, keys, at)]

    def push(self, topic: str, events: Sequence[Mapping[str, Any]], sync: bool) -> list[str]:
        from gnomon.serving.ingest import publish_and_apply

        if self._broker is None:
            self._broker = self.project.broker()
        return publish_and_apply(
            self.project.plan, self._broker, self.store, topic, events, sync, self.project.source_schema
        )

    def close(self) -> None:
        self.store.close()
        if self._broker is not None:
            self._broker.close()


class _HttpTransport:
    """One keep-alive connection per thread."""

    def __init__(self, url: str, token: str | None = None, verify: bool | str | Path = True) -> None:
        parsed = urllib.parse.urlparse(url)
        self.tls = parsed.scheme == "https"
        self.host, self.port = parsed.hostname or "localhost", parsed.port or (443 if self.tls else 80)
        self.headers = {"Content-Type": "application/json"}
        token = token.strip() if token else None
        if token:
            if any(c in token for c in "\r\n\0 "):
                raise GnomonError("token: a token is one word (no spaces or line breaks); check GNOMON_TOKEN")
            self.headers["Authorization"] = f"Bearer {token}"
        self.context: ssl.SSLContext | None = None
        if self.tls:
            if verify is False:
                self.context = ssl.create_default_context()
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
            else:
                cafile = None if verify is True else str(verify)
                self.context = ssl.create_default_context(cafile=cafile)
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []  # of every thread, for close()
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        connection = (
            http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.context)
            if self.context is not None
            else http.client.HTTPConnection(self.host, self.port, timeout=30)
        )
        with self._lock:
            self._connections = [c for c in self._connections if c.sock is not None] + [connection]
        return connection

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def post(self, path: str, body: Any) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = self._connect()
            try:
                connection.request("POST", path, data, self.headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        answer = json.loads(payload) if payload else {}
        if response.status >= 400:
            error = answer.get("error", answer) if isinstance(answer, dict) else answer
            fix = answer.get("fix") if isinstance(answer, dict) else None
            raise GnomonError(
                f"HTTP {response.status} from {path}: {error}" + (f"; fix: {fix}" if fix else "")
            )
        return answer
