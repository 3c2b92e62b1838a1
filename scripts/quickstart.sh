#!/usr/bin/env bash
# Install Gnomon into ./.venv and run the whole loop on the embedded defaults (DuckDB, Parquet,
# SQLite online store, embedded stream log): init -> compile -> backfill -> upload -> push live
# events and a rating update -> stream -> serve -> fetch Bob's features ending now.
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
python - "$yesterday" <<'PY'
import json, sys, time
import gnomon

# The ratings are a database table. Bob changes his rating of i001: its full old row (the before
# image, as the latest snapshot holds it) is taken back and the new row added, at the mutation time.
project = gnomon.Project(".")
snapshot = project.read_table("item_info.ratings_snapshots", sys.argv[1], sys.argv[1]).drop_columns(["ds"])
old = next(r for r in snapshot.to_pylist() if r["user_id"] == "bob" and r["item_id"] == "i001")
client = gnomon.Client(".")
before = client.fetch_group_by("item_ratings", {"item": "i001"})[0]["features"]["rating_average_90d"]
now = int(time.time() * 1000)
views = [{"user_id": "bob", "item_id": "i001", "activity_type": "item_view", "ts": now - minutes * 60_000}
         for minutes in (290, 120, 30, 5)]
views.append({"user_id": "bob", "item_id": "i001", "activity_type": "item_view", "ts": now - 6 * 3_600_000})
json.dump(views, open("live_views.json", "w"))
# 1. in the mutation table's row format: one row per image, with mutation_ts and is_before (JSON lines)
new = {**old, "rating": 4, "ts": now}
rows = [{**old, "mutation_ts": now, "is_before": True}, {**new, "mutation_ts": now, "is_before": False}]
open("rating_update.json", "w").write("".join(json.dumps(row) + "\n" for row in rows))
# 2. as a Debezium change event (op u: the before and after images, ts_ms the mutation time), sent later
json.dump({"before": new, "after": {**new, "rating": 5, "ts": now + 1}, "op": "u", "ts_ms": now + 1,
           "source": {"connector": "postgresql", "table": "ratings"}}, open("rating_update_debezium.json", "w"))
json.dump({"before": before}, open("i001_average.json", "w"))
print(f"\nBob's rating of i001 is {old['rating']}: it becomes 4 (mutation rows), then 5 (a Debezium event).")
PY
cat rating_update.json
gnomon push user_views live_views.json
gnomon push ratings_mutations rating_update.json
gnomon stream user_item_training --until-caught-up
python - <<'PY'
import json
import gnomon
averages = json.load(open("i001_average.json"))
averages["rows"] = gnomon.Client(".").fetch_group_by("item_ratings", {"item": "i001"})[0]["features"]["rating_average_90d"]
json.dump(averages, open("i001_average.json", "w"))
PY

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


def post(path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))


# the second change arrives over HTTP as the Debezium connector would publish it; sync: servable on return
post("/v1/events/ratings_mutations?sync=true", [json.load(open("rating_update_debezium.json"))])
answer = post("/v1/features/join/user_item_training", [{"user": "bob", "item": "i001"}])["results"][0]
print(f"\nPOST {url}/v1/features/join/user_item_training [{{\"user\": \"bob\", \"item\": \"i001\"}}]")
print(json.dumps(answer, indent=2))
features = answer["features"]
averages = json.load(open("i001_average.json"))
print(f"\nBob viewed i001 {features['user_item_views_view_count_5h']} times in the last 5 hours; its average "
      f"rating over the last 90 days is {features['item_ratings_rating_average_90d']:.4f} (ending now).")
print(f"i001's average rating moved from {averages['before']:.4f} to {averages['rows']:.4f} after Bob's update "
      f"(mutation rows, gnomon push + gnomon stream), and to {features['item_ratings_rating_average_90d']:.4f} "
      "after his second one (a Debezium event, POST /v1/events).")
PY
