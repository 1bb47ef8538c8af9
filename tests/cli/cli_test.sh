#!/usr/bin/env bash
# End-to-end tests of the custody CLI's sealing workflow: keygen, seal, inspect, verify, the
# documented exit codes, file permissions, and interoperability with the independent reference
# reader (tests/format/reference_open.py).
#
# usage: cli_test.sh CUSTODY_BINARY
set -uo pipefail
CUSTODY=$1
HERE=$(cd "$(dirname "$0")" && pwd)
REF="$HERE/../format/reference_open.py"
WORK=$(mktemp -d /tmp/custody-cli-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

head -c 300000 /dev/urandom >model.onnx
printf '\x08' | dd of=model.onnx bs=1 count=1 conv=notrunc status=none  # looks like ONNX

expect 0 "keygen writes a key pair" -- "$CUSTODY" keygen --out vendor.key
[ "$(stat -c %a vendor.key)" = 600 ] && ok "vendor.key is mode 0600" || bad "vendor.key mode $(stat -c %a vendor.key)"
grep -q "BEGIN PUBLIC KEY" vendor.pub && ok "vendor.pub is PEM" || bad "vendor.pub is not PEM"
openssl pkey -in vendor.key -noout 2>/dev/null && ok "openssl reads vendor.key" || bad "openssl cannot read vendor.key"
expect 4 "keygen refuses to overwrite" -- "$CUSTODY" keygen --out vendor.key
expect_err "already exists" "keygen says why it refused"

expect 0 "seal a model" -- "$CUSTODY" seal model.onnx --engine onnx --name demo --version 1.2 \
  --not-after 2099-01-01 --meta labels=cat,dog --meta task=classify \
  --signing-key vendor.key --dek-out m.dek --out m.sealed --chunk-size 65536
[ "$(stat -c %a m.dek)" = 600 ] && ok "DEK file is mode 0600" || bad "DEK mode $(stat -c %a m.dek)"
grep -qE '^[0-9a-f]{64}$' m.dek && ok "DEK file is 64 hex digits" || bad "DEK file format"
expect 4 "seal refuses to overwrite outputs" -- "$CUSTODY" seal model.onnx --engine onnx --name demo \
  --version 1.2 --signing-key vendor.key --dek-out m.dek --out m.sealed
expect 0 "seal --force overwrites" -- "$CUSTODY" seal model.onnx --engine onnx --name demo \
  --version 1.2 --not-after 2099-01-01 --meta labels=cat,dog --signing-key vendor.key \
  --dek-out m.dek --out m.sealed --force
if cmp -s <(head -c 1000 model.onnx) <(head -c 1000 m.sealed); then bad "sealed file starts with plaintext"; else ok "sealed file does not contain the plaintext prefix"; fi

expect 0 "inspect without any key" -- "$CUSTODY" inspect m.sealed
grep -q "demo 1.2" "$WORK/out" && grep -q "not after:   2099-01-01T23:59:59Z" "$WORK/out" \
  && grep -q "meta:        labels=cat,dog" "$WORK/out" && ok "inspect shows the signed header" \
  || { bad "inspect output"; cat "$WORK/out"; }
expect 0 "inspect --json" -- "$CUSTODY" inspect m.sealed --json
/usr/bin/python3 -c "import json,sys; j=json.load(open('$WORK/out')); assert j['plaintext_bytes']==300000 and j['engine']=='onnx'" \
  && ok "inspect --json is machine-readable" || bad "inspect --json content"
expect 0 "inspect --vendor-pub confirms the signer" -- "$CUSTODY" inspect m.sealed --vendor-pub vendor.pub

expect 0 "verify decrypts and authenticates in memory" -- "$CUSTODY" verify m.sealed --key m.dek --vendor-pub vendor.pub
grep -q "verified: demo 1.2" "$WORK/out" && ok "verify reports what it verified" || bad "verify output"
ls | grep -q tmp && bad "temporary files left behind" || ok "no temporary files left behind"

# The independent reference reader opens what the CLI sealed, and gets the same bytes back.
if /usr/bin/python3 "$REF" m.sealed m.dek vendor.pub ref.out >/dev/null 2>"$WORK/err" && cmp -s ref.out model.onnx; then
  ok "reference reader (written from docs/FORMAT.md) opens the sealed file"
else bad "reference reader failed: $(cat "$WORK/err")"; fi

# Attacks and mistakes: each must fail with the documented exit code and a clear message.
"$CUSTODY" keygen --out other.key >/dev/null
expect 5 "a different vendor key is refused" -- "$CUSTODY" verify m.sealed --key m.dek --vendor-pub other.pub
expect_err "different vendor key" "wrong vendor key is named"
head -c 32 /dev/urandom | xxd -p -c 64 >wrong.dek
expect 5 "a wrong model key is refused" -- "$CUSTODY" verify m.sealed --key wrong.dek --vendor-pub vendor.pub
expect_err "key commitment mismatch" "wrong key is named"
cp m.sealed tampered.sealed
printf '\xff' | dd of=tampered.sealed bs=1 seek=200000 count=1 conv=notrunc status=none
expect 5 "a tampered chunk is refused" -- "$CUSTODY" verify tampered.sealed --key m.dek --vendor-pub vendor.pub
expect_err "failed authentication" "tampered chunk is named"
if /usr/bin/python3 "$REF" tampered.sealed m.dek vendor.pub ref2.out >/dev/null 2>&1; then
  bad "reference reader accepted a tampered file"; else ok "reference reader refuses the tampered file too"; fi
head -c 100000 m.sealed >short.sealed
expect 5 "a truncated file is refused" -- "$CUSTODY" verify short.sealed --key m.dek --vendor-pub vendor.pub
expect_err "truncated" "truncation is named"
expect 2 "a non-sealed file is refused" -- "$CUSTODY" inspect model.onnx
expect_err "not a Custody sealed model" "non-sealed file is named"
cp m.sealed v2.sealed
printf '\x02' | dd of=v2.sealed bs=1 seek=9 count=1 conv=notrunc status=none
expect 6 "an unsupported version is refused" -- "$CUSTODY" inspect v2.sealed
expect_err "version 2 is not supported" "version is named"
expect 3 "a missing file is reported" -- "$CUSTODY" inspect nothing.sealed
expect_err "nothing.sealed" "missing file is named"

chmod 644 vendor.key
expect 7 "a world-readable signing key is refused" -- "$CUSTODY" seal model.onnx --engine onnx \
  --name demo --version 1 --signing-key vendor.key --dek-out n.dek --out n.sealed
expect_err "chmod 600" "the fix is suggested"
[ -e n.dek ] && bad "DEK left behind after a refused seal" || ok "nothing written after a refused seal"
chmod 600 vendor.key
expect 2 "a malformed --meta is refused" -- "$CUSTODY" seal model.onnx --engine onnx --name demo \
  --version 1 --meta novalue --signing-key vendor.key --dek-out n.dek --out n.sealed
expect 2 "a bad date is refused" -- "$CUSTODY" seal model.onnx --engine onnx --name demo \
  --version 1 --not-after 2027-02-30 --signing-key vendor.key --dek-out n.dek --out n.sealed
expect 2 "a bad engine name is refused" -- "$CUSTODY" seal model.onnx --engine "Tensor Flow" \
  --name demo --version 1 --signing-key vendor.key --dek-out n.dek --out n.sealed
expect 2 "a non-TorchScript file sealed as torchscript is refused" -- "$CUSTODY" seal model.onnx \
  --engine torchscript --name demo --version 1 --signing-key vendor.key --dek-out n.dek --out n.sealed
expect_err "not a TorchScript archive" "engine mismatch is explained"
expect 0 "an empty model seals" -- bash -c ": >empty.bin && '$CUSTODY' seal empty.bin --engine linear --name e --version 0 --signing-key vendor.key --dek-out e.dek --out e.sealed"
expect 0 "an empty model verifies" -- "$CUSTODY" verify e.sealed --key e.dek --vendor-pub vendor.pub
expect 2 "a missing required option is a usage error" -- "$CUSTODY" seal model.onnx --engine onnx
expect 0 "expired models: sealing with a past date works" -- "$CUSTODY" seal model.onnx --engine onnx \
  --name old --version 1 --not-after 2001-01-01 --signing-key vendor.key --dek-out old.dek --out old.sealed
expect 7 "an expired model is refused" -- "$CUSTODY" verify old.sealed --key old.dek --vendor-pub vendor.pub
expect_err "expired at 2001-01-01T23:59:59Z" "expiry is named"


# custody infer / custody status without an agent (end-to-end use against a real agent is tested
# elsewhere): the socket is named, the exit code is 8 (unavailable), and local mistakes are found
# before any connection.
/usr/bin/python3 -c "import struct, sys
h = \"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\"
h += ' ' * (63 - 10 - len(h)) + '\\n'
sys.stdout.buffer.write(b'\\x93NUMPY\\x01\\x00' + struct.pack('<H', len(h)) + h.encode() + struct.pack('<f', 1.0))" >in.npy
expect 8 "infer without an agent is unavailable" -- "$CUSTODY" infer --socket "$WORK/none.sock" \
  --model m --input in.npy
expect_err "cannot connect to the agent at $WORK/none.sock" "infer names the socket"
expect 8 "status without an agent is unavailable" -- "$CUSTODY" status --socket /nonexistent
expect_err "cannot connect to the agent at /nonexistent" "status names the socket"
expect 8 "the socket comes from CUSTODY_AGENT_SOCKET" -- env CUSTODY_AGENT_SOCKET="$WORK/env.sock" \
  "$CUSTODY" status
expect_err "$WORK/env.sock" "the socket from the environment is named"
expect 2 "infer refuses a model name that is not a route" -- "$CUSTODY" infer --socket "$WORK/none.sock" \
  --model a/b --input in.npy
expect 3 "infer names a missing input" -- "$CUSTODY" infer --socket "$WORK/none.sock" --model m \
  --input missing.npy
expect_err "missing.npy" "the missing input is named"
: >taken.npy
expect 4 "infer refuses to overwrite an output before asking the agent" -- "$CUSTODY" infer \
  --socket "$WORK/none.sock" --model m --input in.npy --output taken.npy
expect 2 "infer needs --model" -- "$CUSTODY" infer --input in.npy

finish
