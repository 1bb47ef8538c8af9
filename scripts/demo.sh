#!/usr/bin/env bash
# The end-to-end demo behind `make demo`: a vendor seals two models (TorchScript and ONNX),
# anyone can inspect them, the vendor verifies them, and each runs from protected memory with
# output byte-identical to the plain model. A tampered copy is refused. Finally the TPM that
# will anchor leases on a device is shown (a software TPM stands in for it here).
#
# usage: scripts/demo.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-build}" && pwd)
CUSTODY="$BUILD/src/cli/custody"
DEMO="$BUILD/demo"
[ -x "$CUSTODY" ] || { echo "demo: $CUSTODY is missing; run 'make build' first" >&2; exit 1; }

bold() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
run() { printf '$ %s\n' "$*" | sed "s|$CUSTODY|custody|g"; "$@"; }

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
trap 'kill "$(cat "$TPM_DIR/pid" 2>/dev/null)" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$TPM_DIR/sock" ] && break; sleep 0.05; done
run "$CUSTODY" tpm info --tcti "swtpm:path=$TPM_DIR/sock"

bold "Demo complete. Files are in $DEMO"
