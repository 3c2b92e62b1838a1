#!/usr/bin/env bash
# Install the dev dependencies into ./.venv, start what the tests need and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e '.[dev]'
ruff check src tests bench
python -m pytest tests --doctest-modules src/gnomon "$@"
