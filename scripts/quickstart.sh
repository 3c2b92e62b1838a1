#!/usr/bin/env bash
# Install Gnomon into ./.venv and run the whole loop on the embedded defaults (DuckDB, Parquet,
# SQLite online store, embedded stream log): init -> compile -> backfill -> upload -> push live
# events -> stream -> serve -> fetch Bob's features ending now.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet '.[pandas,serve]'

yesterday=$(python -c 'import datetime as d; print(d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1))')
first=$(python -c "import datetime as d; print(d.date.fromisoformat('$yesterday') - d.timedelta(days=29))")
rm -rf quickstart
gnomon init quickstart --last-ds "$yesterday"
cd quickstart
gnomon compile
gnomon backfill user_item_training --start-ds "$first" --end-ds "$yesterday"
python - <<'PY'
import gnomon
import pyarrow.compute as pc

rows = gnomon.Project(".").read_table("user_item_training")
bob = rows.filter(pc.equal(rows["user"], "bob")).sort_by("ts").to_pandas()
print("\nTraining data: Bob's watches with the item's views by him in the last 5 hours and the item's")
print("average rating in the last 90 days, each as of the moment of the watch:")
print(bob[["ts", "item", "user_item_views_view_count_5h", "item_ratings_rating_average_90d",
           "views_per_rating"]].head(10).to_string(index=False))
PY

# Online: load yesterday's state, then live events from today arrive on the topics.
gnomon upload user_item_training --ds "$yesterday"
python - <<'PY'
import json, time
now = int(time.time() * 1000)
views = [{"user_id": "bob", "item_id": "i001", "activity_type": "item_view", "ts": now - minutes * 60_000}
         for minutes in (290, 120, 30, 5)]
views.append({"user_id": "bob", "item_id": "i001", "activity_type": "item_view", "ts": now - 6 * 3_600_000})
json.dump(views, open("live_views.json", "w"))
json.dump([{"item_id": "i001", "rating": 5, "ts": now - 3_600_000}], open("live_ratings.json", "w"))
PY
gnomon push user_views live_views.json
gnomon push ratings live_ratings.json
gnomon stream user_item_training --until-caught-up

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
gnomon serve --port "$port" > serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python - "$port" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(100):
    try:
        urllib.request.urlopen(url + "/health", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
request = urllib.request.Request(url + "/v1/features/join/user_item_training",
                                 data=json.dumps([{"user": "bob", "item": "i001"}]).encode(),
                                 headers={"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request))["results"][0]
print(f"\nPOST {url}/v1/features/join/user_item_training [{{\"user\": \"bob\", \"item\": \"i001\"}}]")
print(json.dumps(answer, indent=2))
features = answer["features"]
print(f"\nBob viewed i001 {features['user_item_views_view_count_5h']} times in the last 5 hours; its average "
      f"rating over the last 90 days is {features['item_ratings_rating_average_90d']:.3f} (ending now).")
PY
