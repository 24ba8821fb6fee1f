#!/usr/bin/env bash
# End to end on the demo sample that ships in the repo: fit -> eval -> export -> predict -> bench.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-models/demo}
fre-edge fit examples/bottle_sample -o "$OUT/model" --force
fre-edge eval "$OUT/model" examples/bottle_sample -n 4
fre-edge export "$OUT/model" -o "$OUT/bundle" --force
# exit status 1 means "some image is anomalous": expected here, the sample has defects
fre-edge predict "$OUT/bundle" examples/bottle_sample/test -o "$OUT/predictions" --force || [ $? -eq 1 ]
fre-edge bench "$OUT/bundle" --device CPU --duration 3 --json "$OUT/bench.json" --force
echo "demo done: heatmaps in $OUT/model/eval_pictures and $OUT/predictions"
