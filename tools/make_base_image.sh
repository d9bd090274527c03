#!/usr/bin/env bash
# Builds a Python base image from Debian packages, for sites where no container registry is
# reachable (FROM python:3.11-slim cannot be pulled): debootstrap a minimal Debian with Python,
# then import the tree as an image. Debian 12 (bookworm) ships Python 3.11.
#
#   tools/make_base_image.sh [IMAGE] [SUITE] [MIRROR]
#   docker build --build-arg BASE=visionrpc-base:bookworm -t visionrpc:local .
#
# IMAGE defaults to visionrpc-base:bookworm, SUITE to bookworm, MIRROR to the first Debian mirror
# in this machine's apt sources (else deb.debian.org). Needs root, debootstrap and docker.
# Set VISIONRPC_BASE_REBUILD=1 to rebuild an image that already exists.
set -euo pipefail

image="${1:-visionrpc-base:bookworm}"
suite="${2:-bookworm}"
mirror="${3:-}"

if [[ -z "${VISIONRPC_BASE_REBUILD:-}" ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists (VISIONRPC_BASE_REBUILD=1 rebuilds it)"
  exit 0
fi
for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "make_base_image: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done

if [[ -z "$mirror" ]]; then
  # The mirror apt already uses: a deb822 "URIs:" line or a one-line "deb URL suite" entry whose
  # suite is a plain Debian one (not -security, whose layout debootstrap cannot use).
  mirror="$(
    { grep -hs -A3 '^Types:.*deb' /etc/apt/sources.list.d/*.sources |
        awk '/^URIs:/ {print $2}'
      grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        awk '{for (i = 2; i <= NF; i++) if ($i !~ /^\[/) {print $i; break}}'
    } | grep -v -e security -e '^$' | grep -i debian | head -n1 || true
  )"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

root="$(mktemp -d /tmp/visionrpc-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# What a slim image leaves out: apt lists and caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $suite (python3, python3-venv, python3-pip)" \
  - "$image" >/dev/null
echo "built $image: $(docker image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"
