#!/usr/bin/env bash
# Fills wheelhouse/ with wheels of the image's dependencies, fetched by pip on this machine (with
# this machine's index, proxy and CA settings), so that `docker build` installs them without
# reaching any index: for sites with no index inside builds, and for fast, offline CI builds.
#
#   tools/make_wheelhouse.sh [EXTRA] [PYTHON]
#   docker build --build-arg PIP_OFFLINE=1 ...
#
# EXTRA is the pyproject extra the image installs: server (default, the CPU image) or gpu.
# PYTHON is the interpreter pip runs under (default python3); it must match the image's Python
# (3.11 for the Debian bookworm base), as pip picks wheels for the interpreter it runs under.
# visionrpc itself is not put here: the image builds it from the source it copies.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="${1:-server}"
python="${2:-python3}"
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
{
  "$python" tools/extra_requirements.py "$extra"
  echo "setuptools>=69"  # the build backend, to build visionrpc inside the image without an index
} >"$requirements"
mkdir -p wheelhouse
"$python" -m pip wheel --quiet --wheel-dir wheelhouse -r "$requirements"
echo "wheelhouse/: $(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"
