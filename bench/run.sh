#!/usr/bin/env bash
# Run the comparison benchmark (python -m bench.harness) with results under bench/results/ (JSON + Markdown), e.g.
#   bench/run.sh                 full run: 10 s per point, 200 eval images (~8 min for 2 models)
#   bench/run.sh --quick         smoke run: 1 s per point (~1 min)
#   bench/run.sh --levers        also measure each server lever (one server restart each)
#   bench/run.sh --skip-security leave out section f, the cost of TLS and tokens on Infer (plaintext
#                                vs TLS vs TLS + token servers side by side: images/s at c16, p50 at
#                                c1); it runs by default and needs trustme (the test extra)
#   bench/run.sh --skip-metrics  leave out section g, the cost of Prometheus metrics on Infer (servers
#                                with metrics off and on side by side: images/s at c16, p50 at c1)
#   bench/run.sh --skip-oip      leave out section h, the Open Inference Protocol's ModelInfer (vision
#                                view, each JPEG a framed BYTES tensor) beside the typed Infer on the
#                                same server, in alternating slices: images/s at c16, p50 at c1
#   bench/run.sh --with-peers    then set up and run MLServer and Triton (bench/peers/), each also
#                                with its lever for model calls side by side, and visionrpc's
#                                protocol port, all driven by one tritonclient load generator on the
#                                same images and model; their rows merge into the same tables (b,
#                                and b″: each server's best configuration)
#   bench/run.sh --statistics-cost  then print what ModelStatistics' per-model accounting costs per
#                                request (bench/statistics_cost.py, ~1 min; also runs alone:
#                                PYTHONPATH=src:. python -m bench.statistics_cost)
#   bench/run.sh --tiling        then print recall and images/s with and without tiled inference on
#                                generated 4, 12 and 20 MP frames with small defects (bench/tiling.py,
#                                a few minutes; also runs alone: PYTHONPATH=src:. python -m bench.tiling)
#   bench/run.sh --inspection    then print what measurements and verdicts cost per request
#                                (bench/measure_cost.py) and how accurate the measurements are against
#                                the generator's exact shapes (bench/measure_accuracy.py), a few minutes
# Extra arguments go to `python -m bench.harness` (run from any folder: PYTHONPATH is set here). Peer rows ($PEER_RESULTS, default
# bench/peers/peers-results.json) are merged into the JSON and the Markdown when present.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
harness=("$root/.venv/bin/python" -m bench.harness)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
out="$here/results"
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json="$out/bench-$stamp.json"

args=()
with_peers=0
statistics_cost=0
tiling=0
inspection=0
for arg in "$@"; do
  if [[ "$arg" == "--with-peers" ]]; then with_peers=1
  elif [[ "$arg" == "--statistics-cost" ]]; then statistics_cost=1
  elif [[ "$arg" == "--tiling" ]]; then tiling=1
  elif [[ "$arg" == "--inspection" ]]; then inspection=1
  else args+=("$arg"); fi
done

"${harness[@]}" --out "$json" ${args[@]+"${args[@]}"}
peer_file=${PEER_RESULTS:-$here/peers/peers-results.json}
if [[ $with_peers == 1 ]]; then
  "$here/peers/setup.sh"
  peer_file="$out/peers-$stamp.json"
  quick=()
  [[ " ${args[*]} " == *" --quick "* ]] && quick=(--quick)
  "$root/.venv/bin/python" "$here/peers/run_peers.py" --out "$peer_file" ${quick[@]+"${quick[@]}"}
fi
peers=()
if [[ -f "$peer_file" ]]; then
  peers=(--peer-results "$peer_file")
fi
"${harness[@]}" --from-json "$json" ${peers[@]+"${peers[@]}"} --markdown >"$out/bench-$stamp.md"
ln -sf "$(basename "$json")" "$out/latest.json"
ln -sf "bench-$stamp.md" "$out/latest.md"
echo "JSON: $json"
echo "Markdown: $out/bench-$stamp.md"
if [[ $statistics_cost == 1 ]]; then
  "$root/.venv/bin/python" -m bench.statistics_cost
fi
if [[ $tiling == 1 ]]; then
  "$root/.venv/bin/python" -m bench.tiling
fi
if [[ $inspection == 1 ]]; then
  "$root/.venv/bin/python" -m bench.measure_cost
  "$root/.venv/bin/python" -m bench.measure_accuracy
fi
