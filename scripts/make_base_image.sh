#!/usr/bin/env bash
# Make a local Debian bookworm base image with Python 3.11, for machines that
# cannot pull `python:3.11-slim` from a registry. Needs root and debootstrap.
#
# Usage: sudo bash scripts/make_base_image.sh [IMAGE:TAG] [MIRROR]
#   IMAGE:TAG  default flame-base:bookworm
#   MIRROR     default http://deb.debian.org/debian (or $DEBIAN_MIRROR)
# Then build with: docker build --build-arg BASE_IMAGE=flame-base:bookworm ...
# Does nothing if the image exists already (FORCE=1 rebuilds it).
set -euo pipefail

image="${1:-flame-base:bookworm}"
mirror="${2:-${DEBIAN_MIRROR:-http://deb.debian.org/debian}}"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists; FORCE=1 to rebuild it"
    exit 0
fi
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || {
        echo "make_base_image: $tool is not installed" \
            "(Debian: apt-get install -y debootstrap docker.io)" >&2
        exit 1
    }
done
if [[ "$(id -u)" != 0 ]]; then
    echo "make_base_image: debootstrap needs root; run it with sudo" >&2
    exit 1
fi

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/flame-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

# A minimal Debian with Python 3.11 (/usr/bin/python3), venv, pip and CA certs.
echo "debootstrap bookworm from $mirror into $rootfs ..."
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror"

# Drop what an image does not need: package lists and caches.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image"
echo "made base image $image"
