"""`gnomon.Client`: fetch and push in-process on a repo, or over HTTP on a running `gnomon serve`."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gnomon.errors import GnomonError


class Client:
    """``Client("path/to/repo")`` works in-process; ``Client("http://host:port")`` talks to a server.

    Both return, per key, ``{"status", "entityKeys", "features"[, "error"]}`` as the HTTP API does.
    """

    def __init__(self, repo_or_url: str | Path = ".") -> None:
        target = str(repo_or_url)
        self._http: _HttpTransport | None = None
        self._local: _LocalTransport | None = None
        if target.startswith(("http://", "https://")):
            self._http = _HttpTransport(target)
        else:
            self._local = _LocalTransport(Path(target))

    def fetch_join(self, name: str, keys: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                   at: int | None = None) -> list[dict[str, Any]]:
        """Feature vectors of a Join for each key object (a single object is accepted too)."""
        return self._fetch("join", name, _as_list(keys), at)

    def fetch_group_by(self, name: str, keys: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                       at: int | None = None) -> list[dict[str, Any]]:
        """Values of one GroupBy for each key object."""
        return self._fetch("groupby", name, _as_list(keys), at)

    def push(self, topic: str, events: Sequence[Mapping[str, Any]], sync: bool = False) -> list[str]:
        """Publish events to a topic; with ``sync``, return once they are servable."""
        if self._http is not None:
            query = "?sync=true" if sync else ""
            return self._http.post(f"/v1/events/{urllib.parse.quote(topic)}{query}", list(events))["eventIds"]  # type: ignore[no-any-return]
        return self._local.push(topic, events, sync)  # type: ignore[union-attr]

    def close(self) -> None:
        if self._local is not None:
            self._local.close()

    def _fetch(self, kind: str, name: str, keys: list[dict[str, Any]], at: int | None) -> list[dict[str, Any]]:
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
            raise TypeError(f"keys[{index}] must be an object like {{\"user\": \"bob\"}}, got {type(key).__name__}")
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
        return publish_and_apply(self.project.plan, self._broker, self.store, topic, events, sync,
                                 self.project.source_schema)

    def close(self) -> None:
        self.store.close()
        if self._broker is not None:
            self._broker.close()


class _HttpTransport:
    """One keep-alive connection per thread."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname or "localhost", parsed.port or 80
        self._local = threading.local()

    def post(self, path: str, body: Any) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                connection.request("POST", path, data, {"Content-Type": "application/json"})
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
            raise GnomonError(f"HTTP {response.status} from {path}: {answer.get('error', answer)}")
        return answer
