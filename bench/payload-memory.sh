#!/bin/sh
# Peak memory (GNU time's max RSS, KiB) of `publish` and `show` for 10 MB payloads, in a fresh
# temporary folder: bench/payload-memory.sh [BGQ_BINARY] (default target/release/bgq).
# See BENCHMARKS.md, "Issue 13: payload memory".
set -eu
b=$(realpath "${1:-target/release/bgq}")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
python3 - <<'PY'
import json
# One 10 MB string; 2.6 million small numbers; 280,000 small objects; 10 MB of raw bytes.
json.dump({"blob": "x" * 10_000_000, "n": 1}, open("p10.json", "w"))
json.dump({"n": [i % 1000 for i in range(2_600_000)]}, open("n10.json", "w"), separators=(",", ":"))
objects = [{"id": i, "name": "user%d" % i, "ok": True} for i in range(280_000)]
json.dump(objects, open("o10.json", "w"), separators=(",", ":"))
open("p10.bin", "wb").write(b"\xab" * 10_000_000)
PY
printf 'database = "db.sqlite"\ntemp_dir = "locks"\n[callbacks.cb]\ncommand = ["true"]\n' > bgq.toml
rss() { /usr/bin/time -v "$b" --config bgq.toml "$@" 2>&1 >/dev/null | sed -n 's/.*Maximum resident set size (kbytes): //p'; }
echo "list (empty queue): $(rss list)"
echo "publish --json @p10.json (job 1): $(rss publish cb --json @p10.json)"
echo "publish --raw p10.bin (job 2): $(rss publish cb --raw p10.bin)"
echo "publish --json @n10.json (job 3): $(rss publish cb --json @n10.json)"
echo "publish --json @o10.json (job 4): $(rss publish cb --json @o10.json)"
for id in 1 2 3 4; do
    echo "show $id: $(rss show $id)"
    echo "show $id --json: $(rss show $id --json)"
done
