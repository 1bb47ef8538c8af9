#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build for SECONDS each, one after the other.
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS]      (make fuzz FUZZ_SECONDS=60)
#
# Each fuzzer starts from a scratch copy of its committed seed corpus (fuzz/corpus/<name>) plus
# freshly generated seeds (custody_fuzz_seeds), so the committed corpus never grows. The log of
# the last run and every finding so far (crash-*, leak-*, timeout-*, oom-*: kept across runs)
# are under BUILD_DIR/fuzz-out/<fuzzer>/. Prints the exec count of each run and exits non-zero if
# any fuzzer found a crash, leak, timeout or sanitizer report.
#
# By default a fuzzer stops at its first finding (libFuzzer's normal mode), which is what CI
# wants. FUZZ_KEEP_GOING=1 runs each in libFuzzer's fork mode with -ignore_crashes=1 instead, so
# a known, not yet fixed bug does not end the campaign: every finding is saved and the run still
# fails at the end.
#
# To reproduce a finding: BUILD_DIR/fuzz/<fuzzer> BUILD_DIR/fuzz-out/<fuzzer>/crash-<sha1>
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 BUILD_DIR [SECONDS]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
seconds=${2:-60}
keep_going=${FUZZ_KEEP_GOING:-0}
bin_dir="$build/fuzz"
out_dir="$build/fuzz-out"

work=$(mktemp -d "${TMPDIR:-/tmp}/custody-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Fresh seeds, so a format change cannot leave the fuzzers starting from stale files.
seeds="$work/seeds"
if [ -x "$bin_dir/custody_fuzz_seeds" ]; then
  "$bin_dir/custody_fuzz_seeds" "$seeds"
fi

# fuzzer binary : corpus name : dictionary
targets=(
  "custody_sealed_header_fuzzer:sealed:sealed.dict"
  "custody_npy_fuzzer:npy:npy.dict"
  "custody_tpm_verifier_fuzzer:tpm:tpm.dict"
  "custody_protocol_message_fuzzer:protocol:protocol.dict"
  "custody_envelope_fuzzer:envelope:protocol.dict"
  "custody_audit_fuzzer:audit:audit.dict"
  "custody_json_fuzzer:json:json.dict"
  "custody_journal_fuzzer:journal:journal.dict"
  "custody_kserve_fuzzer:kserve:kserve.dict"
  "custody_admin_request_fuzzer:admin:admin.dict"
  "custody_url_fuzzer:url:url.dict"
  "custody_config_fuzzer:config:config.dict"
  "custody_agent_config_fuzzer:agent_config:agent_config.dict"
)

# Stack traces for UBSan reports too (ASan prints them by default).
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

failed=0
summary=()
for entry in "${targets[@]}"; do
  IFS=: read -r name corpus_name dict <<<"$entry"
  bin="$bin_dir/$name"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $name not built in $build, skipped"
    summary+=("$(printf '%-30s %s' "$name" "not built")")
    continue
  fi
  corpus="$work/corpus-$corpus_name"
  mkdir -p "$corpus"
  if [ -d "$root/fuzz/corpus/$corpus_name" ]; then
    cp -r "$root/fuzz/corpus/$corpus_name"/. "$corpus"/
  fi
  if [ -d "$seeds/$corpus_name" ]; then
    cp -r "$seeds/$corpus_name"/. "$corpus"/
  fi
  mkdir -p "$out_dir/$name"
  log="$out_dir/$name/fuzz.log"
  stamp="$work/stamp-$name"
  touch "$stamp"
  seeds_n=$(find "$corpus" -type f | wc -l)
  mode=()
  if [ "$keep_going" = 1 ]; then
    mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  fi
  echo "fuzz: $name for ${seconds}s from $seeds_n seeds${mode:+ (keep going)} (log: $log)"

  rc=0
  "$bin" "$corpus" "${mode[@]}" \
    -max_total_time="$seconds" \
    -dict="$root/fuzz/$dict" \
    -artifact_prefix="$out_dir/$name/" \
    -print_final_stats=1 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    >"$log" 2>&1 || rc=$?

  # Exec count: the final stats (normal mode), else the last status line ("#N" or "#N:").
  execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
  if [ -z "$execs" ]; then
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  fi
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
  corpus_n=$(find "$corpus" -type f | wc -l)
  findings=$(find "$out_dir/$name" -type f ! -name fuzz.log -newer "$stamp" | sort)
  n_findings=$(printf '%s' "$findings" | grep -c . || true)
  if [ "$rc" -ne 0 ] || [ "$n_findings" -gt 0 ]; then
    failed=1
    echo "fuzz: $name FAILED (exit $rc) after ${execs:-?} execs; $n_findings new finding(s):"
    printf '%s\n' "$findings" | sed 's/^/  /'
    # The first report, from its first line to its SUMMARY line, without libFuzzer's chatter.
    echo "---- first report in $log ----"
    awk '/runtime error|ERROR: (Address|Leak|Undefined)Sanitizer|deadly signal|ERROR: libFuzzer/ \
         { on = 1 } on && !/NEW_FUNC|^#[0-9]|^INFO:|^[[:space:]]*$/ { print; n++ } \
         on && /^SUMMARY:/ { exit } n >= 60 { exit }' "$log"
    echo "----"
    summary+=("$(printf '%-30s FINDINGS=%s execs=%s cov=%s (exit %s, see %s)' "$name" \
      "$n_findings" "${execs:-?}" "${cov:-?}" "$rc" "$out_dir/$name")")
  else
    echo "fuzz: $name ok: ${execs:-?} execs in ${seconds}s, coverage ${cov:-?} edges," \
      "corpus $seeds_n -> $corpus_n inputs"
    summary+=("$(printf '%-30s ok     execs=%s cov=%s corpus=%s->%s' "$name" "${execs:-?}" \
      "${cov:-?}" "$seeds_n" "$corpus_n")")
  fi
done

echo
echo "==== fuzz summary (${seconds}s each) ===="
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED: a fuzzer found a crash (inputs and logs in $out_dir)"
  exit 1
fi
echo "fuzz: no crashes"
