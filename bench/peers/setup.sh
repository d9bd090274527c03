#!/usr/bin/env bash
# Create the peer virtualenvs under bench/peers/ (idempotent; re-run after changing the pins).
#   .venv-mlserver  Seldon MLServer 1.7.x + visionrpc (its runtime code runs inside the model)
#   .venv-triton    nvidia-pytriton 0.7.0 (a real Triton binary, ~450 MB) + tritonclient[grpc]
#                   + visionrpc; it also runs the load generator (client.py)
# visionrpc is installed into each venv so its runtime is importable there; neither peer is ever a
# dependency of visionrpc itself. PYTHON picks the interpreter (default: python3.11).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3.11}

MLSERVER_PINS=("mlserver==1.7.1" "uvloop<0.22" "onnxruntime")
TRITON_PINS=("nvidia-pytriton==0.7.0" "tritonclient[grpc]")

# make_venv NAME PIN...: create bench/peers/NAME and install the pins plus visionrpc (editable).
# A stamp file remembers the pins (and the interpreter) of the last successful install.
make_venv() {
  local name=$1
  shift
  local venv="$here/$name"
  local want
  want="$("$python" -c 'import sys; print(sys.version)') | $* | visionrpc -e $root"
  if [[ -f "$venv/.setup-done" && "$(cat "$venv/.setup-done")" == "$want" ]]; then
    echo "$name: up to date"
    return
  fi
  echo "$name: installing $*"
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "$@" -e "$root"
  "$venv/bin/python" -m pip check || echo "$name: pip check reported conflicts (see above)" >&2
  echo "$want" >"$venv/.setup-done"
  echo "$name: ready ($(du -sh "$venv" | cut -f1))"
}

make_venv .venv-mlserver "${MLSERVER_PINS[@]}"
make_venv .venv-triton "${TRITON_PINS[@]}"
