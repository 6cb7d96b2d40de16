#!/usr/bin/env bash
# Runs kiln's RUN benchmarks and prints each kiln figure as a ratio to
# GNU tar -czf of the same files, measured in the same run.
#
#   test/bench/run.sh [benchtime]      (default 3x)
#
# BENCH_TMPDIR chooses the file system the roots live on (default: $TMPDIR,
# or /tmp). Only kiln's own work is timed for RUN: snapshots, change
# detection and the compressed layer; the command's own run time is not.
set -euo pipefail
cd "$(dirname "$0")/../.."
benchtime=${1:-3x}
export TMPDIR=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
out=$(go test -run '^$' -bench . -benchtime="$benchtime" ./test/bench/ | tee /dev/stderr)
echo
echo "kiln / tar (lower is better; TMPDIR=$TMPDIR):"
echo "$out" | awk '
  /^Benchmark/ {
    name=$1; sub(/-[0-9]+$/, "", name)
    n=split(name, parts, "/"); kind=parts[n]
    key=name; sub("/" kind "$", "", key)
    ns[key "/" kind]=$3; keys[key]=1
  }
  END {
    for (k in keys) if ((k "/kiln") in ns && (k "/tar") in ns)
      printf "  %-40s kiln %8.1f ms   tar %8.1f ms   ratio %.2f\n", k, ns[k "/kiln"]/1e6, ns[k "/tar"]/1e6, ns[k "/kiln"]/ns[k "/tar"]
  }'
