#!/usr/bin/env bash
# Install the dev dependencies into ./.venv, start what the tests need and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# the online tests run a real redis-server on a private loopback port
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e '.[dev]'
ruff check src tests bench
mypy
python -m pytest tests --doctest-modules src/gnomon "$@"
