"""Bearer-token authentication and scopes for the HTTP service (SPEC §5, "Auth").

Off unless ``gnomon.yaml`` has ``serving: {auth: {tokens_file: tokens.yaml}}``. The tokens file holds,
per token, its name, scopes and creation time and the SHA-256 of the token — never the token itself,
which ``gnomon token create`` prints once. Scopes: ``fetch`` (the two fetch routes) and ``push``
(``POST /v1/events/{topic}``); ``/health``, the OpenAPI docs and the web UI's static pages (``/ui``,
``/ui/static/*``) are open; ``/metrics``, the UI's JSON API and any other route need a token of any
scope (``serving: {metrics: open}`` opens ``/metrics``).

The check is an ASGI middleware in front of everything, the fetch fast path included. Per request it
reads the ``Authorization`` header and looks it up in a dict of the header values seen since the last
reload; a header not seen yet is hashed once (SHA-256) and its digest looked up among the stored
digests, confirmed with ``hmac.compare_digest``. Since the lookups are keyed by the (secret) token's
digest or by Python's randomized string hash, their timing tells nothing about a stored token.

The tokens file is reloaded when it changes (its mtime, size and inode, checked at most once a
second), so ``gnomon token create`` / ``revoke`` take effect on a running server within a second.
Nothing here logs a header or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from gnomon.errors import ConfigError, GnomonError, did_you_mean

log = logging.getLogger(__name__)

SCOPES = ("fetch", "push")
TOKEN_PREFIX = "gnm_"  # recognisable by secret scanners; 32 random bytes follow
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
RELOAD_INTERVAL = 1.0  # seconds between two checks of the tokens file
_CACHE_SIZE = 4096  # header values remembered between reloads (cleared when full)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

CREATE_HINT = "gnomon token create NAME --scopes {scope}"
_ANY = "any"  # what a route needing a token of any scope asks for


def new_token() -> str:
    """A fresh token: the prefix and 32 random bytes from ``secrets``, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def parse_scopes(text: str) -> tuple[str, ...]:
    """``fetch``, ``push`` or ``fetch,push`` (any order, spaces allowed) as a sorted tuple."""
    scopes = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(scopes - set(SCOPES))
    if not scopes or unknown:
        raise GnomonError(
            f"scopes: expected fetch, push or fetch,push, got {text!r}"
            + (did_you_mean(unknown[0], SCOPES) if unknown else "")
        )
    return tuple(s for s in SCOPES if s in scopes)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    scopes: tuple[str, ...]
    created: str  # ISO 8601, UTC
    sha256: str  # hex digest of the token


class TokensFile:
    """The tokens file: ``tokens:`` a list of ``{name, scopes, created, sha256}``; written atomically."""

    HEADER = (
        "# Gnomon API tokens (gnomon token create/list/revoke). Only SHA-256 digests: no token is stored.\n"
    )

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[TokenEntry]:
        """The tokens; a missing file has none. A malformed file raises ConfigError naming the entry."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return parse_tokens(text, self.path)

    def create(self, name: str, scopes: Iterable[str]) -> str:
        """Add a token named ``name``; returns the token (the file keeps only its digest)."""
        if not _NAME.fullmatch(name):
            raise GnomonError(
                f"token name {name!r}: use 1 to 64 letters, digits and _ . @ - "
                "(starting with a letter or digit)"
            )
        scopes = tuple(s for s in SCOPES if s in set(scopes))
        with self._locked():
            entries = self.read()
            if any(e.name == name for e in entries):
                raise GnomonError(
                    f"a token named {name!r} exists in {self.path}; pick another name, or "
                    f"`gnomon token revoke {name}` first"
                )
            token = new_token()
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entries.append(TokenEntry(name, scopes, created, token_digest(token).hex()))
            self._write(entries)
        return token

    def revoke(self, name: str) -> TokenEntry:
        with self._locked():
            entries = self.read()
            found = [e for e in entries if e.name == name]
            if not found:
                names = [e.name for e in entries]
                raise GnomonError(
                    f"no token named {name!r} in {self.path}."
                    + did_you_mean(name, names)
                    + (f" Tokens: {', '.join(names)}." if names else " It holds no token.")
                )
            self._write([e for e in entries if e.name != name])
        return found[0]

    def _write(self, entries: list[TokenEntry]) -> None:
        body = {
            "tokens": [
                {"name": e.name, "scopes": list(e.scopes), "created": e.created, "sha256": e.sha256}
                for e in entries
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w") as handle:  # mkstemp: mode 0600
                handle.write(self.HEADER + yaml.safe_dump(body, sort_keys=False))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)  # readers see the old file or the new one, never half
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise concurrent create/revoke (an advisory lock on a sibling file, where fcntl exists)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def parse_tokens(text: str, path: Path) -> list[TokenEntry]:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    items = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(items, list) and items is not None:
        raise ConfigError(f"{path}: expected `tokens:` a list of tokens (gnomon token create writes it)")
    entries = []
    for index, item in enumerate(items or []):
        where = f"{path}: tokens[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with name, scopes, created, sha256")
        digest = str(item.get("sha256", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"{where}.sha256: expected 64 hex digits (the SHA-256 of the token)")
        scopes = item.get("scopes")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise ConfigError(f"{where}.scopes: expected a list of fetch and/or push, got {scopes!r}")
        entries.append(
            TokenEntry(str(item.get("name", "")), tuple(scopes), str(item.get("created", "")), digest)
        )
    return entries


# ---------------------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Denial:
    """Status, JSON body and headers of a refused request."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def _denial(status: int, error: str, fix: str, challenge: str) -> Denial:
    body = orjson.dumps({"error": error, "fix": fix})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode()),
    ]
    return Denial(status, body, headers)


def _unauthorized(error: str, scope: str, code: str | None) -> Denial:
    hint = CREATE_HINT.format(scope="fetch" if scope == _ANY else scope)
    return _denial(
        401,
        error,
        f"send Authorization: Bearer <token> (create one with `{hint}`)",
        'Bearer realm="gnomon"' + (f', error="{code}"' if code else ""),
    )


class Authenticator:
    """The tokens of a tokens file, reloaded when it changes; answers "may this header do that?"."""

    def __init__(self, tokens_file: Path, metrics_open: bool = False) -> None:
        self.tokens = TokensFile(tokens_file)
        self.metrics_open = metrics_open
        self._by_digest: dict[bytes, TokenEntry] = {}
        self._cache: dict[bytes, TokenEntry | None] = {}
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._reload(strict=True)  # a malformed file at start is an error; later, it refuses every token
        if self._signature is None:
            log.warning(
                "the tokens file %s does not exist yet: every request but /health is refused until "
                "`gnomon token create NAME --scopes fetch` writes it",
                tokens_file,
            )
        # the refusals are built once: a refused request costs no more than an accepted one
        scopes = (*SCOPES, _ANY)
        missing = "missing token: this server requires Authorization: Bearer <token>"
        self._missing = {scope: _unauthorized(missing, scope, None) for scope in scopes}
        malformed = "malformed Authorization header: expected `Bearer <token>`"
        self._malformed = {scope: _unauthorized(malformed, scope, "invalid_request") for scope in scopes}
        invalid = "invalid token: unknown or revoked"
        self._invalid = {scope: _unauthorized(invalid, scope, "invalid_token") for scope in scopes}

    def required_scope(self, path: str) -> str | None:
        """The scope ``path`` needs; None when it is open."""
        if path.startswith("/v1/features/"):
            return "fetch"
        if path.startswith("/v1/events/"):
            return "push"
        if path in OPEN_PATHS or (self.metrics_open and path == "/metrics"):
            return None
        if path == "/ui" or path.startswith("/ui/"):  # the UI's pages and scripts: its data needs a token
            return None
        return _ANY

    def check(self, header: bytes | None, scope: str) -> Denial | None:
        """None when ``header`` (the raw ``Authorization`` value) grants ``scope``; else the refusal."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_INTERVAL
            self._reload(strict=False)
        if header is None:
            return self._missing[scope]
        try:
            entry = self._cache[header]
        except KeyError:
            if header[:7].lower() != b"bearer ":
                return self._malformed[scope]
            entry = self._identify(header)
        if entry is None:
            return self._invalid[scope]
        if scope == _ANY or scope in entry.scopes:
            return None
        return _denial(
            403,
            f"token {entry.name!r} lacks scope {scope!r} (it has: {', '.join(entry.scopes)})",
            f"use a token with scope {scope} (create one with `{CREATE_HINT.format(scope=scope)}`)",
            f'Bearer realm="gnomon", error="insufficient_scope", scope="{scope}"',
        )

    def _identify(self, header: bytes) -> TokenEntry | None:
        """The token of a ``Bearer <token>`` header, hashed once and remembered until the next reload."""
        entry = None
        token = header[7:].strip()
        if token:
            digest = token_digest(token)
            found = self._by_digest.get(digest)
            if found is not None and hmac.compare_digest(bytes.fromhex(found.sha256), digest):
                entry = found
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[header] = entry
        return entry

    def _reload(self, strict: bool) -> None:
        try:
            stat = os.stat(self.tokens.path)
            signature: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            signature = None
        if not strict and signature == self._signature:
            return
        try:
            entries = self.tokens.read()
        except ConfigError as error:
            if strict:
                raise
            log.error("%s; every token is refused until it is fixed", error)  # names the file and entry only
            entries = []
        self._by_digest = {bytes.fromhex(e.sha256): e for e in entries}
        self._cache = {}
        self._signature = signature


class AuthMiddleware:
    """ASGI middleware refusing requests without a token granting the route's scope (outermost)."""

    def __init__(self, app: Any, auth: Authenticator) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            needed = self.auth.required_scope(scope["path"])
            if needed is not None:
                header = None
                for name, value in scope["headers"]:
                    if name == b"authorization":
                        header = value
                        break
                denial = self.auth.check(header, needed)
                if denial is not None:
                    if scope["type"] == "websocket":
                        await send({"type": "websocket.close", "code": 1008})
                        return
                    await send(
                        {"type": "http.response.start", "status": denial.status, "headers": denial.headers}
                    )
                    await send({"type": "http.response.body", "body": denial.body})
                    return
        await self.app(scope, receive, send)
