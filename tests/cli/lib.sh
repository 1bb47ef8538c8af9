# Shared helpers of the CLI test scripts (sourced, not run). The caller sets WORK (a scratch
# directory) before sourcing; each script ends with `finish`.
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
bad() { failed=$((failed + 1)); echo "FAIL - $1"; }
# expect CODE DESCRIPTION -- command...: runs the command and checks its exit code; its output is
# kept in $WORK/out and $WORK/err for expect_out / expect_err.
expect() {
  local want=$1 desc=$2
  shift 3
  "$@" >"$WORK/out" 2>"$WORK/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then ok "$desc (exit $got)"; else
    bad "$desc: expected exit $want, got $got"; sed 's/^/     | /' "$WORK/out" "$WORK/err"; fi
}
expect_out() {  # expect_out TEXT DESCRIPTION: the last command's stdout mentions TEXT
  if grep -q -- "$1" "$WORK/out"; then ok "$2"; else bad "$2: stdout lacks '$1'"; sed 's/^/     | /' "$WORK/out"; fi
}
expect_err() {  # expect_err TEXT DESCRIPTION: the last command's stderr mentions TEXT
  if grep -q -- "$1" "$WORK/err"; then ok "$2"; else bad "$2: stderr lacks '$1'"; sed 's/^/     | /' "$WORK/err"; fi
}
# finish: prints the tally; the script's exit status is 0 only if nothing failed.
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
