#!/usr/bin/env bash
# Installs every Debian 12 / Ubuntu 22.04+ package Custody needs to build, test, benchmark and
# fuzz. Idempotent: packages already present are skipped, and apt is only called when
# something is missing. Runs non-interactively (CI has no stdin).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang clang-format libclang-rt-14-dev lld
  # core: crypto and TPM
  libssl-dev openssl libtss2-dev tpm2-tools swtpm swtpm-tools
  # engines: libtorch (TorchScript) and OpenCV DNN (ONNX)
  libtorch-dev libopencv-dev
  # libraries used by the programs
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libtomlplusplus-dev libboost-dev
  # custodian storage
  libsqlite3-dev sqlite3
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # test-time model generation (run with /usr/bin/python3, see tests/models)
  python3 python3-torch python3-torchvision python3-numpy python3-onnx python3-cryptography
  # tests: a system clock the agent's tests can move without touching the machine's
  libfaketime
  # misc used by scripts
  xxd procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-deps: missing packages (${missing[*]}) and not root; install them or run as root" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
echo "install-deps: done"
