#!/usr/bin/env bash
# `custody admin` against a real custodian: init, serve, then every admin command — models,
# groups and golden sets, enrollment tokens, devices, licences, budget extensions, the stop
# switch, API tokens, the audit export — with its output and documented exit code; the refusals
# (viewer token, garbage token, missing token, wrong CA, unknown ids, conflicts); and the offline
# audit check, which must refuse an export with one altered byte or one removed record.
#
# With a third argument (the test-only custody-test-device, a swtpm-backed device), a real device
# enrolls, reports usage and asks for two budget extensions that are approved and denied.
#
# usage: admin_test.sh CUSTODY CUSTODIAN [CUSTODY_TEST_DEVICE]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CUSTODY=$(realpath "$1")
CUSTODIAN=$(realpath "$2")
DEVICE_TOOL=${3:+$(realpath "$3")}
WORK=$(mktemp -d /tmp/custody-admin-test.XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
umask 077

# shellcheck source=lib.sh
source "$HERE/lib.sh"
# jq-like checks of the last command's stdout: check_json DESCRIPTION PYTHON-EXPRESSION (j = JSON)
check_json() {
  if /usr/bin/python3 -c "import json,sys; j=json.load(open('$WORK/out')); sys.exit(0 if ($2) else 1)" 2>/dev/null; then
    ok "$1"; else bad "$1"; sed 's/^/     | /' "$WORK/out"; fi
}
json_field() { /usr/bin/python3 -c "import json,sys; print(json.load(open('$WORK/out'))$1)"; }

# ----- a custodian on a free port ----------------------------------------------------------------
"$CUSTODIAN" init --data "$WORK/data" --listen 127.0.0.1:0 >"$WORK/init.out" 2>"$WORK/err" \
  || { echo "custodian init failed: $(cat "$WORK/err")"; exit 1; }
grep -A1 '^initial admin token' "$WORK/init.out" | tail -1 >"$WORK/admin.token"
grep -qE '^cust_[0-9a-f]+$' "$WORK/admin.token" && ok "custodian init prints the first admin token" \
  || { bad "no admin token in the init output"; exit 1; }
CA="$WORK/data/keys/ca.pem"
[ -f "$CA" ] && ok "the CA certificate is at DATA/keys/ca.pem" || bad "no $CA"

"$CUSTODIAN" serve --config "$WORK/data/custodian.toml" 2>"$WORK/serve.log" &
SERVER_PID=$!
PORT=
for _ in $(seq 300); do
  PORT=$(sed -n 's/^custodian: serving on port \([0-9]*\)$/\1/p' "$WORK/serve.log")
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "custodian did not start:"; cat "$WORK/serve.log"; exit 1; }
# GET /readyz over TLS checked against the custodian's CA (openssl: curl is not a build dependency).
readyz() {
  printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' \
    | timeout 5 openssl s_client -quiet -connect "127.0.0.1:$PORT" -CAfile "$CA" \
        -verify_return_error 2>/dev/null | head -1 | grep -q '^HTTP/1.1 200'
}
ready=
for _ in $(seq 100); do
  if readyz; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] && ok "custodian serves on port $PORT and is ready" || { bad "custodian never became ready"; exit 1; }

export CUSTODY_URL="https://127.0.0.1:$PORT" CUSTODY_CA="$CA"
unset CUSTODY_TOKEN
admin() { "$CUSTODY" admin --token-file "$WORK/admin.token" "$@"; }

# ----- connection and authentication --------------------------------------------------------------
expect 0 "a viewer read with the admin token" -- admin models list
expect_out "no models registered" "an empty list says so"
expect 2 "no token at all is refused before connecting" -- "$CUSTODY" admin models list
expect_err "no API token" "the missing token is named"
expect 7 "a garbage token is refused by the custodian" -- "$CUSTODY" admin --token cust_not_a_real_token models list
expect_err "HTTP 401" "the refusal carries the HTTP status"
expect_err "bearer token is not valid" "and the custodian's reason"
grep -q cust_not_a_real_token "$WORK/err" "$WORK/out" && bad "the token was echoed" || ok "the token is not echoed"
chmod 644 "$WORK/admin.token"
expect 7 "a token file readable by others is refused" -- admin models list
expect_err "chmod 600" "the fix is suggested"
chmod 600 "$WORK/admin.token"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-ca.key \
  -out other-ca.pem -days 1 -subj /CN=other >/dev/null 2>&1
expect 8 "a server certificate from another CA is refused" -- admin --ca other-ca.pem models list
expect_err "certificate verify failed" "the TLS failure is named"
expect 2 "plain http is refused" -- admin --url "http://127.0.0.1:$PORT" models list
expect_err "https://" "the URL problem is named"
expect 2 "no CA is a usage error" -- env -u CUSTODY_CA "$CUSTODY" admin --token-file "$WORK/admin.token" models list
expect_err "DATA/keys/ca.pem" "where the CA lives is named"
"$CUSTODY" admin --url https://127.0.0.1:1 --token-file "$WORK/admin.token" models list >"$WORK/out" 2>"$WORK/err"
rc=$?
[ "$rc" -eq 8 ] && ok "an unreachable custodian is exit 8" || bad "unreachable custodian: exit $rc $(cat "$WORK/err")"

# ----- models ------------------------------------------------------------------------------------
head -c 20000 /dev/urandom >model.bin
"$CUSTODY" keygen --out vendor.key >/dev/null
for m in a b; do
  "$CUSTODY" seal model.bin --engine linear --name "model-$m" --version 1.0 --signing-key vendor.key \
    --dek-out "$m.dek" --out "$m.sealed" >/dev/null || bad "seal $m"
done
MODEL_A=$("$CUSTODY" inspect a.sealed --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model_id"])')
MODEL_B=$("$CUSTODY" inspect b.sealed --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model_id"])')
expect 0 "models register (sealed file + its key)" -- admin models register a.sealed --key a.dek --vendor-pub vendor.pub
expect_out "registered model model-a 1.0" "register names the model"
expect_out "$MODEL_A" "register uses the sealed header's model id"
grep -q "$(cat a.dek)" "$WORK/out" "$WORK/err" && bad "the model key was printed" || ok "the model key is not printed"
expect 0 "models register --json" -- admin models register b.sealed --key b.dek --json
check_json "the answer is JSON with the file's hash" "j['model_id']=='$MODEL_B' and j['sealed_sha256']=='$(sha256sum b.sealed | cut -c1-64)'"
expect 4 "registering a model twice is a conflict" -- admin models register a.sealed --key a.dek
expect_err "HTTP 409" "the conflict is named"
"$CUSTODY" keygen --out other.key >/dev/null
expect 5 "a model signed by another vendor key is refused locally" -- admin models register a.sealed --key a.dek --vendor-pub other.pub
expect 0 "models list" -- admin models list
expect_out "model-a" "list shows model-a"
expect_out "$MODEL_B" "list shows model-b's id"
expect 0 "models list --json" -- admin models list --json
check_json "--json is the raw list" "len(j)==2 and all(m['retired'] is None for m in j)"

# ----- groups and golden sets ----------------------------------------------------------------------
expect 0 "groups create (golden policy)" -- admin groups create kiosks --pcrs 0,2,4,7 --no-ek-certificate
expect_out "quoted PCRs: *0,2,4,7" "create shows the PCR selection"
expect 0 "groups create (trust on first use)" -- admin groups create lab --pcrs 7 --allow-tofu
expect_out "trust on first use: *yes" "TOFU is shown"
expect 4 "a second group of the same name is a conflict" -- admin groups create kiosks
expect 2 "a bad PCR list is refused locally" -- admin groups create bad --pcrs 0,24
Z=$(printf '0%.0s' $(seq 64))
printf '{"pcrs_sha256": {"0": "%s", "2": "%s", "4": "%s", "7": "%s"}}\n' $Z $Z $Z $Z >golden.json
expect 0 "golden-set add from a tpm info --json file" -- admin groups golden-set add kiosks --name factory --from golden.json
expect_out "golden set factory of group kiosks approved" "the approval is reported"
F=$(printf 'f%.0s' $(seq 64))
expect 0 "golden-set approve (alias) with --pcr values" -- admin groups golden-set approve kiosks --name os-2 \
  --from golden.json --pcr "7=$F"
expect 2 "a golden set missing a quoted PCR is refused" -- admin groups golden-set add kiosks --name partial --pcr "0=$Z"
expect_err "no value for PCR" "the missing PCR is named"
expect 3 "a golden set for an unknown group is not found" -- admin groups golden-set add nogroup --name x --from golden.json
expect_err "HTTP 404" "not found carries the HTTP status"
expect 0 "golden-set list" -- admin groups golden-set list kiosks
expect_out "os-2 *7 *$F" "the approved values are listed"
expect 0 "groups list" -- admin groups list
expect_out "kiosks *0,2,4,7 *no *no *factory,os-2" "groups list shows the golden sets"
expect_out "^lab " "groups list shows the TOFU group"

# ----- enrollment tokens -----------------------------------------------------------------------------
expect 0 "enrollment-tokens create (printed once)" -- admin enrollment-tokens create --group kiosks --expires 1h
expect_out "^enr_[0-9a-f]*$" "the token is printed"
expect_out "shown once" "the user is told it is shown once"
expect 0 "enrollment-tokens create --out" -- admin enrollment-tokens create --group kiosks --out enroll.token
[ "$(stat -c %a enroll.token)" = 600 ] && grep -qE '^enr_[0-9a-f]+$' enroll.token \
  && ok "the token file is mode 0600" || bad "enroll.token: $(stat -c %a enroll.token)"
grep -q enr_ "$WORK/out" && bad "--out also printed the token" || ok "--out keeps the token off the terminal"
expect 3 "an enrollment token for an unknown group is not found" -- admin enrollment-tokens create --group nogroup
expect 2 "a bad lifetime is refused" -- admin enrollment-tokens create --group kiosks --expires soon
expect 2 "a lifetime out of range is refused by the custodian" -- admin enrollment-tokens create --group kiosks --expires 31d

# ----- licences --------------------------------------------------------------------------------------
expect 0 "licences create (group, manual extensions)" -- admin licences create --model "$MODEL_A" --group kiosks \
  --budget 10 --not-after 2099-12-31 --offline-grace 1h --manual --json
LIC_A=$(json_field "['licence_id']")
check_json "the licence is as asked" "j['budget']==10 and j['offline_grace_ms']==3600000 and j['extension']['manual'] and j['group']=='kiosks'"
expect 0 "licences create (auto-approve N per period)" -- admin licences create --model "$MODEL_B" --group lab \
  --budget 100 --not-after 2099-01-01T00:00:00Z --offline-grace 7d --auto-approve 50 --period 30d
expect_out "group lab *100 *2099-01-01T00:00:00Z *7d *auto 50 per 30d" "the extension policy is shown"
LIC_B=$(sed -n 's/^created licence //p' "$WORK/out")
expect 2 "device and group at once is refused" -- admin licences create --model "$MODEL_A" --group kiosks \
  --device dev_x --budget 1 --not-after 2099-12-31 --offline-grace 1h
expect 2 "--auto-approve without --period is refused" -- admin licences create --model "$MODEL_A" --group kiosks \
  --budget 1 --not-after 2099-12-31 --offline-grace 1h --auto-approve 5
expect 2 "an end in the past is refused by the custodian" -- admin licences create --model "$MODEL_A" \
  --group kiosks --budget 1 --not-after 2001-01-01 --offline-grace 1h
expect_err "in the past" "the past end is named"
expect 3 "a licence for an unknown model is not found" -- admin licences create --model "$(printf '0%.0s' $(seq 32))" \
  --group kiosks --budget 1 --not-after 2099-12-31 --offline-grace 1h
expect 0 "licences list" -- admin licences list
expect_out "$LIC_A *$MODEL_A *group kiosks *10 " "licences list shows the group licence"
expect_out "$LIC_B" "and the second one"

# ----- a device, its usage and its extension requests --------------------------------------------------
DEVICE_ID=
if [ -n "$DEVICE_TOOL" ]; then
  device() { "$DEVICE_TOOL" --port "$PORT" --ca "$CA" --model "$MODEL_A" --licence "$LIC_A" "$@"; }
  if device --enrollment-token-file enroll.token --use 3 --extend 5 --extend 7 >"$WORK/out" 2>"$WORK/err"; then
    ok "a swtpm device enrolls, attests, reports usage and asks for an extension twice"
    DEVICE_ID=$(json_field "['device_id']")
    check_json "it got a lease; asking again returns the waiting request" \
      "j['leases']==['$MODEL_A'] and [e['status'] for e in j['extensions']]==['pending','pending'] and j['extensions'][0]['request_id']==j['extensions'][1]['request_id'] and j['extensions'][1]['requested']==5"
    EXT_1=$(json_field "['extensions'][0]['request_id']")
  else
    bad "the test device failed: $(cat "$WORK/err")"
  fi
  admin enrollment-tokens create --group kiosks --out enroll2.token >/dev/null
  if device --enrollment-token-file enroll2.token --extend 7 >"$WORK/out" 2>"$WORK/err"; then
    ok "a second device asks for an extension"
    EXT_2=$(json_field "['extensions'][0]['request_id']")
  else
    bad "the second test device failed: $(cat "$WORK/err")"
  fi
else
  echo "# no test device given: extension decisions are checked against unknown ids only"
fi

expect 0 "devices list" -- admin devices list
if [ -n "$DEVICE_ID" ]; then
  expect_out "$DEVICE_ID *kiosks" "devices list shows the enrolled devices"
  expect 0 "devices show" -- admin devices show "$DEVICE_ID"
  expect_out "$LIC_A *$MODEL_A *group kiosks *10 *7 " "the remaining budget is 10 - 3"
  expect_out "$MODEL_A *kiosk *3" "the reported usage is shown"
  expect 0 "extensions list --status pending" -- admin extensions list --status pending
  expect_out "$EXT_1 *pending *$DEVICE_ID *$LIC_A *5 " "the first request is listed"
  expect_out "$EXT_2 *pending" "the second request is listed"
  expect 0 "extensions approve" -- admin extensions approve "$EXT_1"
  expect_out "extension request $EXT_1: approved" "the approval is reported"
  expect 4 "approving twice is a conflict" -- admin extensions approve "$EXT_1"
  expect_err "already approved" "the conflict is named"
  expect 0 "extensions deny" -- admin extensions deny "$EXT_2" --reason "over the contract"
  expect_out "extension request $EXT_2: denied" "the denial is reported"
  expect 0 "extensions list --status approved --json" -- admin extensions list --status approved --json
  check_json "one approved request, granted what was asked" "len(j)==1 and j[0]['request_id']=='$EXT_1' and j[0]['granted']==5"
  expect 0 "extensions list --status denied" -- admin extensions list --status denied
  expect_out "$EXT_2 *denied" "the denied request is listed"
  expect 0 "devices show --json after the approval" -- admin devices show "$DEVICE_ID" --json
  check_json "the remaining budget grew by the approved 5" "j['licences'][0]['remaining']==12 and j['usage'][0]['count']==3"
else
  expect_out "no devices enrolled" "no devices yet"
  expect 0 "extensions list" -- admin extensions list
  expect_out "no extension requests" "an empty list says so"
fi
expect 3 "approving an unknown request is not found" -- admin extensions approve ext_00000000
expect_err "HTTP 404" "not found carries the HTTP status"
expect 3 "denying an unknown request is not found" -- admin extensions deny ext_00000000 --reason no
expect 2 "a bad status filter is a usage error" -- admin extensions list --status maybe
expect 3 "an unknown device is not found" -- admin devices show dev_nobody
expect_err "HTTP 404" "and says so"

# ----- API tokens and roles --------------------------------------------------------------------------
expect 0 "tokens create viewer (printed once)" -- admin tokens create --name auditor --role viewer
expect_out "^cust_[0-9a-f]*$" "the viewer token is printed"
sed -n '/^cust_/p' "$WORK/out" >viewer.token
VIEWER_ID=$(sed -n 's/^token \(tok_[0-9a-f]*\) .*/\1/p' "$WORK/out")
expect 0 "tokens create operator --out" -- admin tokens create --name ops --role operator --out operator.token
[ "$(stat -c %a operator.token)" = 600 ] && ok "operator.token is mode 0600" || bad "operator.token mode"
expect 2 "an unknown role is a usage error" -- admin tokens create --name x --role root
expect 0 "tokens list" -- admin tokens list
expect_out "$VIEWER_ID *auditor *viewer" "tokens list shows the viewer token"
expect_out "ops *operator" "and the operator token"
grep -q cust_ "$WORK/out" && bad "tokens list shows a secret" || ok "tokens list shows no secret"
expect 0 "a viewer can read" -- "$CUSTODY" admin --token-file viewer.token licences list
expect 7 "a viewer cannot create a group" -- "$CUSTODY" admin --token-file viewer.token groups create g2
expect_err "HTTP 403" "the refusal carries the HTTP status"
expect_err "needs the admin role" "and says which role is needed"
expect 7 "a viewer cannot pull the stop switch" -- "$CUSTODY" admin --token-file viewer.token revoke model "$MODEL_B" --reason x
expect_err "needs the operator role" "the operator role is named"
expect 7 "a viewer cannot list tokens" -- "$CUSTODY" admin --token-file viewer.token tokens list
expect 0 "an operator can create an enrollment token" -- "$CUSTODY" admin --token-file operator.token \
  enrollment-tokens create --group lab --out lab.token
expect 7 "an operator cannot register a model" -- "$CUSTODY" admin --token-file operator.token \
  models register a.sealed --key a.dek
expect 0 "tokens revoke" -- admin tokens revoke "$VIEWER_ID"
expect_out "token $VIEWER_ID revoked" "the revocation is reported"
expect 7 "a revoked token is refused" -- "$CUSTODY" admin --token-file viewer.token models list
expect_err "HTTP 401" "with 401"
expect 3 "revoking an unknown token is not found" -- admin tokens revoke tok_nothing
expect 0 "tokens list --json" -- admin tokens list --json
check_json "the revoked token is marked" "[t for t in j if t['id']=='$VIEWER_ID'][0]['revoked'] is not None and all('token' not in t for t in j)"

# ----- the stop switch -------------------------------------------------------------------------------
expect 0 "revoke licence" -- admin revoke licence "$LIC_B" --reason "contract ended"
expect_out "revoked licence $LIC_B" "the licence revocation is reported"
if [ -n "$DEVICE_ID" ]; then
  expect 0 "revoke device" -- admin revoke device "$DEVICE_ID" --reason "stolen"
  expect_out "revoked device $DEVICE_ID; 1 device(s) notified" "the device is notified"
  expect 0 "devices show after revocation" -- admin devices show "$DEVICE_ID"
  expect_out "REVOKED: .*(stolen)" "the device shows as revoked with the reason"
fi
expect 0 "revoke model" -- admin revoke model "$MODEL_A" --reason "recalled"
expect_out "revoked model $MODEL_A" "the model revocation is reported"
expect 0 "models retire" -- admin models retire "$MODEL_B" --reason "superseded"
expect_out "model $MODEL_B retired" "the retirement is reported"
expect 0 "models list after the stop switch" -- admin models list --json
check_json "both models are retired" "all(m['retired'] is not None for m in j)"
expect 0 "licences list --json" -- admin licences list --json
check_json "the revoked licence is marked" "[l for l in j if l['licence_id']=='$LIC_B'][0]['revoked'] is not None"
expect 3 "revoking an unknown device is not found" -- admin revoke device dev_nobody --reason x
expect 2 "a revocation without a reason is a usage error" -- admin revoke licence "$LIC_A"
expect 3 "retiring an unknown model is not found" -- admin models retire "$(printf '1%.0s' $(seq 32))"

# ----- the audit log ---------------------------------------------------------------------------------
expect 0 "audit export --out" -- admin audit export --out audit.ndjson
expect_err "exported" "the export reports what it wrote"
N=$(wc -l <audit.ndjson)
[ "$N" -ge 15 ] && ok "the export holds every change ($N entries)" || bad "only $N audit entries"
grep -q '"action":"token.create"' audit.ndjson && grep -q '"action":"extension\.\|"action":"licence.revoke"' audit.ndjson \
  && ok "the export holds the actions taken" || bad "actions missing from the export"
grep -q cust_ audit.ndjson && bad "the audit log holds a token" || ok "the audit log holds no token"
expect 0 "audit export to stdout" -- admin audit export
cmp -s "$WORK/out" audit.ndjson && ok "stdout export equals the file" || bad "stdout export differs"
expect 4 "audit export refuses to overwrite" -- admin audit export --out audit.ndjson

# Offline: no custodian URL, token or CA in the environment.
offline() { env -u CUSTODY_URL -u CUSTODY_CA -u CUSTODY_TOKEN "$CUSTODY" admin audit verify "$@"; }
expect 0 "audit verify (offline)" -- offline audit.ndjson
expect_out "$N audit entries checked (1..$N); the hash chain is intact" "verify says how many were checked"
expect 0 "audit verify --json" -- offline audit.ndjson --json
check_json "--json reports the count and last hash" "j['ok'] and j['entries']==$N and len(j['last_hash'])==64"

# One altered byte in record 5 (its action text), which keeps the line valid JSON.
/usr/bin/python3 - audit.ndjson tampered.ndjson <<'PY'
import sys
lines = open(sys.argv[1], "rb").read().split(b"\n")
i = lines[4].index(b'"action":"') + len(b'"action":"')
line = bytearray(lines[4]); line[i] = ord("X") if line[i] != ord("X") else ord("Y")
lines[4] = bytes(line)
open(sys.argv[2], "wb").write(b"\n".join(lines))
PY
expect 5 "an export with one altered byte is refused" -- offline tampered.ndjson
expect_err "audit entry 5: its content does not match its hash" "the altered record is named"
# One record removed from the middle.
sed '6d' audit.ndjson >deleted.ndjson
expect 5 "an export with a record removed is refused" -- offline deleted.ndjson
expect_err "audit entry 7: expected entry 6 here" "the gap is named"
# A byte that breaks the line itself.
sed '3s/"seq":3/"seq":3x/' audit.ndjson >broken.ndjson
expect 5 "an export with a damaged line is refused" -- offline broken.ndjson
expect_err "line 3" "the damaged line is named"
expect 3 "a missing export is reported" -- offline nothing.ndjson
tail -n +4 audit.ndjson >partial.ndjson
ANCHOR=$(sed -n '3p' audit.ndjson | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
expect 0 "a partial export verifies against the hash of the entry before it" -- offline partial.ndjson --anchor "$ANCHOR"
expect 5 "and not against another anchor" -- offline partial.ndjson --anchor "$Z"

grep -q "$(cat "$WORK/admin.token")" "$WORK/serve.log" && bad "the custodian logged the admin token" \
  || ok "the custodian's log holds no token"

finish
