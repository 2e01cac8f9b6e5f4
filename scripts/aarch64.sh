#!/usr/bin/env bash
# setblock for 64-bit Arm Linux (Raspberry Pi, Jetson, industrial boards): cross-built here and run
# under qemu-user. Installs what it needs (idempotent, quick the second time):
#   scripts/aarch64.sh build   cross-build the CLI and the FFI library (release)
#   scripts/aarch64.sh demo    run the demo under qemu-aarch64; it must print the x86-64 answer
#   scripts/aarch64.sh test    the Rust test suite (runtime + FFI crates) under qemu-aarch64
#   scripts/aarch64.sh c       the C example, built with aarch64-linux-gnu-gcc, under qemu
# ONNX Runtime's aarch64 library comes from the pinned PyPI wheel (scripts/setup.sh, by checksum).
# Emulation says nothing about speed: see docs/platforms.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
what=${1:-demo}

need=()
command -v aarch64-linux-gnu-gcc > /dev/null || need+=(gcc-aarch64-linux-gnu)
[ -f "$sysroot/lib/ld-linux-aarch64.so.1" ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 > /dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "aarch64: installing ${need[*]} (Debian)"
  sudo_cmd=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}" > /dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" > /dev/null
scripts/setup.sh > /dev/null                          # the x86-64 library (for the reference answer)
SETBLOCK_ORT_ARCH=aarch64 scripts/setup.sh > /dev/null # the aarch64 library

# The emulated board: SETBLOCK_QEMU_CPU=cortex-a72 (Raspberry Pi 4, the default) or cortex-a76
# (Raspberry Pi 5). ONNX Runtime's cpuinfo reads /proc/cpuinfo; qemu-user 7.2 passes the x86-64
# host's through, in which cpuinfo finds no Arm core and dereferences NULL while ONNX Runtime
# loads. qemu-user resolves a guest's absolute paths under its -L prefix first, so the prefix is
# the Debian cross sysroot plus the /proc/cpuinfo the board would show, one entry per host CPU.
cpu=${SETBLOCK_QEMU_CPU:-cortex-a72}
case "$cpu" in
  cortex-a72) part=0xd08 revision=3 features="fp asimd evtstrm crc32 cpuid" ;;
  cortex-a76) part=0xd0b revision=1 features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  *) echo "aarch64: SETBLOCK_QEMU_CPU=$cpu is not one of cortex-a72, cortex-a76" >&2; exit 2 ;;
esac
prefix=$root/target/aarch64-sysroot/$cpu
mkdir -p "$prefix/proc"
ln -sfn "$sysroot/lib" "$prefix/lib"
for ((i = 0; i < $(getconf _NPROCESSORS_CONF); i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: %d\n\n' \
    "$i" "$features" "$part" "$revision"
done > "$prefix/proc/cpuinfo"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L $prefix"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export ORT_DYLIB_PATH=$root/.setblock/onnxruntime-aarch64/libonnxruntime.so
run=(qemu-aarch64 -cpu "$cpu" -L "$prefix")
prompt="Ned has 5 boxes of eggs. Each box holds 7 eggs. Ned finds 14 more eggs. Ned gives 9 eggs to Ann. How many eggs does Ned have now?"

build() {
  cargo build --quiet --release --target "$target" --bin setblock -p setblock
  cargo build --quiet --release --target "$target" -p setblock-ffi --lib
}

case "$what" in
  build)
    build
    file "target/$target/release/setblock" "target/$target/release/libsetblock_ffi.so"
    ;;
  demo)
    build
    cargo build --quiet --release --bin setblock
    want=$(env -u ORT_DYLIB_PATH target/release/setblock generate --model models/demo --prompt "$prompt" --json)
    got=$("${run[@]}" "target/$target/release/setblock" generate --model models/demo --prompt "$prompt" --json)
    echo "$got" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["text"].strip()); print("(%d tokens in %d forwards, aarch64 under qemu)" % (d["generated_tokens"], d["forward_passes"]))'
    python3 - "$want" "$got" <<'PY'
import json, sys
want, got = (json.loads(a) for a in sys.argv[1:3])
if want["tokens"] != got["tokens"]:
    sys.exit(f"aarch64: tokens differ from x86-64:\n  x86-64:  {want['tokens']}\n  aarch64: {got['tokens']}")
print("aarch64: the same tokens as on x86-64")
PY
    ;;
  test)
    # tests that scale themselves down under emulation read this (qemu-user passes the environment)
    SETBLOCK_TEST_EMULATED=1 cargo test --quiet --release --target "$target" -p setblock -p setblock-ffi --tests 2>&1 \
      | grep -vE "^\s*$|^running 0 tests|^test result: ok. 0 passed"
    ;;
  c)
    build
    out=target/$target/c-example
    mkdir -p "$out"
    aarch64-linux-gnu-gcc -std=c11 -Wall -Wextra -Werror -O2 -pthread -I bindings/include bindings/examples/c/stream.c \
      -L "target/$target/release" -lsetblock_ffi -o "$out/stream"
    LD_LIBRARY_PATH=$root/target/$target/release "${run[@]}" "$out/stream" models/demo "sort 42 17 88 17 30 61"
    ;;
  *)
    echo "usage: scripts/aarch64.sh build|demo|test|c" >&2
    exit 2
    ;;
esac
