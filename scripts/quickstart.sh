#!/usr/bin/env bash
# Install Gnomon into ./.venv, create the example repo and backfill its training set end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet '.[pandas]'
rm -rf quickstart
gnomon init quickstart
cd quickstart
gnomon compile
gnomon backfill user_item_training --start-ds 2026-10-01 --end-ds 2026-10-30
python - <<'PY'
import gnomon
import pyarrow.compute as pc

project = gnomon.Project(".")
rows = project.read_table("user_item_training")
bob = rows.filter(pc.equal(rows["user"], "bob")).sort_by("ts").to_pandas()
print("\nBob's watches with the views of the item in the last 5 hours and its average rating in the last 90 days:")
print(bob[["ts", "item", "user_item_views_view_count_5h", "item_ratings_rating_average_90d",
           "views_per_rating"]].head(10).to_string(index=False))
PY
