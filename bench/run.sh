#!/usr/bin/env bash
# Run `visionrpc bench` with results under bench/results/ (JSON + Markdown), e.g.
#   bench/run.sh                 full run: 10 s per point, 200 eval images (~8 min for 2 models)
#   bench/run.sh --quick         smoke run: 1 s per point (~1 min)
#   bench/run.sh --levers        also measure each server lever (one server restart each)
# Extra arguments go to `visionrpc bench`. Peer rows ($PEER_RESULTS, default
# bench/peers/peers-results.json) are merged into the JSON and the Markdown when present.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
visionrpc="$root/.venv/bin/visionrpc"
out="$here/results"
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json="$out/bench-$stamp.json"

"$visionrpc" bench --out "$json" "$@"
peer_file=${PEER_RESULTS:-$here/peers/peers-results.json}
peers=()
if [[ -f "$peer_file" ]]; then
  peers=(--peer-results "$peer_file")
fi
"$visionrpc" bench --from-json "$json" "${peers[@]}" --markdown >"$out/bench-$stamp.md"
ln -sf "$(basename "$json")" "$out/latest.json"
ln -sf "bench-$stamp.md" "$out/latest.md"
echo "JSON: $json"
echo "Markdown: $out/bench-$stamp.md"
