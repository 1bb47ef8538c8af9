#!/usr/bin/env bash
# The end-to-end demo behind `make demo`: a vendor seals two models (TorchScript and ONNX),
# anyone can inspect them, the vendor verifies them, and each runs from protected memory with
# output byte-identical to the plain model. A tampered copy is refused. The TPM that anchors
# leases on a device is shown (a software TPM stands in for it here). Finally the vendor runs a
# custodian: a device (a swtpm-backed stand-in until the agent lands) enrolls, attests, gets a
# lease and reports usage; an operator approves more budget, pulls the stop switch and checks
# the audit log offline.
#
# usage: scripts/demo.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-build}" && pwd)
CUSTODY="$BUILD/src/cli/custody"
CUSTODIAN="$BUILD/src/custodian/custodian"
DEVICE="$BUILD/tests/custody-test-device"
DEMO="$BUILD/demo"
[ -x "$CUSTODY" ] || { echo "demo: $CUSTODY is missing; run 'make build' first" >&2; exit 1; }

bold() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
run() { printf '$ %s\n' "$*" | sed -e "s|$CUSTODIAN|custodian|g" -e "s|$CUSTODY|custody|g"; "$@"; }

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

bold "7. The device's TPM anchors what comes next (a software TPM stands in for the device's)"
TPM_DIR="$DEMO/swtpm"
rm -rf "$TPM_DIR"
mkdir -p "$TPM_DIR/state"
swtpm socket --tpm2 --tpmstate dir="$TPM_DIR/state" --server type=unixio,path="$TPM_DIR/sock" \
  --ctrl type=unixio,path="$TPM_DIR/sock.ctrl" --flags not-need-init,startup-clear \
  --daemon --pid file="$TPM_DIR/pid"
SERVER_PID=
cleanup() {
  kill "$(cat "$TPM_DIR/pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  true
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$TPM_DIR/sock" ] && break; sleep 0.05; done
run "$CUSTODY" tpm info --tcti "swtpm:path=$TPM_DIR/sock"
"$CUSTODY" tpm info --tcti "swtpm:path=$TPM_DIR/sock" --pcrs 0,2,4,7 --json >golden.json

bold "8. The vendor's custodian: keys, database and the first admin token"
CUST="$DEMO/custodian"
rm -rf "$CUST" ./*.token audit.ndjson
mkdir -p "$CUST"
run "$CUSTODIAN" init --data "$CUST/data" --listen 127.0.0.1:0 | tee "$CUST.init" \
  | sed 's/^cust_.*/cust_… (hidden in the demo output; kept in admin.token)/'
(umask 077; grep '^cust_' "$CUST.init" >admin.token)
rm -f "$CUST.init"
"$CUSTODIAN" serve --config "$CUST/data/custodian.toml" 2>"$CUST/serve.log" &
SERVER_PID=$!
PORT=
for _ in $(seq 300); do
  PORT=$(sed -n 's/^custodian: serving on port \([0-9]*\)$/\1/p' "$CUST/serve.log")
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$CUST/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { echo "demo: the custodian did not start" >&2; cat "$CUST/serve.log" >&2; exit 1; }
echo "custodian serving on https://127.0.0.1:$PORT (log: $CUST/serve.log)"
export CUSTODY_URL="https://127.0.0.1:$PORT" CUSTODY_CA="$CUST/data/keys/ca.pem"
admin() { run "$CUSTODY" admin --token-file admin.token "$@"; }

bold "9. The vendor registers the model key, a device group with its approved PCRs, a licence"
admin models register mobilenet-ts.sealed --key mobilenet-ts.dek --vendor-pub vendor.pub
MODEL_ID=$("$CUSTODY" inspect mobilenet-ts.sealed --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model_id"])')
admin groups create kiosks --pcrs 0,2,4,7 --no-ek-certificate
admin groups golden-set add kiosks --name factory --from golden.json
LICENCE=$("$CUSTODY" admin --token-file admin.token licences create --model "$MODEL_ID" --group kiosks \
  --budget 1000 --not-after 2099-12-31 --offline-grace 72h --manual --json \
  | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["licence_id"])')
admin licences list
admin enrollment-tokens create --group kiosks --expires 1h --out kiosk.token

bold "10. A device enrolls (TPM credential activation), attests, gets a lease, uses 990 inferences, asks for more"
printf '$ %s\n' "custody-test-device --enrollment-token-file kiosk.token --use 990 --extend 5000 (a swtpm stand-in for custody-agent)"
"$DEVICE" --port "$PORT" --ca "$CUSTODY_CA" --enrollment-token-file kiosk.token --model "$MODEL_ID" \
  --use 990 --licence "$LICENCE" --extend 5000 >device.json
/usr/bin/python3 -m json.tool device.json
DEVICE_ID=$(/usr/bin/python3 -c 'import json; print(json.load(open("device.json"))["device_id"])')
REQUEST=$(/usr/bin/python3 -c 'import json; print(json.load(open("device.json"))["extensions"][0]["request_id"])')
admin devices show "$DEVICE_ID"

bold "11. An operator approves the extension, then pulls the stop switch on the device"
admin extensions list --status pending
admin extensions approve "$REQUEST"
admin revoke device "$DEVICE_ID" --reason "demo: contract ended"
admin devices list

bold "12. The audit log: exported, then checked offline (and a tampered copy refused)"
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
set +e
run "$CUSTODY" admin audit verify audit-tampered.ndjson
rc=$?
set -e
[ "$rc" -eq 5 ] && echo "OK: the altered entry is found (exit 5)" || { echo "expected exit 5, got $rc" >&2; exit 1; }

bold "Demo complete. Files are in $DEMO"
