#!/usr/bin/env bash
# Build a local Debian base image with debootstrap + `docker import`, for hosts where no image
# registry is reachable (docker pull fails). The result stands in for `python:3.11-slim-bookworm`:
# Debian bookworm (minbase) with python3 (3.11), python3-venv and ca-certificates.
#
#   scripts/docker-base-image.sh                       # -> local/debian-python:bookworm
#   IMAGE=my/base:tag SUITE=bookworm scripts/docker-base-image.sh
#   docker build --build-arg BASE_IMAGE=local/debian-python:bookworm ...
#
# Needs root, debootstrap and a running Docker daemon. Takes a few minutes (downloads ~40 MB of .debs).
set -euo pipefail

IMAGE="${IMAGE:-local/debian-python:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PACKAGES="${PACKAGES:-python3,python3-venv,ca-certificates}"
DOCKER="${DOCKER:-docker}"

if [[ $(id -u) -ne 0 ]]; then
  echo "error: debootstrap needs root (run with sudo)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "error: install debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }

if [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE already exists (FORCE=1 to rebuild)"
  exit 0
fi

ROOTFS="$(mktemp -d /tmp/debootstrap.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR into $ROOTFS ..."
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"

# Trim what a container never needs: apt lists and caches, docs, man pages, locales but C/en.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/*
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
find "$ROOTFS"/usr/lib/python3* -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
# The image gets the Debian archive as its apt source (debootstrap already wrote it), and a
# resolv.conf is provided by Docker at run time.
: > "$ROOTFS"/etc/resolv.conf
rm -f "$ROOTFS"/etc/hostname

echo "docker import -> $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap $SUITE minbase + $PACKAGES" \
  - "$IMAGE"

"$DOCKER" run --rm "$IMAGE" python3 -c 'import sys, ssl, venv; print("python", sys.version.split()[0], "ok")'
"$DOCKER" image ls "$IMAGE"
