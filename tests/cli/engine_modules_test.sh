#!/usr/bin/env bash
# The built-in engine modules are found next to libcustody-engine and checked before they are
# loaded into a process that holds decrypted models: a missing module, one that is
# world-writable, one that declares another kind, and one from another build are each refused
# with a message that names the file and the fix; a good one loads.
#
# usage: engine_modules_test.sh CUSTODY_BINARY LIBRARY_DIR
# The libraries are copied into a scratch tree and found there through LD_LIBRARY_PATH (the
# programs carry RUNPATH, which it overrides), so each case arranges its own engine directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CUSTODY=$(realpath "$1")
LIBDIR=$(realpath "$2")
WORK=$(mktemp -d /tmp/custody-modules-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
mkdir -p lib/custody/engines
cp "$LIBDIR"/libcustody-core.so "$LIBDIR"/libcustody-engine.so lib/
ENGINES=$LIBDIR/custody/engines
MODULE=lib/custody/engines/libcustody-builtin-torchscript.so

if [ ! -f "$ENGINES/libcustody-builtin-torchscript.so" ]; then
  echo "skipped: this build has no torchscript engine module"
  exit 0
fi

# shellcheck source=lib.sh
source "$HERE/lib.sh"

printf 'PK\003\004 not really a TorchScript archive' >model.pt
# A 1x3 float32 .npy (version 1.0 header padded to 64 bytes, then 12 bytes of zeros).
{
  printf '\x93NUMPY\x01\x00\x76\x00'
  printf "%-117s\n" "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }"
  head -c 12 /dev/zero
} >x.npy

# check DESCRIPTION WANT_EXIT TEXT: runs `custody run` on the plain model and checks both.
check() {
  local desc=$1 want=$2 text=$3
  LD_LIBRARY_PATH="$WORK/lib" "$CUSTODY" run model.pt --plain --engine torchscript --input x.npy \
    --output y.npy >out 2>err
  local got=$?
  if [ "$got" -eq "$want" ] && grep -q -- "$text" err; then
    ok "$desc (exit $got)"
  else
    bad "$desc: expected exit $want and '$text', got exit $got"
    sed 's/^/     | /' err
  fi
}

check "a missing module is named, with the fix" 7 "cannot be found.*reinstall Custody"

cp "$ENGINES/libcustody-builtin-onnx.so" "$MODULE" 2>/dev/null || cp "$ENGINES/libcustody-builtin-torchscript.so" "$MODULE"
if [ -f "$ENGINES/libcustody-builtin-onnx.so" ]; then
  check "a module of another kind under this name is refused" 7 "declares kind 'onnx', not 'torchscript'"
fi

cp "$ENGINES/libcustody-builtin-torchscript.so" "$MODULE"
chmod o+w "$MODULE"
check "a world-writable module is refused" 7 "world-writable; refusing to load it"
chmod o-w "$MODULE"

# The same module with its build identity changed, as if left over from another version.
/usr/bin/python3 - "$MODULE" <<'PY'
import sys
path = sys.argv[1]
data = open(path, 'rb').read()
i = data.find(b'custody-0.')
assert i >= 0, 'build id not found in the module'
j = data.index(b'/', i)
data = data[:i] + b'custody-9.' + b'9' * (j - i - 10) + data[j:]
open(path, 'wb').write(data)
PY
check "a module from another build is refused" 7 "comes from build 'custody-9.*reinstall"

cp "$ENGINES/libcustody-builtin-torchscript.so" "$MODULE"
check "the genuine module loads (and rejects the fake model itself)" 2 "torchscript: cannot load the model"

finish
