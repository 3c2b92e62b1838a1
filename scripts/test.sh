#!/usr/bin/env bash
# Install the dev dependencies into ./.venv (pyspark included), start what the tests need and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# the online tests run a real redis-server on a private loopback port
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
fi
# the web UI's browser tests drive Debian's Chromium through Playwright (never `playwright install`)
if [ ! -x /usr/bin/chromium ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
# the Spark engine's tests run Spark in local mode: it needs a Java runtime (17 or newer)
if ! command -v java >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e '.[dev]'
# Feast's Chronon online store drives our HTTP server in one test; Feast lives in a venv of its own
# so that its pins never change ours (about 30 s to install the first time)
if [ ! -x .venv-feast/bin/python ] || ! .venv-feast/bin/python -c 'import feast' 2>/dev/null; then
    if ! { python3 -m venv .venv-feast && .venv-feast/bin/pip install --quiet 'feast>=0.67'; }; then
        echo "warning: could not install Feast into .venv-feast; its test will be skipped" >&2
        [ -z "${CI:-}" ] || exit 1
    fi
fi
[ -x .venv-feast/bin/python ] && export GNOMON_FEAST_PYTHON="$PWD/.venv-feast/bin/python"
# `gnomon airflow export`'s DAGs are loaded and run by real Apache Airflow, in a venv of its own so
# that its pins never change ours (about 40 s to install the first time)
if [ ! -x .venv-airflow/bin/python ] || ! .venv-airflow/bin/python -c 'import airflow' 2>/dev/null; then
    if ! { python3 -m venv .venv-airflow && .venv-airflow/bin/pip install --quiet 'apache-airflow>=3.1,<4'; }; then
        echo "warning: could not install Apache Airflow into .venv-airflow; its tests will be skipped" >&2
        [ -z "${CI:-}" ] || exit 1
    fi
fi
[ -x .venv-airflow/bin/python ] && export GNOMON_AIRFLOW_PYTHON="$PWD/.venv-airflow/bin/python"
# the Kafka tests: librdkafka's in-process mock cluster unless GNOMON_TEST_KAFKA names a real broker
export GNOMON_TEST_KAFKA="${GNOMON_TEST_KAFKA:-mock}"
ruff check src tests bench
ruff format --check src tests bench
mypy
# one pytest-xdist worker per core, at most 4 (each may start a JVM, a redis-server and Chromium);
# --dist loadfile keeps each module on one worker, so a module-scoped fixture is built once
workers=$(nproc)
[ "$workers" -le 4 ] || workers=4
python -m pytest -n "$workers" --dist loadfile tests --doctest-modules src/gnomon "$@"
