#!/usr/bin/env bash
# Install the offline Fashion-MNIST files (Debian package dataset-fashion-mnist) when they are missing.
# Needs root (or sudo) and a Debian/Ubuntu machine; elsewhere it says what to do and exits 0, and the
# toolkit falls back to a torchvision root given with --data-root.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; put Fashion-MNIST in a torchvision root and pass --data-root" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "note: not root; run 'apt-get install dataset-fashion-mnist' as root to get the offline data" >&2
    exit 0
  fi
fi
$SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
