#!/usr/bin/env bash
# A Debian bookworm base image with python3 and venv, made here with debootstrap, for building the image
# where no registry can be reached (make image-test). Usage: local-base.sh <image name>
#
# It trusts what this machine trusts: the host's CA bundle is copied in and pip is pointed at it, so a
# TLS-inspecting proxy between this machine and PyPI works inside the build too.
set -euo pipefail
name=${1:?image name}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root/rootfs" "$mirror" >"$root/log" 2>&1 \
  || { tail -20 "$root/log"; exit 1; }
cp /etc/ssl/certs/ca-certificates.crt "$root/rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/*
tar -C "$root/rootfs" -c . | ${ENGINE:-podman} import \
  --change 'ENV=PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD=["python3"]' - "$name" >/dev/null
echo "local base image $name made"
