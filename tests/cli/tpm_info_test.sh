#!/usr/bin/env bash
# `custody tpm info` against a real software TPM: the human and JSON outputs, and the documented
# exit codes when the TPM is unreachable or the arguments are wrong.
#
# usage: tpm_info_test.sh CUSTODY_BINARY
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CUSTODY=$(realpath "$1")
WORK=$(mktemp -d /tmp/custody-tpm-info-test.XXXXXX)
cleanup() {
  [ -f "$WORK/pid" ] && kill "$(cat "$WORK/pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=lib.sh
source "$HERE/lib.sh"

mkdir -p "$WORK/state"
swtpm socket --tpm2 --tpmstate dir="$WORK/state" --server type=unixio,path="$WORK/sock" \
  --ctrl type=unixio,path="$WORK/sock.ctrl" --flags not-need-init,startup-clear \
  --daemon --pid file="$WORK/pid" || { echo "cannot start swtpm"; exit 1; }
for _ in $(seq 100); do [ -S "$WORK/sock" ] && break; sleep 0.05; done
TCTI="swtpm:path=$WORK/sock"

if "$CUSTODY" tpm info --tcti "$TCTI" >"$WORK/out" 2>"$WORK/err"; then
  ok "tpm info reaches the TPM"
else
  bad "tpm info failed: $(cat "$WORK/err")"
fi
grep -q "^TPM: *IBM via $TCTI" "$WORK/out" && ok "names the maker and the TCTI" || bad "maker line: $(head -1 "$WORK/out")"
grep -q "^PCR 7 " "$WORK/out" && grep -q "^EK (ECC): *name 000b" "$WORK/out" \
  && ok "shows EK names and PCRs" || { bad "EK/PCR lines"; cat "$WORK/out"; }

"$CUSTODY" tpm info --tcti "$TCTI" --json --pcrs 0,1 >"$WORK/json" 2>"$WORK/err"
/usr/bin/python3 - "$WORK/json" <<'PY' && ok "--json is machine-readable" || bad "--json content: $(cat "$WORK/json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["manufacturer"] == "IBM"
assert sorted(j["pcrs_sha256"]) == ["0", "1"]
assert j["ek"]["ecc_p256"]["name"].startswith("000b")
assert j["clock"]["clock_ms"] >= 0
PY

"$CUSTODY" tpm info --tcti "swtpm:path=$WORK/no-such-sock" >/dev/null 2>"$WORK/err"
rc=$?
[ "$rc" -eq 8 ] && grep -q "is the TPM reachable" "$WORK/err" \
  && ok "an unreachable TPM is exit 8 with the TCTI named" || bad "unreachable: exit $rc, $(cat "$WORK/err")"
"$CUSTODY" tpm info --tcti "$TCTI" --pcrs 0,24 >/dev/null 2>"$WORK/err"
rc=$?
[ "$rc" -eq 2 ] && grep -q "PCR 24 does not exist" "$WORK/err" \
  && ok "a bad PCR list is exit 2 and says why" || bad "bad PCRs: exit $rc, $(cat "$WORK/err")"

finish
