#!/usr/bin/env bash
# `fsc get` of a large file (1 GiB by default), killed with SIGKILL at
# random points five times and rerun, must end with the server's SHA-256,
# and a local file of the same name that is not a partial download of it
# must never be mixed in. The test suite runs the same scenario on 64 MiB
# (tests/client/integrity.rs); this is the full-size run, done by hand:
#
#   cargo build --release && scripts/kill-resume.sh [SIZE_MIB]
#
# Each kill point is a random byte count; the script kills fsc once its
# partial file has reached it (checking every 10 ms).
set -euo pipefail
size_mib=${1:-1024}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root" "$work/local"
head -c $((size_mib << 20)) /dev/urandom > "$work/root/big.bin"
"$bin/filesrv" 0 4 --bind 127.0.0.1 --root "$work/root" -v 2> "$work/log" &
server=$!
until grep -qs "serving on" "$work/log"; do sleep 0.05; done
addr=$(sed -n 's/.*serving on //p' "$work/log" | head -1)
cd "$work/local"
echo "old local notes" > big.bin
partial() { stat -c %s .big.bin.*.fsc-part 2>/dev/null || echo 0; }
total=$((size_mib << 20))
for round in 1 2 3 4 5; do
    have=$(partial)
    # A random byte in the first 95% of what is left: every round kills
    # a download still in progress.
    room=$(((total - have) * 95 / 100))
    target=$((have + ((RANDOM << 30) | (RANDOM << 15) | RANDOM) % room))
    "$bin/fsc" "$addr" get big.bin 2> "$work/fsc.err" &
    fsc=$!
    while [ "$(partial)" -lt "$target" ] && kill -0 "$fsc" 2>/dev/null; do sleep 0.01; done
    kill -9 "$fsc" 2>/dev/null || true
    wait "$fsc" 2>/dev/null || true
    echo "round $round: killed at $(partial) of $total bytes (aimed at $target)$(
        [ -s "$work/fsc.err" ] && echo "; fsc said: $(cat "$work/fsc.err")")"
    [ "$(cat big.bin)" = "old local notes" ] || { echo "big.bin changed before the end"; exit 1; }
done
began=$(date +%s.%N)
"$bin/fsc" "$addr" get big.bin
echo "final run: $(echo "$(date +%s.%N) - $began" | bc) s"
ours=$(sha256sum big.bin | cut -c1-64)
theirs=$(sha256sum "$work/root/big.bin" | cut -c1-64)
echo "local  $ours"
echo "server $theirs"
"$bin/fsc" "$addr" sum big.bin | sha256sum -c
[ "$ours" = "$theirs" ] && echo "OK: identical"
