"""Authentication, scopes, TLS and request limits of the HTTP service (SPEC §5 "Auth").

Against a real uvicorn server (in a thread, as test_http.py does; TLS through a `gnomon serve`
subprocess), over httpx and through ``gnomon.Client(url, token=...)``. Tokens are made with the CLI
(`gnomon token create`), which prints each one alone on the last line of stdout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

import gnomon
from gnomon.cli import main
from gnomon.errors import GnomonError
from gnomon.serving.app import create_app
from gnomon.serving.auth import new_token

from .helpers import (
    BATCH_END,
    GROUP_BY,
    HOUR,
    JOIN,
    TOPIC,
    UPLOAD_DS,
    build_repo,
    free_port,
    gnomon_command,
    make_events,
    running_server,
    subprocess_env,
)

AT = BATCH_END + HOUR
KEY = {"user": "u1", "item": "a"}
AUTH_YAML = "serving:\n  auth: {tokens_file: tokens.yaml}\n"
SMALL_YAML = """serving:
  auth: {tokens_file: secrets/tokens.yaml}
  metrics: open
  limits: {body_bytes: 1KiB, keys: 3, events: 2, depth: 4}
"""


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def create_token(repo: Path, name: str, scopes: str) -> str:
    result = cli("token", "create", name, "--scopes", scopes, "--repo", str(repo))
    assert result.exit_code == 0, (result.output, result.exception)
    token = result.stdout.splitlines()[-1]
    assert token == token.strip() and " " not in token and len(token) >= 40, result.stdout
    return token


def event(user: str, ts: int = BATCH_END + 60_000) -> dict[str, Any]:
    return {"user_id": user, "item_id": "zz", "price": 1.0, "qty": 1, "ts": ts}


@dataclass
class Secured:
    repo: Path
    url: str
    tokens: dict[str, str]  # credential -> token: "fetch", "push", "fetch,push"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    repo = tmp_path_factory.mktemp("auth") / "repo"
    project = build_repo(repo, make_events(200))
    project.upload(JOIN, UPLOAD_DS)
    with (repo / "gnomon.yaml").open("a") as config:
        config.write(AUTH_YAML)
    tokens = {scopes: create_token(repo, f"t_{scopes.replace(',', '_')}", scopes) for scopes in SCOPE_SETS}
    with running_server(create_app(repo)) as url:
        yield Secured(repo, url, tokens)


SCOPE_SETS = ("fetch", "push", "fetch,push")
CREDENTIALS = ("none", "wrong", *SCOPE_SETS)
ROUTES: dict[str, tuple[str, str, Any]] = {  # route -> method, path, body
    "join": ("POST", f"/v1/features/join/{JOIN}?at={AT}", [KEY]),
    "groupby": ("POST", f"/v1/features/groupby/{GROUP_BY}?at={AT}", [{"user": "u1"}]),
    "events": ("POST", f"/v1/events/{TOPIC}", [event("auth_table")]),
    "metrics": ("GET", "/metrics", None),
    "health": ("GET", "/health", None),
}
EXPECTED = {  # route -> status per credential (none, wrong, fetch, push, fetch+push)
    "join": (401, 401, 200, 403, 200),
    "groupby": (401, 401, 200, 403, 200),
    "events": (401, 401, 403, 200, 200),
    "metrics": (401, 401, 200, 200, 200),
    "health": (200, 200, 200, 200, 200),
}


def headers_for(secured: Secured, credential: str) -> dict[str, str]:
    if credential == "none":
        return {}
    token = new_token() if credential == "wrong" else secured.tokens[credential]
    return {"Authorization": f"Bearer {token}"}


def request(url: str, route: str, headers: dict[str, str], **options: Any) -> httpx.Response:
    method, path, body = ROUTES[route]
    return httpx.request(method, url + path, json=body, headers=headers, timeout=30, **options)


# ------------------------------------------------------------------ the 401/403/200 table


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("credential", CREDENTIALS)
def test_status_per_route_and_credential(secured: Secured, route: str, credential: str) -> None:
    response = request(secured.url, route, headers_for(secured, credential))
    expected = EXPECTED[route][CREDENTIALS.index(credential)]
    assert response.status_code == expected, (route, credential, response.text)
    if expected == 401:
        body = response.json()
        assert set(body) == {"error", "fix"}
        assert ("missing token" if credential == "none" else "invalid token") in body["error"]
        assert "Authorization: Bearer <token>" in body["fix"] and "gnomon token create" in body["fix"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    elif expected == 403:
        body = response.json()
        needed = "push" if route == "events" else "fetch"
        assert f"lacks scope '{needed}'" in body["error"], body
        assert f"--scopes {needed}" in body["fix"], body
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    elif route in ("join", "groupby"):
        assert all(r["status"] == "Success" for r in response.json()["results"]), response.text
    elif route == "metrics":
        assert "gnomon_request_seconds" in response.text


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_the_client_per_credential(secured: Secured, credential: str) -> None:
    token = None if credential == "none" else headers_for(secured, credential)["Authorization"][7:]
    client = gnomon.Client(secured.url, token=token)
    calls = {
        "join": lambda: client.fetch_join(JOIN, KEY, at=AT),
        "groupby": lambda: client.fetch_group_by(GROUP_BY, {"user": "u2"}, at=AT),
        "events": lambda: client.push(TOPIC, [event("auth_client")]),
    }
    for route, call in calls.items():
        expected = EXPECTED[route][CREDENTIALS.index(credential)]
        if expected == 200:
            answer = call()
            assert answer and (route == "events" or answer[0]["status"] == "Success"), answer
        else:
            with pytest.raises(GnomonError, match=rf"HTTP {expected} .*fix: .*gnomon token create") as raised:
                call()
            if token:
                assert token not in str(raised.value)


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "bearer " + "x" * 50, "Bearer a b"],
)
def test_malformed_or_unknown_authorization_headers_are_401(secured: Secured, header: str) -> None:
    response = request(secured.url, "join", {"Authorization": header})
    assert response.status_code == 401, response.text
    assert "Authorization: Bearer" in response.json()["fix"]
    secret = header.partition(" ")[2].strip()
    assert len(secret) < 4 or secret not in response.text  # never echoed


def test_the_scheme_is_case_insensitive_and_the_connection_survives_refusals(secured: Secured) -> None:
    token = secured.tokens["fetch"]
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        for _ in range(3):  # one keep-alive connection: refusals with a body left unread, then successes
            _, path, body = ROUTES["join"]
            assert http.post(path, json=[KEY] * 50).status_code == 401
            assert http.post(path, json=body, headers={"Authorization": f"bearer {token}"}).status_code == 200
            assert (
                http.post(path, json=body, headers={"Authorization": f"BEARER  {token}"}).status_code == 200
            )


def test_health_and_docs_stay_open_and_document_the_scheme(secured: Secured) -> None:
    assert httpx.get(f"{secured.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{secured.url}/docs").status_code == 200
    schema = httpx.get(f"{secured.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/features/join/{name}"]["post"]["security"] == [{"bearer": []}]
    assert "scope `push`" in schema["paths"]["/v1/events/{topic}"]["post"]["description"]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert httpx.get(f"{secured.url}/no/such/route").status_code == 401  # unknown routes are not open


# ------------------------------------------------------------------ the token commands


def test_token_create_prints_the_token_alone_and_stores_only_its_hash(secured: Secured) -> None:
    result = cli("token", "create", "printer", "--scopes", "push, fetch", "--repo", str(secured.repo))
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[-1]
    assert result.stdout == token + "\n"  # stdout is the token alone; the explanation is on stderr
    assert "printer" in result.stderr and "SHA-256" in result.stderr
    tokens_file = secured.repo / "tokens.yaml"
    text = tokens_file.read_text()
    for clear in (*secured.tokens.values(), token):
        assert clear not in text
        assert clear.removeprefix("gnm_") not in text
        assert hashlib.sha256(clear.encode()).hexdigest() in text
    assert "printer" in text and "- fetch" in text and "- push" in text
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert len(set(secured.tokens.values())) == 3  # fresh random tokens

    listing = cli("token", "list", "--repo", str(secured.repo))
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "CREATED"]
    row = next(line.split() for line in lines if line.startswith("printer "))
    assert row[1] == "fetch,push" and row[2].endswith("Z") and row[2][:2] == "20"
    assert any(line.split()[:2] == ["t_fetch", "fetch"] for line in lines)
    for clear in (*secured.tokens.values(), token):
        assert clear not in listing.output
        assert hashlib.sha256(clear.encode()).hexdigest() not in listing.output
    assert cli("token", "revoke", "printer", "--repo", str(secured.repo)).exit_code == 0


def test_token_command_errors(secured: Secured, tmp_path: Path) -> None:
    repo = str(secured.repo)
    duplicate = cli("token", "create", "t_fetch", "--scopes", "fetch", "--repo", repo)
    assert duplicate.exit_code == 1 and "exists" in duplicate.output and "revoke" in duplicate.output
    bad_scope = cli("token", "create", "x", "--scopes", "fecth", "--repo", repo)
    assert bad_scope.exit_code == 2 and "--scopes" in bad_scope.output and "'fetch'" in bad_scope.output
    assert cli("token", "create", "x", "--scopes", "admin", "--repo", repo).exit_code == 2
    assert cli("token", "create", "x", "--repo", repo).exit_code == 2  # --scopes is required
    bad_name = cli("token", "create", "two words", "--scopes", "fetch", "--repo", repo)
    assert bad_name.exit_code == 1 and "token name" in bad_name.output
    unknown = cli("token", "revoke", "t_fetc", "--repo", repo)
    assert unknown.exit_code == 1 and "did you mean 't_fetch'" in unknown.output.lower()
    (tmp_path / "gnomon.yaml").write_text("project: off\n")
    off = cli("token", "create", "x", "--scopes", "fetch", "--repo", str(tmp_path))
    assert off.exit_code == 1 and "serving: {auth: {tokens_file: tokens.yaml}}" in off.output
    assert cli("token", "list", "--repo", str(tmp_path)).exit_code == 1


def wait_for_status(url: str, token: str, status: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while True:
        got = request(url, "join", {"Authorization": f"Bearer {token}"}).status_code
        if got == status:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"still {got} after {timeout}s, expected {status}"
        time.sleep(0.05)


def test_create_and_revoke_take_effect_on_the_running_server(secured: Secured) -> None:
    token = create_token(secured.repo, "short_lived", "fetch")
    assert wait_for_status(secured.url, token, 200) < 2.5  # reloaded within about a second
    client = gnomon.Client(secured.url, token=token)
    assert client.fetch_join(JOIN, KEY, at=AT)[0]["status"] == "Success"
    result = cli("token", "revoke", "short_lived", "--repo", str(secured.repo))
    assert result.exit_code == 0 and "revoked" in result.output
    assert wait_for_status(secured.url, token, 401) < 2.5
    with pytest.raises(GnomonError, match="HTTP 401.*invalid token"):
        client.fetch_join(JOIN, KEY, at=AT)
    assert "short_lived" not in cli("token", "list", "--repo", str(secured.repo)).output
    assert request(secured.url, "join", headers_for(secured, "fetch")).status_code == 200  # others unaffected


def test_gnomon_token_environment_variable(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNOMON_TOKEN", secured.tokens["fetch"])
    assert gnomon.Client(secured.url).fetch_join(JOIN, KEY, at=AT)[0]["status"] == "Success"
    with pytest.raises(GnomonError, match="HTTP 403"):
        gnomon.Client(secured.url).push(TOPIC, [event("env")])
    assert gnomon.Client(secured.url, token=secured.tokens["push"]).push(
        TOPIC, [event("env")]
    )  # explicit wins
    keys = json.dumps(KEY)
    fetched = cli("fetch", JOIN, "--keys", keys, "--at", str(AT), "--url", secured.url)
    assert fetched.exit_code == 0, fetched.output
    assert json.loads(fetched.stdout.splitlines()[0])["status"] == "Success"
    monkeypatch.setenv("GNOMON_TOKEN", new_token())
    with pytest.raises(GnomonError, match="HTTP 401"):
        gnomon.Client(secured.url).fetch_join(JOIN, KEY, at=AT)
    monkeypatch.delenv("GNOMON_TOKEN")
    refused = cli("fetch", JOIN, "--keys", keys, "--url", secured.url)
    assert refused.exit_code == 1 and "401" in refused.output and "gnomon token create" in refused.output


def test_tokens_never_reach_the_logs(secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = new_token()
    for token in (wrong, *secured.tokens.values()):
        for route in ("join", "events", "metrics"):
            response = request(secured.url, route, {"Authorization": f"Bearer {token}"})
            assert token not in response.text
        bad = httpx.post(
            f"{secured.url}/v1/features/join/{JOIN}",
            content=b"{not json",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert bad.status_code in (400, 401, 403) and token not in bad.text
    for token in (wrong, *secured.tokens.values()):
        assert token not in caplog.text


# ------------------------------------------------------------------ metrics open, and auth off


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """Auth on with ``metrics: open``, a tokens file in a sub-folder, and small limits."""
    repo = tmp_path_factory.mktemp("small") / "repo"
    build_repo(repo, make_events(60, seed=5))
    with (repo / "gnomon.yaml").open("a") as config:
        config.write(SMALL_YAML)
    tokens = {"fetch,push": create_token(repo, "all", "fetch,push")}
    assert (repo / "secrets" / "tokens.yaml").exists()
    with running_server(create_app(repo)) as url:
        yield Secured(repo, url, tokens)


def test_metrics_closed_by_default_and_open_by_setting(secured: Secured, small: Secured) -> None:
    assert httpx.get(f"{secured.url}/metrics").status_code == 401
    opened = httpx.get(f"{small.url}/metrics")
    assert opened.status_code == 200 and "gnomon_request_seconds" in opened.text
    assert request(small.url, "join", {}).status_code == 401  # only /metrics is opened
    assert request(small.url, "events", {}).status_code == 401
    assert request(small.url, "join", headers_for(small, "fetch,push")).status_code == 200


def test_auth_is_off_without_the_setting(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build_repo(repo, make_events(40, seed=9))
    with running_server(create_app(repo)) as url:
        for credential in ("none", "wrong"):
            headers = {} if credential == "none" else {"Authorization": f"Bearer {new_token()}"}
            for route in ROUTES:
                assert request(url, route, headers).status_code == 200, (route, credential)
        with gnomon.Client(url, token="anything") as client:  # a token is not needed, and not refused
            assert (
                client.fetch_join(JOIN, KEY)[0]["status"] != "Success"
            )  # nothing uploaded: an explicit status


# ------------------------------------------------------------------ limits


def nested(depth: int) -> Any:
    """A JSON value of ``depth`` levels of lists (0: a scalar)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def post(url: str, path: str, token: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers, timeout=60)


def assert_limit(response: httpx.Response, status: int, setting: str, *needles: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["limit"] == setting and setting in body["error"], body
    for needle in needles:
        assert needle in body["error"], (needle, body)


def test_default_limits(secured: Secured) -> None:
    token = secured.tokens["fetch,push"]
    join, events = f"/v1/features/join/{JOIN}?at={AT}", f"/v1/events/{TOPIC}"
    assert_limit(
        post(secured.url, join, token, [KEY] * 10_001), 413, "serving.limits.keys", "10001 keys", "10000"
    )
    before = _end_offsets(secured.repo)
    assert_limit(
        post(secured.url, events, token, [event("many")] * 10_001),
        413,
        "serving.limits.events",
        "10001 events",
        "10000",
    )
    assert _end_offsets(secured.repo) == before  # nothing of a refused push is published
    # depth 32: the array (1), a key object (2), then 30 levels of lists in a value
    assert post(secured.url, join, token, [{**KEY, "x": nested(30)}]).status_code == 200
    assert_limit(
        post(secured.url, join, token, [KEY, {**KEY, "extra": nested(31)}]),
        400,
        "serving.limits.depth",
        "body[1].extra" + "[0]" * 30 + ":",
        "32 levels",
    )
    assert_limit(
        post(secured.url, events, token, [{**event("deep"), "payload": {"a": nested(31)}}]),
        400,
        "serving.limits.depth",
        "body[0].payload.a",
    )
    for depth in (2000, 200_000):  # beyond what the JSON parsers read: still a 400, not a 500
        assert_limit(
            post(secured.url, join, token, content=b"[" * depth + b"]" * depth), 400, "serving.limits.depth"
        )
    big = b"[" + b",".join([json.dumps(event("big")).encode()] * 120_000) + b"]"  # > 8 MiB
    assert len(big) > 8 * 1024 * 1024
    assert_limit(post(secured.url, events, token, content=big), 413, "serving.limits.body_bytes", "8388608")
    assert _end_offsets(secured.repo) == before
    assert_limit(post(secured.url, join, token, content=b" " * (9 << 20)), 413, "serving.limits.body_bytes")
    assert post(secured.url, join, token, [KEY]).status_code == 200  # and the server goes on


def _end_offsets(repo: Path) -> Any:
    broker = gnomon.Project(repo).broker()
    try:
        return broker.end_offsets(TOPIC)
    finally:
        broker.close()


def test_configured_limits(small: Secured) -> None:
    token = small.tokens["fetch,push"]
    join, group_by, events = (
        f"/v1/features/join/{JOIN}",
        f"/v1/features/groupby/{GROUP_BY}",
        f"/v1/events/{TOPIC}",
    )
    assert post(small.url, join, token, [KEY] * 3).status_code == 200
    assert_limit(post(small.url, join, token, [KEY] * 4), 413, "serving.limits.keys", "4 keys", "3")
    assert_limit(post(small.url, group_by, token, [{"user": "u"}] * 4), 413, "serving.limits.keys")
    assert post(small.url, events, token, [event("a"), event("b")]).status_code == 200
    assert_limit(post(small.url, events, token, [event("c")] * 3), 413, "serving.limits.events", "3 events")
    assert post(small.url, join, token, [{**KEY, "x": [[1]]}]).status_code == 200  # depth 4
    assert_limit(
        post(small.url, join, token, [{**KEY, "x": [[[1]]]}]), 400, "serving.limits.depth", "body[0].x[0][0]"
    )
    assert_limit(
        post(small.url, join, token, content=b" " * 1025 + b"[]"), 413, "serving.limits.body_bytes", "1024"
    )
    assert_limit(
        post(small.url, events, token, [{**event("d"), "pad": "x" * 1024}]), 413, "serving.limits.body_bytes"
    )
    # limits apply after auth: a stranger's oversized body is a 401, never read
    assert post(small.url, join, new_token(), [KEY] * 4).status_code == 401


def test_bad_serving_settings_fail_naming_the_setting(tmp_path: Path) -> None:
    from gnomon.config import Config
    from gnomon.errors import ConfigError

    for text, needle in [
        ("serving: {auth: {}}", "serving.auth.tokens_file"),
        ("serving: {auth: {token_file: t.yaml}}", "did you mean 'tokens_file'"),
        ("serving: {metrics: public}", "serving.metrics"),
        ("serving: {limits: {keys: 0}}", "serving.limits.keys"),
        ("serving: {limits: {key: 5}}", "did you mean 'keys'"),
        ("serving: {limits: {body_bytes: 8 parsecs}}", "serving.limits.body_bytes"),
        ("serving: {limits: {depth: 1000}}", "at most 256"),
        ("serving: {limts: {}}", "did you mean 'limits'"),
    ]:
        (tmp_path / "gnomon.yaml").write_text(text + "\n")
        with pytest.raises(ConfigError, match="(?i)" + needle):
            Config.load(tmp_path)
    (tmp_path / "gnomon.yaml").write_text("serving: {limits: {body_bytes: 2MiB, events: 7}}\n")
    limits = Config.load(tmp_path).serving.limits
    assert (limits.body_bytes, limits.events, limits.keys, limits.depth) == (2 << 20, 7, 10_000, 32)


def test_a_malformed_tokens_file_fails_at_start_and_refuses_everything_later(small: Secured) -> None:
    tokens_file = small.repo / "secrets" / "tokens.yaml"
    good = tokens_file.read_text()
    token = small.tokens["fetch,push"]
    try:
        tokens_file.write_text("tokens: [{name: x, scopes: [admin], sha256: 00}]\n")
        from gnomon.errors import ConfigError

        with pytest.raises(ConfigError, match=r"tokens\[0\]"):
            create_app(small.repo)
        wait_for_status(small.url, token, 401)  # the running server fails closed
    finally:
        tokens_file.write_text(good)
    wait_for_status(small.url, token, 200)


# ------------------------------------------------------------------ TLS


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, with ``cryptography`` if installed, else openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        assert openssl, "neither the cryptography package nor openssl is installed (apt-get install openssl)"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_tls_round_trip(secured: Secured, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        gnomon_command(
            "serve",
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--repo",
            str(secured.repo),
        ),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(
                        f"{url}/health", verify=ssl.create_default_context(cafile=cert), timeout=1
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"gnomon serve --tls-cert did not start: {server.communicate(timeout=5)}"
                )
            time.sleep(0.1)
        # (clients are closed: an idle TLS connection would hold up the server's shutdown)
        with gnomon.Client(url, token=secured.tokens["fetch,push"], verify=cert) as client:
            [result] = client.fetch_join(JOIN, KEY, at=AT)
            assert result["status"] == "Success" and result["entityKeys"] == KEY
            assert client.push(TOPIC, [event("tls")])
        with gnomon.Client(url, verify=cert) as anonymous, pytest.raises(GnomonError, match="HTTP 401"):
            anonymous.fetch_join(JOIN, KEY, at=AT)
        assert (
            request(
                url, "join", headers_for(secured, "fetch"), verify=ssl.create_default_context(cafile=cert)
            ).status_code
            == 200
        )
        env = {"SSL_CERT_FILE": str(cert), "GNOMON_TOKEN": secured.tokens["fetch"]}
        fetched = cli("fetch", JOIN, "--keys", json.dumps(KEY), "--at", str(AT), "--url", url, env=env)
        assert fetched.exit_code == 0, fetched.output
        assert json.loads(fetched.stdout)["status"] == "Success"
        with pytest.raises(ssl.SSLCertVerificationError):  # not signed by a CA the system trusts
            gnomon.Client(url, token=secured.tokens["fetch"]).fetch_join(JOIN, KEY, at=AT)
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert f"on https://127.0.0.1:{port}" in out and "auth on" in out
    for token in secured.tokens.values():
        assert token not in out + err


def test_tls_options_go_together(secured: Secured, tmp_path: Path) -> None:
    cert, _ = self_signed_certificate(tmp_path)
    result = cli("serve", "--tls-cert", str(cert), "--repo", str(secured.repo))
    assert result.exit_code == 2 and "--tls-key" in result.output
    missing = cli("serve", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem"))
    assert missing.exit_code == 2 and "nope.pem" in missing.output
