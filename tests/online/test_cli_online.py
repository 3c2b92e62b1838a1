"""The online commands of the CLI (SPEC §6): upload, push, stream, fetch, serve — and their errors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

import gnomon
from gnomon.cli import main

from .helpers import (
    BATCH_END,
    DAY,
    GROUP_BY,
    HOUR,
    ITEM_GROUP_BY,
    JOIN,
    TOPIC,
    UPLOAD_DS,
    build_repo,
    feature_columns,
    free_port,
    gnomon_command,
    make_events,
    mismatches,
    offline_rows,
    subprocess_env,
)

Q = BATCH_END + 5 * HOUR


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def cli_events(user: str, count: int, first_ts: int) -> list[dict[str, Any]]:
    return [
        {
            "user_id": user,
            "item_id": "zz",
            "price": float(10 * (i + 1)),
            "qty": i,
            "ts": first_ts + i * 60_000,
        }
        for i in range(count)
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo whose warehouse already holds the events the tests push (so offline sees them too)."""
    events = [e for e in make_events(300, seed=17) if e["ts"] < BATCH_END]  # later ones come only by push
    pushed = cli_events("cli_a", 3, BATCH_END + HOUR) + cli_events("cli_l", 4, BATCH_END + 2 * HOUR)
    build_repo(tmp_path / "repo", events + pushed)
    return tmp_path / "repo"


def results_of(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, (result.output, result.exception)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_upload_push_stream_fetch(repo: Path, tmp_path: Path) -> None:
    uploaded = cli("upload", JOIN, "--ds", UPLOAD_DS, "--repo", str(repo))
    assert uploaded.exit_code == 0, uploaded.output
    assert GROUP_BY in uploaded.output and ITEM_GROUP_BY in uploaded.output
    assert "uploaded" in uploaded.output

    array_file = tmp_path / "events.json"
    array_file.write_text(json.dumps(cli_events("cli_a", 3, BATCH_END + HOUR), indent=2))
    lines_file = tmp_path / "events.jsonl"
    lines_file.write_text(
        "\n".join(json.dumps(e) for e in cli_events("cli_l", 4, BATCH_END + 2 * HOUR)) + "\n\n"
    )
    for file, count in ((array_file, 3), (lines_file, 4)):
        pushed = cli("push", TOPIC, str(file), "--repo", str(repo))
        assert pushed.exit_code == 0, (pushed.output, pushed.exception)
        assert f"published {count} event(s) to {TOPIC}" in pushed.output

    keys = [{"user": "cli_a", "item": "zz"}, {"user": "cli_l", "item": "zz"}, {"user": "u1", "item": "a"}]
    before = results_of(cli("fetch", JOIN, "--keys", json.dumps(keys), "--at", str(Q), "--repo", str(repo)))
    assert before[0]["features"]["feat_user_stats_qty_count"] is None  # published, not streamed yet

    streamed = cli("stream", JOIN, "--until-caught-up", "--repo", str(repo))
    assert streamed.exit_code == 0, (streamed.output, streamed.exception)
    assert f"{GROUP_BY}: 7 record(s), 7 row(s) applied" in streamed.output
    assert "0 dead letter(s)" in streamed.output

    results = results_of(cli("fetch", JOIN, "--keys", json.dumps(keys), "--at", str(Q), "--repo", str(repo)))
    assert [r["entityKeys"] for r in results] == keys
    assert all(r["status"] == "Success" for r in results)
    assert results[0]["features"]["feat_user_stats_qty_count"] == 3
    assert results[1]["features"]["feat_user_stats_price_sum_1d"] == 100.0
    offline = offline_rows(gnomon.Project(repo), keys, [Q])
    for row, result in zip(offline, results, strict=True):
        assert not mismatches(feature_columns(row), result["features"]), (row, result)
    with gnomon.Client(repo) as client:
        assert json.loads(json.dumps(client.fetch_join(JOIN, keys, at=Q))) == results

    # a GroupBy by name, one key object, and stdin for push
    [one] = results_of(
        cli("fetch", GROUP_BY, "--keys", '{"user": "cli_l"}', "--at", str(Q), "--repo", str(repo))
    )
    assert one["status"] == "Success" and one["features"]["qty_count"] == 4
    synced = cli(
        "push",
        TOPIC,
        "-",
        "--sync",
        "--repo",
        str(repo),
        input=json.dumps(cli_events("cli_s", 2, BATCH_END + HOUR)),
    )
    assert synced.exit_code == 0, synced.output
    assert "servable now" in synced.output
    [fresh] = results_of(
        cli("fetch", GROUP_BY, "--keys", '[{"user": "cli_s"}]', "--at", str(Q), "--repo", str(repo))
    )
    assert fresh["features"]["qty_count"] == 2


def test_fetch_before_upload_is_a_non_success_result(repo: Path) -> None:
    [result] = results_of(
        cli("fetch", JOIN, "--keys", '{"user": "u1", "item": "a"}', "--at", str(Q), "--repo", str(repo))
    )
    assert result["status"] != "Success" and "upload" in result["error"]


@pytest.mark.parametrize(
    "args",
    [
        ("upload", "feat.user_itme", "--ds", UPLOAD_DS),
        ("stream", "feat.user_stat", "--until-caught-up"),
        ("fetch", "feat.user_itme", "--keys", '{"user": "u1"}'),
        ("backfill", "feat.user_itme", "--start-ds", UPLOAD_DS, "--end-ds", UPLOAD_DS),
    ],
)
def test_unknown_name_exits_1_with_did_you_mean(repo: Path, args: tuple[str, ...]) -> None:
    result = cli(*args, "--repo", str(repo))
    assert result.exit_code == 1, (result.output, result.exception)
    assert "did you mean" in result.output.lower()
    assert "Traceback" not in result.output


def test_push_to_an_unknown_topic_exits_1_with_did_you_mean(repo: Path, tmp_path: Path) -> None:
    """As over HTTP (404), a topic no GroupBy reads is an error, not a silent publish into the void."""
    file = tmp_path / "events.json"
    file.write_text(json.dumps(cli_events("x", 1, BATCH_END)))
    result = cli("push", "evnets", str(file), "--repo", str(repo))
    assert result.exit_code == 1, (result.output, result.exception)
    assert "did you mean" in result.output.lower() and "'events'" in result.output


@pytest.mark.parametrize("keys", ['{"user": "u1"', "not json", ""])
def test_fetch_with_malformed_keys_is_a_usage_error(repo: Path, keys: str) -> None:
    result = cli("fetch", JOIN, "--keys", keys, "--repo", str(repo))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "--keys" in result.output


@pytest.mark.parametrize("keys", ["5", "[5]", '"bob"', '[{"user": "u1", "item": "a"}, ["u2", "b"]]'])
def test_fetch_with_keys_that_are_not_objects_is_a_usage_error(repo: Path, keys: str) -> None:
    result = cli("fetch", JOIN, "--keys", keys, "--repo", str(repo))
    assert result.exit_code == 2, (result.output, repr(result.exception))
    assert "--keys" in result.output


def test_bad_at_and_bad_push_file_are_usage_errors(repo: Path, tmp_path: Path) -> None:
    result = cli(
        "fetch", JOIN, "--keys", '{"user": "u1", "item": "a"}', "--at", "yesterday", "--repo", str(repo)
    )
    assert result.exit_code == 2 and "--at" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "u1", "ts": 1}\n{not json\n')
    result = cli("push", TOPIC, str(bad), "--repo", str(repo))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "FILE" in result.output
    assert cli("push", TOPIC, str(tmp_path / "missing.json"), "--repo", str(repo)).exit_code == 2


def test_serve_and_fetch_over_url(repo: Path) -> None:
    assert cli("upload", JOIN, "--ds", UPLOAD_DS, "--repo", str(repo)).exit_code == 0
    port = free_port()
    server = subprocess.Popen(
        gnomon_command("serve", "--port", str(port), "--repo", str(repo)),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gnomon serve did not start: {server.communicate(timeout=5)}")
            time.sleep(0.05)
        keys = json.dumps([{"user": "u1", "item": "a"}, {"user": "u2", "item": "b"}])
        at = str(BATCH_END + DAY // 2)
        remote = results_of(cli("fetch", JOIN, "--keys", keys, "--at", at, "--url", url))
        local = results_of(cli("fetch", JOIN, "--keys", keys, "--at", at, "--repo", str(repo)))
        assert remote == local and all(r["status"] == "Success" for r in remote)
        unknown = cli("fetch", "feat.user_itme", "--keys", keys, "--url", url)
        assert unknown.exit_code == 1 and "did you mean" in unknown.output.lower()
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_stream_reports_metrics(repo: Path) -> None:
    from gnomon.metrics import StreamMetrics, serve_metrics

    project = gnomon.Project(repo)
    project.upload(JOIN, UPLOAD_DS)
    client = gnomon.Client(repo)
    client.push(TOPIC, cli_events("m_user", 5, BATCH_END + HOUR) + [{"user_id": None, "ts": BATCH_END}])
    metrics = StreamMetrics()
    server = serve_metrics(metrics.render, "127.0.0.1", 0)
    try:
        gnomon.Project(repo).stream(GROUP_BY, until_caught_up=True, metrics=metrics)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        text = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.shutdown()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines[f'gnomon_stream_records_total{{group_by="{GROUP_BY}"}}'] == "6"
    assert lines[f'gnomon_stream_rows_total{{group_by="{GROUP_BY}"}}'] == "5"
    assert lines[f'gnomon_stream_dead_letters_total{{group_by="{GROUP_BY}"}}'] == "1"
    assert lines[f'gnomon_stream_event_to_servable_seconds_count{{group_by="{GROUP_BY}"}}'] == "6"
    assert float(lines[f'gnomon_stream_event_to_servable_seconds_sum{{group_by="{GROUP_BY}"}}']) >= 0


def test_stream_metrics_port_in_use(repo: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli(
            "stream",
            GROUP_BY,
            "--until-caught-up",
            "--metrics-port",
            str(taken.getsockname()[1]),
            "--repo",
            str(repo),
        )
    assert result.exit_code == 2
    assert "--metrics-port" in result.output and "pick a free port" in result.output
