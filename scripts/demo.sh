#!/usr/bin/env bash
# The end-to-end demo behind `make demo`: a vendor seals two models (TorchScript and ONNX),
# anyone can inspect them, the vendor verifies them, and each runs from protected memory with
# output byte-identical to the plain model. A tampered copy is refused. Then the product's main
# job, on one machine: the vendor runs a custodian; a device (custody-agent on a software TPM
# standing in for the kiosk's) enrolls, attests, gets a lease and serves the model through its
# socket; the budget runs low, the agent asks for more, an operator approves; the budget runs
# out and the agent refuses; the custodian goes down and the agent serves within its offline
# grace, then refuses; the agent's state copied to another TPM gets nothing; the stop switch
# ends serving within a second; the audit log is checked offline. Every step checks what it
# claims; the demo exits 0 only if all of them behaved.
#
# usage: scripts/demo.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-build}" && pwd)
CUSTODY="$BUILD/src/cli/custody"
CUSTODIAN="$BUILD/src/custodian/custodian"
AGENT="$BUILD/src/agent/custody-agent"
DEMO="$BUILD/demo"
for bin in "$CUSTODY" "$CUSTODIAN" "$AGENT"; do
  [ -x "$bin" ] || { echo "demo: $bin is missing; run 'make build' first" >&2; exit 1; }
done

bold() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
say() { printf '$ %s\n' "$*" | sed -e "s|$CUSTODIAN|custodian|g" -e "s|$AGENT|custody-agent|g" -e "s|$CUSTODY|custody|g"; }
run() { say "$@"; "$@"; }
ok() { echo "OK: $*"; }
fail() { echo "DEMO FAILED: $*" >&2; exit 1; }

mkdir -p "$DEMO"
bold "Generating the demo models (torchvision MobileNetV3-Small and ResNet-18, random weights, made locally)"
/usr/bin/python3 "$ROOT/tests/models/make_models.py" "$DEMO/models"
cd "$DEMO"
rm -f vendor.key vendor.pub ./*.sealed ./*.dek ./*.npy

bold "1. The vendor creates its sealing key"
run "$CUSTODY" keygen --out vendor.key

demo_model() {  # demo_model FILE ENGINE NAME
  local file=$1 engine=$2 name=$3
  bold "2. Seal $name ($engine) — encrypted, signed, safe to ship in the clear"
  run "$CUSTODY" seal "models/$file" --engine "$engine" --name "$name" --version 1.0 \
    --not-after 2099-12-31 --meta task=image-classification --meta input=float32[1,3,224,224] \
    --signing-key vendor.key --dek-out "$name.dek" --out "$name.sealed"

  bold "3. Anyone can inspect the signed header (no key needed)"
  run "$CUSTODY" inspect "$name.sealed" --vendor-pub vendor.pub

  bold "4. Verify: decrypt and authenticate every chunk in protected memory, write nothing"
  run "$CUSTODY" verify "$name.sealed" --key "$name.dek" --vendor-pub vendor.pub

  bold "5. Run it from memory (development path), and the plain model for comparison"
  run "$CUSTODY" run "$name.sealed" --key "$name.dek" --vendor-pub vendor.pub \
    --input models/input.npy --output "$name-sealed-out.npy"
  run "$CUSTODY" run "models/$file" --plain --engine "$engine" \
    --input models/input.npy --output "$name-plain-out.npy"
  if cmp -s "$name-sealed-out.npy" "$name-plain-out.npy"; then
    echo "OK: the sealed model's output is byte-identical to the plain model's ($(stat -c %s "$name-sealed-out.npy") bytes)"
  else
    echo "MISMATCH: sealed and plain outputs differ" >&2
    exit 1
  fi
}

demo_model mobilenet_v3_small.pt torchscript mobilenet-ts
demo_model resnet18.onnx onnx resnet18-onnx

bold "6. A tampered copy is refused (one byte changed in the middle)"
cp mobilenet-ts.sealed tampered.sealed
printf '\x5a' | dd of=tampered.sealed bs=1 seek=$(($(stat -c %s tampered.sealed) / 2)) count=1 conv=notrunc status=none
set +e
run "$CUSTODY" verify tampered.sealed --key mobilenet-ts.dek --vendor-pub vendor.pub
rc=$?
set -e
[ "$rc" -eq 5 ] && echo "OK: refused with exit code 5 (verification failed)" || { echo "expected exit 5, got $rc" >&2; exit 1; }

bold "7. The device's TPM anchors what comes next (a software TPM stands in for the kiosk's)"
TPM_DIR="$DEMO/swtpm"
TPM2_DIR="$DEMO/swtpm-other"
DEV="$DEMO/device"
rm -rf "$TPM_DIR" "$TPM2_DIR" "$DEV"
mkdir -p "$TPM_DIR/state" "$TPM2_DIR/state" "$DEV/models" "$DEV/run"
start_swtpm() {  # start_swtpm DIR
  swtpm socket --tpm2 --tpmstate dir="$1/state" --server type=unixio,path="$1/sock" \
    --ctrl type=unixio,path="$1/sock.ctrl" --flags not-need-init,startup-clear \
    --daemon --pid file="$1/pid"
  for _ in $(seq 100); do [ -S "$1/sock" ] && return 0; sleep 0.05; done
  fail "swtpm did not start in $1"
}
SERVER_PID= AGENT_PID=
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; true; }
cleanup() {
  stop_pid "$AGENT_PID"
  stop_pid "$SERVER_PID"
  for d in "$TPM_DIR" "$TPM2_DIR"; do kill "$(cat "$d/pid" 2>/dev/null)" 2>/dev/null || true; done
}
trap cleanup EXIT
start_swtpm "$TPM_DIR"
run "$CUSTODY" tpm info --tcti "swtpm:path=$TPM_DIR/sock"
"$CUSTODY" tpm info --tcti "swtpm:path=$TPM_DIR/sock" --pcrs 0,2,4,7 --json >golden.json

bold "8. The vendor's custodian: keys, database and the first admin token"
CUST="$DEMO/custodian"
rm -rf "$CUST" ./*.token audit.ndjson audit-tampered.ndjson
mkdir -p "$CUST"
run "$CUSTODIAN" init --data "$CUST/data" --listen 127.0.0.1:0 | tee "$CUST.init" \
  | sed 's/^cust_.*/cust_… (hidden in the demo output; kept in admin.token)/'
(umask 077; grep '^cust_' "$CUST.init" >admin.token)
rm -f "$CUST.init"
start_custodian() {
  : >"$CUST/serve.log"
  "$CUSTODIAN" serve --config "$CUST/data/custodian.toml" 2>"$CUST/serve.log" &
  SERVER_PID=$!
  PORT=
  for _ in $(seq 300); do
    PORT=$(sed -n 's/^custodian: serving on port \([0-9]*\)$/\1/p' "$CUST/serve.log")
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$CUST/serve.log" >&2; fail "the custodian exited"; }
    sleep 0.1
  done
  cat "$CUST/serve.log" >&2
  fail "the custodian did not start"
}
start_custodian
# Devices keep the address they enrolled with: from now on the custodian listens on this port.
sed -i "s|^listen = \"127.0.0.1:0\"|listen = \"127.0.0.1:$PORT\"|" "$CUST/data/custodian.toml"
echo "custodian serving on https://127.0.0.1:$PORT (log: $CUST/serve.log)"
export CUSTODY_URL="https://127.0.0.1:$PORT" CUSTODY_CA="$CUST/data/keys/ca.pem"
admin() { run "$CUSTODY" admin --token-file admin.token "$@"; }
admin_json() { "$CUSTODY" admin --token-file admin.token --json "$@"; }
py() { /usr/bin/python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }

bold "9. The vendor registers the model key, a device group with its approved PCRs, a licence"
admin models register mobilenet-ts.sealed --key mobilenet-ts.dek --vendor-pub vendor.pub
MODEL_ID=$("$CUSTODY" inspect mobilenet-ts.sealed --json | py 's["model_id"]')
admin groups create kiosks --pcrs 0,2,4,7 --no-ek-certificate
admin groups golden-set add kiosks --name factory --from golden.json
echo "A small budget (24 inferences) and a short offline grace (8 s) so the demo reaches both ends."
LICENCE=$(admin_json licences create --model "$MODEL_ID" --group kiosks --budget 24 \
  --not-after 2099-12-31 --offline-grace 8s --manual | py 's["licence_id"]')
admin licences list
admin enrollment-tokens create --group kiosks --expires 1h --out kiosk.token

bold "10. The kiosk: custody-agent enrolls with its TPM and starts serving"
cp mobilenet-ts.sealed "$DEV/models/"
SOCK="$DEV/run/agent.sock"
cat >"$DEV/agent.toml" <<TOML
state_dir = "$DEV/state"
models_dir = "$DEV/models"
vendor_public_key = "$DEMO/vendor.pub"
tcti = "swtpm:path=$TPM_DIR/sock"

[custodian]
url = "$CUSTODY_URL"
ca = "$CUSTODY_CA"

[serve]
socket = "$SOCK"

[metering]
unit = 4                    # requests per TPM counter step
extension_threshold = 8     # ask for more when 8 are left
extension_amount = 24
report_interval = "2s"
TOML
sed 's/^/    /' "$DEV/agent.toml"
run "$AGENT" enroll --custodian "$CUSTODY_URL" --config "$DEV/agent.toml" --token-file kiosk.token
say "$AGENT" run --config "$DEV/agent.toml" "&"
"$AGENT" run --config "$DEV/agent.toml" 2>"$DEV/agent.log" &
AGENT_PID=$!
export CUSTODY_AGENT_SOCKET="$SOCK"
status() { "$CUSTODY" status --json 2>/dev/null; }
serving() { [ "$(status | py 's["models"][0]["serving"]' 2>/dev/null)" = True ]; }
wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 tenths=$(($2 * 10))
  shift 2
  for ((i = 0; i < tenths; i++)); do "$@" && return 0; sleep 0.1; done
  echo "--- agent log (last 20 lines)" >&2
  tail -20 "$DEV/agent.log" >&2
  fail "$what (waited ${tenths}00 ms)"
}
wait_for "the agent should be serving" 60 serving
run "$CUSTODY" status
DEVICE_ID=$(status | py 's["agent"]["device_id"]')

bold "11. The kiosk app asks for inferences through the agent's socket (KServe v2)"
run "$CUSTODY" infer --model mobilenet-ts --input models/input.npy
infer() { "$CUSTODY" infer --model mobilenet-ts --input models/input.npy --output "$DEV/out.npy" --force >"$DEV/infer.out" 2>&1; }
SERVED=1
for _ in 1 2 3 4 5; do infer || { cat "$DEV/infer.out" >&2; fail "inference $SERVED was refused"; }; SERVED=$((SERVED + 1)); done
ok "$SERVED inferences served; any HTTP client works too:"
say curl --unix-socket "$SOCK" http://agent/v2/models/mobilenet-ts
/usr/bin/python3 - "$SOCK" <<'PY'
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("agent"); c.request("GET", "/v2/models/mobilenet-ts"); print(json.dumps(json.load(c.getresponse())))
PY

bold "12. The budget runs low: the agent asks its custodian for more; an operator approves"
pending() { [ "$(admin_json extensions list --status pending | py 'len(s if isinstance(s, list) else s["extension_requests"])')" -ge 1 ]; }
until pending; do
  infer || { cat "$DEV/infer.out" >&2; fail "refused before the budget ran low"; }
  SERVED=$((SERVED + 1))
  [ "$SERVED" -le 24 ] || fail "no extension request by the end of the budget"
  sleep 0.2
done
ok "after $SERVED inferences ($(status | py 's["models"][0]["budget"]["remaining"]') left) the agent filed a request"
admin extensions list --status pending
REQUEST=$(admin_json extensions list --status pending | py '(s if isinstance(s, list) else s["extension_requests"])[0]["request_id"]')
admin extensions approve "$REQUEST"
limit() { status | py 's["models"][0]["budget"]["limit"]'; }
wait_for "the approved budget should reach the agent" 20 test "$(limit)" -gt 24
ok "the agent's limit is now $(limit): serving continues"
run "$CUSTODY" status

bold "13. The budget runs out: the agent refuses, and says why"
while infer; do
  SERVED=$((SERVED + 1))
  [ "$SERVED" -le 100 ] || fail "the budget never ran out"
done
rc=0
run "$CUSTODY" infer --model mobilenet-ts --input models/input.npy || rc=$?
[ "$rc" -eq 7 ] || fail "expected a refusal (exit 7), got exit $rc"
grep -q budget_exhausted "$DEV/infer.out" || fail "the refusal should name budget_exhausted"
ok "refused after $SERVED inferences (24 licensed + 24 approved): the TPM counter and the lease's limit agree"
echo "The operator approves the request the agent filed when this budget ran low:"
wait_for "a second extension request" 20 pending
REQUEST=$(admin_json extensions list --status pending | py '(s if isinstance(s, list) else s["extension_requests"])[0]["request_id"]')
admin extensions approve "$REQUEST"
wait_for "serving should resume after the approval" 20 infer
ok "serving again"

bold "14. The custodian goes down: the agent serves within its offline grace (TPM clock), then refuses"
stop_pid "$SERVER_PID"
SERVER_PID=
echo "custodian stopped"
infer || { cat "$DEV/infer.out" >&2; fail "refused within the offline grace"; }
ok "served while offline; grace left: $(status | py 's["models"][0]["offline_grace"]["left_ms"]') ms"
grace_over() { [ "$(status | py 's["models"][0]["refusal"]' 2>/dev/null)" = offline_grace_expired ]; }
wait_for "the agent should refuse once the grace is over" 30 grace_over
rc=0
run "$CUSTODY" infer --model mobilenet-ts --input models/input.npy || rc=$?
[ "$rc" -eq 7 ] || fail "expected a refusal (exit 7) after the grace, got exit $rc"
ok "refused once the grace measured by the TPM clock ran out (changing the system clock would not help)"
echo "The custodian comes back; the agent reconnects (with backoff), attests again and serves:"
start_custodian
wait_for "the agent should serve again after the custodian returns" 90 infer
ok "serving again"

bold "15. The copied-state attack: the agent's whole state directory on another machine's TPM"
start_swtpm "$TPM2_DIR"
cp -a "$DEV/state" "$DEV/state-copy"
sed -e "s|$DEV/state\"|$DEV/state-copy\"|" -e "s|$TPM_DIR/sock|$TPM2_DIR/sock|" \
  -e "s|$SOCK|$DEV/run/copy.sock|" "$DEV/agent.toml" >"$DEV/copy.toml"
rc=0
run "$AGENT" run --config "$DEV/copy.toml" || rc=$?
[ "$rc" -eq 7 ] || fail "the copy should be refused (exit 7), got exit $rc"
ok "the copy gets no lease and no model: its keys were made by, and only load in, the first TPM"
infer || fail "the genuine device should still serve"

bold "16. The stop switch: the vendor revokes the device; it refuses within a second"
infer
admin revoke device "$DEVICE_ID" --reason "demo: contract ended"
t0=$(date +%s%N)
ms=
while [ $((($(date +%s%N) - t0) / 1000000)) -lt 3000 ]; do
  if ! infer && grep -q revoked "$DEV/infer.out"; then ms=$((($(date +%s%N) - t0) / 1000000)); break; fi
done
[ -n "$ms" ] || fail "the device still served 3 s after the stop switch"
[ "$ms" -le 1000 ] || fail "the device took $ms ms to refuse after the stop switch (more than a second)"
cat "$DEV/infer.out"
ok "refused ${ms} ms after the revocation was recorded; the model was wiped:"
run "$CUSTODY" status

bold "17. The audit log: exported, then checked offline (and a tampered copy refused)"
admin audit export --out audit.ndjson
admin audit verify audit.ndjson
/usr/bin/python3 - <<'PY'  # rewrite who did entry 3
import json
lines = open("audit.ndjson").read().splitlines()
entry = json.loads(lines[2])
entry["actor"] = "someone-else"
lines[2] = json.dumps(entry, separators=(",", ":"))
open("audit-tampered.ndjson", "w").write("\n".join(lines) + "\n")
PY
rc=0
run "$CUSTODY" admin audit verify audit-tampered.ndjson || rc=$?
[ "$rc" -eq 5 ] && ok "the altered entry is found (exit 5)" || fail "expected exit 5, got $rc"

bold "18. The agent stops in order (SIGTERM): models wiped, journal synced"
kill -TERM "$AGENT_PID"
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=
[ "$rc" -eq 0 ] || { tail -20 "$DEV/agent.log" >&2; fail "the agent exited with $rc"; }
tail -3 "$DEV/agent.log"

bold "Demo complete: every step behaved as stated. Files are in $DEMO"
