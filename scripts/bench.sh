#!/usr/bin/env bash
# Runs the Custody benchmarks of an optimised build and prints each figure beside its target.
#
#   scripts/bench.sh BUILD_DIR      (make bench: BUILD_DIR = build-bench, Release)
#
#   1. open throughput   BUILD_DIR/bench/custody_open_bench: OpenSSL AES-256-GCM vs format::Open
#                        (1 thread, all threads) and OpenFile, 256 MiB model;
#   2. sealing memory    BUILD_DIR/bench/custody_seal_rss: peak RSS of `custody seal` on a 2 GiB
#                        model (and of format::SealFile alone);
#   3. load time         BUILD_DIR/bench/custody_load_bench: sealed vs plain resnet18 through the
#                        engine (needs the engine library; models are generated into
#                        BUILD_DIR/models with tests/models/make_models.py if missing);
#   4. TPM               BUILD_DIR/bench/custody_tpm_bench: quote verifications per second (pure
#                        code) and quote / ECDH_ZGen / NV increment latency against swtpm;
#   5. store             BUILD_DIR/bench/custody_store_bench: state changes per second of the
#                        custodian's SQLite store (a record + an audit entry per transaction, group
#                        commit), power-loss and process-crash durability (needs the store
#                        library in the build);
#   6. custodian         BUILD_DIR/bench/custody_custodian_bench: N = 1,000 and 10,000 software
#                        devices against a real custodian (its own process) over HTTPS with mutual
#                        TLS on loopback: attestations+leases/s, heartbeats/s, p50/p99 latency and
#                        the stop switch's fan-out to every waiting device (about 3 minutes);
#   7. agent             BUILD_DIR/bench/custody_agent_bench: a KServe v2 request through a real
#                        custody-agent (swtpm, custodian, sealed model) vs the engine called
#                        in-process: added latency on the tiny model and resnet18, throughput with
#                        1-8 concurrent clients, TPM operations per request.
# Scratch files go to BUILD_DIR/bench-tmp and are removed. Misses are reported, not failures: the
# script fails only if a benchmark cannot run. The figures are only as quiet as the machine:
# the load average is printed first, and a busy machine is called out.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
bench="$build/bench"
tmp="$build/bench-tmp"
mkdir -p "$tmp"
log_dir="$build/bench-logs"
mkdir -p "$log_dir"
trap 'rm -rf "$tmp"' EXIT

cores=$(nproc)
read -r load1 _ < /proc/loadavg
echo "bench: $cores cores, load average $load1, build $build"
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  echo "bench: WARNING: the machine is not idle (load $load1); throughput and scaling figures" \
    "will be noisy, the all-threads ratio especially"
fi

# Runs a benchmark, showing its output and keeping it for the summary.
run() {
  local name=$1
  shift
  echo
  echo "==== $name ===="
  "$@" 2>&1 | tee "$log_dir/$name.log"
  return "${PIPESTATUS[0]}"
}

# The value (and verdict, if any) of `RESULT key=...` in a log; "n/a" if absent.
result() {
  local log="$log_dir/$1.log" key=$2
  if [ -f "$log" ]; then
    local v
    v=$(sed -n "s/^RESULT $key=//p" "$log" | tail -n 1)
    echo "${v:-n/a}"
  else
    echo "n/a"
  fi
}

status=0
rm -f "$log_dir"/*.log

# ----- 1. open throughput -------------------------------------------------------------------
run open "$bench/custody_open_bench" --dir "$tmp" || status=1

# ----- 2. peak RSS while sealing 2 GiB -------------------------------------------------------
seal_args=(--work-dir "$tmp" --size-mib 2048 --seal-tool "$bench/custody_bench_seal_file")
if [ -x "$build/src/cli/custody" ]; then
  seal_args+=(--cli "$build/src/cli/custody")
else
  echo "bench: the CLI (src/cli/custody) is not in this build; measuring format::SealFile instead"
fi
run seal_rss "$bench/custody_seal_rss" "${seal_args[@]}" || status=1

# ----- 3. load time through the engine -------------------------------------------------------
load_note=""
if [ ! -x "$bench/custody_load_bench" ]; then
  load_note="not run: custody_load_bench is not built (no custody::engine in this build)"
  echo
  echo "bench: load time $load_note"
else
  models="$build/models"
  if [ ! -f "$models/resnet18.pt" ] || [ ! -f "$models/resnet18.onnx" ] ||
    [ ! -f "$models/tiny.pt" ]; then
    echo
    echo "bench: generating test models into $models"
    /usr/bin/python3 "$root/tests/models/make_models.py" "$models" || status=1
  fi
  ran=0
  if [ -f "$models/resnet18.pt" ]; then
    if run load_torchscript "$bench/custody_load_bench" --model "$models/resnet18.pt" \
      --kind torchscript --dir "$tmp"; then
      ran=1
    elif grep -q "Unimplemented\|not supported\|unimplemented" "$log_dir/load_torchscript.log"; then
      echo "bench: torchscript engine not in this build"
    else
      status=1
    fi
  fi
  if [ -f "$models/resnet18.onnx" ]; then
    if run load_onnx "$bench/custody_load_bench" --model "$models/resnet18.onnx" --kind onnx \
      --dir "$tmp"; then
      ran=1
    elif grep -q "Unimplemented\|not supported\|unimplemented" "$log_dir/load_onnx.log"; then
      echo "bench: onnx engine not in this build"
    else
      status=1
    fi
  fi
  [ "$ran" -eq 1 ] || load_note="not run: no engine could load resnet18 (see $log_dir)"
fi

# ----- 4. TPM: verifier throughput, device-side latency against swtpm -----------------------
run tpm "$bench/custody_tpm_bench" || status=1

# ----- 5. custodian store: state changes per second ------------------------------------------
store_note=""
if [ -x "$bench/custody_store_bench" ]; then
  run store "$bench/custody_store_bench" --dir "$tmp" || status=1
else
  store_note="not run: custody_store_bench is not built (no custody_store in this build)"
  echo
  echo "bench: store $store_note"
fi

# ----- 6. custodian under load from N software devices -----------------------------------------
custodian_note=""
if [ -x "$bench/custody_custodian_bench" ]; then
  run custodian "$bench/custody_custodian_bench" --dir "$tmp" || status=1
else
  custodian_note="not run: custody_custodian_bench is not built (no custodian library in this build)"
  echo
  echo "bench: custodian $custodian_note"
fi

# ----- 7. serving through the agent ------------------------------------------------------------
agent_note=""
if [ -x "$bench/custody_agent_bench" ] && [ -f "$build/models/tiny.pt" ] &&
  [ -f "$build/models/resnet18.pt" ]; then
  run agent "$bench/custody_agent_bench" --models "$build/models" || status=1
else
  agent_note="not run: custody_agent_bench or the generated models are not in this build"
  echo
  echo "bench: agent $agent_note"
fi

# ----- summary --------------------------------------------------------------------------------
threads=$(result open threads)
echo
echo "==================================== bench summary ===================================="
echo "1. open throughput (256 MiB, 1 MiB chunks, MB/s of plaintext, best of $(result open reps))"
echo "   OpenSSL AES-256-GCM, 1 thread [baseline]  $(result open openssl_mbps)"
echo "   format::Open threads=1                    $(result open open_single_mbps)"
echo "   format::Open threads=$threads (all)              $(result open open_all_mbps)"
echo "   format::OpenFile threads=$threads, warm cache    $(result open openfile_all_mbps)"
echo "   single/OpenSSL  $(result open ratio_single_openssl)   (target >= 0.90)"
echo "   all/single      $(result open ratio_all_single)   (target >= 1.70 on $cores cores)"
echo "   context: decryption loop alone (touched memory)/OpenSSL $(result open ratio_loop_openssl);" \
  "OpenSSL into a fresh SecretBuffer/Open $(result open ratio_single_openssl_fresh)"
echo "2. peak RSS sealing a 2 GiB model"
read -r rss_mb rss_verdict <<<"$(result seal_rss seal_peak_rss_mb)"
echo "   $(result seal_rss seal_sealer): $rss_mb MB ${rss_verdict:-}   (target < 64 MB)"
if [ "$(result seal_rss seal_cli_startup_rss_mb)" != "n/a" ]; then
  echo "   context: custody --help alone $(result seal_rss seal_cli_startup_rss_mb) MB;" \
    "format::SealFile alone $(result seal_rss seal_library_rss_mb) MB"
fi
echo "3. load time, sealed vs plain resnet18 through the engine (median of 11)"
if [ -n "$load_note" ]; then
  echo "   $load_note"
else
  for kind in torchscript onnx; do
    [ -f "$log_dir/load_$kind.log" ] || continue
    [ "$(result "load_$kind" load_ratio_file)" != "n/a" ] || continue
    echo "   $kind: file $(result "load_$kind" load_plain_file_ms) ms plain (tuned read)," \
      "$(result "load_$kind" load_sealed_file_ms) ms sealed:" \
      "ratio $(result "load_$kind" load_ratio_file)   (target <= 1.10)"
    echo "   $kind: context: vs plain read into the heap ($(result "load_$kind" load_plain_heap_file_ms) ms)" \
      "$(result "load_$kind" load_ratio_heap_file); from memory" \
      "$(result "load_$kind" load_plain_memory_ms) vs $(result "load_$kind" load_sealed_memory_ms) ms:" \
      "$(result "load_$kind" load_ratio_memory)"
  done
fi
echo "4. TPM (verifier: 1 thread, pure code; device side: against swtpm, median/p99)"
echo "   quote verifications/s $(result tpm quote_verify_per_s)" \
  "(OpenSSL ECDSA-P256 verify alone: $(result tpm ecdsa_verify_per_s)/s, ratio $(result tpm verify_vs_ecdsa))"
echo "   TPM2_Quote $(result tpm quote_ms) ms; ECDH_ZGen under policy $(result tpm zgen_ms) ms;" \
  "NV increment $(result tpm nv_increment_ms) ms"
echo "5. custodian store: state changes/s (record + audit entry, durable on return)," \
  "$(result store store_threads) threads"
if [ -n "$store_note" ]; then
  echo "   $store_note"
else
  echo "   power loss (fsync per commit)  $(result store store_power_loss_per_s)   (target >= 1000)" \
    "  mean batch $(result store store_power_loss_mean_batch)"
  echo "   process crash                  $(result store store_process_crash_per_s)" \
    "  mean batch $(result store store_process_crash_mean_batch)"
  echo "   context: 1 thread $(result store store_power_loss_1thread_per_s)/s (power loss)," \
    "$(result store store_process_crash_1thread_per_s)/s (process crash);" \
    "fsync $(result store store_fsync_ms) ms"
fi
echo "6. custodian: N software devices, HTTPS + mutual TLS on loopback, SQLite (power loss)"
if [ -n "$custodian_note" ]; then
  echo "   $custodian_note"
else
  for n in 1000 10000; do
    [ "$(result custodian "custodian_${n}_attest_per_s")" != "n/a" ] || continue
    echo "   N=$n: attest+lease/s $(result custodian "custodian_${n}_attest_per_s") (target >= 1000);" \
      "heartbeats/s $(result custodian "custodian_${n}_heartbeat_per_s") (target >= 10000)"
    echo "   N=$n: p50/p99 ms at the target rate: attest+lease" \
      "$(result custodian "custodian_${n}_attest_ms"), heartbeat" \
      "$(result custodian "custodian_${n}_heartbeat_ms") (target p99 < 50)"
    echo "   N=$n: revocation reaches the last waiting device in" \
      "$(result custodian "custodian_${n}_revocation_s") s (target < 1)"
    echo "   N=$n: context: cpu per op (custodian+load generator, us) attest+lease" \
      "$(result custodian "custodian_${n}_attest_cpu_us"), heartbeat" \
      "$(result custodian "custodian_${n}_heartbeat_cpu_us")"
  done
fi
echo "7. serving through custody-agent vs the engine in-process (1 client, p50/p99 us)"
if [ -n "$agent_note" ]; then
  echo "   $agent_note"
else
  echo "   tiny: direct $(result agent tiny_direct_p50_us)/$(result agent tiny_direct_p99_us)," \
    "agent $(result agent tiny_agent_p50_us)/$(result agent tiny_agent_p99_us):" \
    "added $(result agent tiny_added_p50_us) us at p50   (target <= 100)"
  echo "   resnet18: direct $(result agent resnet_direct_p50_us), agent" \
    "$(result agent resnet_agent_p50_us): added $(result agent resnet_added_p50_pct)% at p50" \
    "  (target <= 3)"
  echo "   TPM: $(result agent tpm_advances) block advances for $(result agent tpm_requests)" \
    "requests (expected $(result agent tpm_expected_advances)), $(result agent tpm_other_ops)" \
    "other operations   (target: block advances only)"
  echo "   throughput req/s, 1/2/4/8 clients: $(result agent load_c1_agent_per_s)" \
    "$(result agent load_c2_agent_per_s) $(result agent load_c4_agent_per_s)" \
    "$(result agent load_c8_agent_per_s)"
fi
echo "========================================================================================"
echo "logs: $log_dir"
exit "$status"
