#!/usr/bin/env bash
# Install the offline Fashion-MNIST files (Debian package dataset-fashion-mnist) when they are missing.
# Exits non-zero (and so does `make test`) when the files cannot be had: the Fashion-MNIST tests must run,
# never skip silently. Elsewhere than Debian/Ubuntu, put the gzipped IDX files in a folder and point
# REMOVALNET_FASHION_MNIST_DIR at it.
set -u
dir=/usr/share/datasets/fashion-mnist
have() { [ -f "$1/train-images-idx3-ubyte.gz" ] || [ -f "$1/train-images-idx3-ubyte" ]; }
if [ -n "${REMOVALNET_FASHION_MNIST_DIR:-}" ]; then
  if have "$REMOVALNET_FASHION_MNIST_DIR"; then exit 0; fi
  echo "error: REMOVALNET_FASHION_MNIST_DIR=$REMOVALNET_FASHION_MNIST_DIR has no train-images-idx3-ubyte(.gz)" >&2
  exit 1
fi
if have "$dir"; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: Fashion-MNIST is missing and there is no apt-get here; put its IDX files in a folder and set REMOVALNET_FASHION_MNIST_DIR" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: Fashion-MNIST is missing; run 'apt-get install dataset-fashion-mnist' as root, or set REMOVALNET_FASHION_MNIST_DIR" >&2
    exit 1
  fi
fi
if ! { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; }; then
  echo "error: apt-get could not install dataset-fashion-mnist" >&2
  exit 1
fi
if ! have "$dir"; then
  echo "error: dataset-fashion-mnist installed but $dir/train-images-idx3-ubyte.gz is missing" >&2
  exit 1
fi
