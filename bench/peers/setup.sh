#!/usr/bin/env bash
# Create the peer virtualenvs under bench/peers/ (idempotent; re-run after changing the pins).
#   .venv-mlserver  Seldon MLServer 1.7.x + visionrpc (its runtime code runs inside the model)
#   .venv-triton    nvidia-pytriton 0.7.0 (a real Triton binary, ~450 MB) + tritonclient[grpc]
#                   + visionrpc; it also runs the load generator (client.py)
# visionrpc is installed into each venv so its runtime is importable there; neither peer is ever a
# dependency of visionrpc itself. The bench harness is not installed: a .pth file puts the
# checkout on each venv's path so that `bench.harness` (the image set) imports there too. It goes in without its own dependency list (--no-deps) plus the
# packages its runtime imports: the peers pin protobuf < 7 (MLServer) and old grpcio/protobuf
# (tritonclient), while visionrpc's generated gRPC code needs protobuf 7, and the peers never load
# that code. PYTHON picks the interpreter (default: python3.11).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3.11}

# uvloop 0.22+ kills MLServer 1.7's worker ("There is no current event loop in thread").
MLSERVER_PINS=("mlserver==1.7.1" "uvloop<0.22" "onnxruntime")
MLSERVER_SMOKE="import mlserver, visionrpc.runtime.pipeline, bench.harness.images"
# nvidia-pytriton pins numpy<2, so this venv gets OpenCV 4.x (the project's venv: numpy 2, OpenCV 5).
TRITON_PINS=("nvidia-pytriton==0.7.0" "tritonclient[grpc]")
TRITON_SMOKE="import pytriton.triton, tritonclient.grpc, bench.harness.images, visionrpc.runtime.pipeline"

# What visionrpc's runtime (decode, ONNX Runtime, post-processing, settings) and the bench image
# generator import; pip resolves them together with each peer's pins.
RUNTIME_DEPS=("onnxruntime" "numpy" "opencv-python-headless" "pycocotools" "pydantic-settings" "pyyaml" "simplejpeg")

# pip, minus the machine-wide "Location ... is ignored" warnings about absent local indexes.
quiet_pip() {
  local python=$1
  shift
  "$python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# link_checkout VENV: the checkout on VENV's sys.path (bench.harness), as an editable install would.
link_checkout() {
  local site
  site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$root" >"$site/visionrpc-bench-checkout.pth"
}

# make_venv NAME SMOKE PIN...: create bench/peers/NAME, install the pins plus visionrpc (editable),
# then import SMOKE. A stamp file remembers the pins and interpreter of the last good install.
make_venv() {
  local name=$1 smoke=$2
  shift 2
  local venv="$here/$name"
  local want
  want="$("$python" -c 'import sys; print(sys.version)') | $* | ${RUNTIME_DEPS[*]} | visionrpc --no-deps -e $root"
  if [[ -f "$venv/.setup-done" && "$(cat "$venv/.setup-done")" == "$want" ]]; then
    link_checkout "$venv" # venvs made before the harness left the package lack it
    (cd / && "$venv/bin/python" -c "$smoke")
    echo "$name: up to date"
    return
  fi
  echo "$name: installing $*"
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  quiet_pip "$venv/bin/python" install --quiet --upgrade pip
  quiet_pip "$venv/bin/python" install --quiet "$@" "${RUNTIME_DEPS[@]}"
  quiet_pip "$venv/bin/python" install --quiet --no-deps -e "$root"
  link_checkout "$venv"
  quiet_pip "$venv/bin/python" check 2>/dev/null | grep -v "^visionrpc " \
    || true # visionrpc's own pins are deliberately not met here (see above)
  (cd / && "$venv/bin/python" -c "$smoke") # from elsewhere: the .pth, not the cwd, finds bench/
  echo "$want" >"$venv/.setup-done"
  echo "$name: ready ($(du -sh "$venv" | cut -f1))"
}

make_venv .venv-mlserver "$MLSERVER_SMOKE" "${MLSERVER_PINS[@]}"
make_venv .venv-triton "$TRITON_SMOKE" "${TRITON_PINS[@]}"
