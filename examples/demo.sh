#!/usr/bin/env bash
# A real two-node exchange on loopback: node "alpha" puts, dropr-send delivers over
# HTTP to node "beta"'s dropr-serve, beta consumes and acks, and alpha sees the receipt.
set -euo pipefail
dir=$(mktemp -d "${TMPDIR:-/tmp}/dropr-demo.XXXXXX")
serve_pid=""
cleanup() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
A=$dir/alpha B=$dir/beta
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "beta: dropr-serve on a free loopback port"
DROPR_NODE=beta dropr-serve --spool "$B" --listen 127.0.0.1:0 2>"$dir/serve.log" &
serve_pid=$!
for _ in $(seq 100); do grep -q 'listening' "$dir/serve.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'url=[^ ]*' "$dir/serve.log" | head -1 | cut -d= -f2)
echo "beta listens at $url"
mkdir -p "$A"
printf 'node = "alpha"\n[peers.beta]\nurl = "%s"\n' "$url" > "$A/dropr.toml"

say "alpha: dropr-put three messages (one urgent) and a file"
echo "hello from alpha" | dropr-put --spool "$A" --to beta
printf 'line one\nline two\n' | dropr-put --spool "$A" --to beta --lines --channel logs
echo "urgent!" | dropr-put --spool "$A" --to beta --priority 0
seq 1 100000 > "$dir/numbers.txt"
dropr-put --spool "$A" --to beta --file "$dir/numbers.txt" --channel files

say "alpha: dropr-ls before sending"
dropr-ls --spool "$A"

say "alpha: dropr-send --once"
dropr-send --spool "$A" --once

say "beta: dropr-ls --in"
dropr-ls --spool "$B" --in

say "beta: consume: urgent first"
dropr-recv --spool "$B" --format raw --ack
dropr-recv --spool "$B" --format json
dropr-recv --spool "$B" --channel logs --all | tee "$dir/claimed" 
dropr-ack --spool "$B" - < "$dir/claimed"
dropr-recv --spool "$B" --exec 'echo "handler got $(wc -l) lines of $DROPR_ID from $DROPR_ORIGIN" >&2' --channel files --once -q
dropr-ack --spool "$B" "$(dropr-ls --spool "$B" --in --state claimed --json -l | head -1 | sed 's/.*"id": "\([^"]*\)".*/\1/')"

say "alpha: dropr-send --once polls the receipts"
dropr-send --spool "$A" --once -q
dropr-ls --spool "$A" --out -l
