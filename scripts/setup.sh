#!/usr/bin/env bash
# One-time set-up, idempotent and quick the second time:
#   1. the pinned ONNX Runtime shared library -> .setblock/onnxruntime/ (from the PyPI wheel,
#      version + sha256 checked), which the runtime finds by itself;
#   2. the Python environment of export/ -> .venv (only with --python).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ORT_VERSION=1.32.0
# SETBLOCK_ORT_ARCH=aarch64 fetches another architecture's library into .setblock/onnxruntime-ARCH/
# (for cross-builds run under qemu: scripts/aarch64.sh).
arch=${SETBLOCK_ORT_ARCH:-$(uname -m)}
ort_dir=.setblock/onnxruntime
[ "$arch" = "$(uname -m)" ] || ort_dir=.setblock/onnxruntime-$arch
case "$arch" in
  x86_64) plat=manylinux_2_28_x86_64; wheel_sha=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d ;;
  aarch64) plat=manylinux_2_28_aarch64; wheel_sha=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c ;;
  *) echo "setup: no pinned ONNX Runtime for $arch; set ORT_DYLIB_PATH to a libonnxruntime >= 1.22" >&2; exit 2 ;;
esac
lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  echo "setup: fetching ONNX Runtime $ORT_VERSION ($plat) from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform "$plat" -d "$tmp" "onnxruntime==$ORT_VERSION"
  whl=$(ls "$tmp"/onnxruntime-*.whl)
  echo "$wheel_sha  $whl" | sha256sum -c --quiet - || { echo "setup: checksum mismatch for $whl" >&2; exit 2; }
  python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if "/capi/libonnxruntime" in n])
PY
  mkdir -p "$ort_dir"
  cp "$tmp"/onnxruntime/capi/libonnxruntime* "$ort_dir"/
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir"/libonnxruntime.so
fi

want_python=0
want_kotlin=0
for arg in "$@"; do
  case "$arg" in
    --python) want_python=1 ;;
    --kotlin) want_kotlin=1 ;;
    *) echo "setup: unknown option $arg (use --python, --kotlin)" >&2; exit 2 ;;
  esac
done

if [ "$want_kotlin" = 1 ]; then
  # JNA from Debian, kotlinc (with coroutines) from npm, project-local: for android/run-jvm-checks.sh
  if [ ! -f /usr/share/java/jna.jar ] || [ ! -d /usr/lib/x86_64-linux-gnu/jni ]; then
    echo "setup: installing Debian's JNA (libjna-java, libjna-jni)"
    sudo_cmd=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq libjna-java libjna-jni > /dev/null
  fi
  if [ ! -x .setblock/kotlin/node_modules/kotlin-compiler/bin/kotlinc ]; then
    echo "setup: installing kotlin-compiler 2.4.20 (npm) into .setblock/kotlin"
    mkdir -p .setblock/kotlin
    (cd .setblock/kotlin && npm install --silent --no-audit --no-fund kotlin-compiler@2.4.20 > /dev/null)
  fi
fi

if [ "$want_python" = 1 ]; then
  stamp=.venv/.requirements.sha256
  want=$(sha256sum export/requirements.txt | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: creating the Python environment .venv (first time: torch is about 3 GB)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -r export/requirements.txt
    .venv/bin/pip install --quiet -e export --no-deps
    echo "$want" > "$stamp"
  fi
fi
