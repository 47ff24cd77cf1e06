#!/usr/bin/env bash
# examples/three-site on one machine: the five hosts' dropr.toml, rewritten for 127.0.0.1
# (plain HTTP, ports GW_PORT DB1_PORT DB2_PORT, fresh tokens, temporary spools), then the
# story of README.md: shop's orders through gw to db1, to db2 while db1 is down, receipts
# back to shop; a report from db1 held on gw and fetched by the laptop; a note from the
# laptop through gw. KEEP=1 leaves everything running until Enter. Needs the dropr-*
# commands on PATH (make demo's venv: PATH=.venv/bin:$PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
GW_PORT=${GW_PORT:-18441} DB1_PORT=${DB1_PORT:-18442} DB2_PORT=${DB2_PORT:-18443}
dir=$(mktemp -d "${TMPDIR:-/tmp}/dropr-three-site.XXXXXX")
declare -A pid=()
cleanup() {
    for p in "${pid[@]}"; do kill -INT "$p" 2>/dev/null || true; done    # INT: a quick stop
    for p in "${pid[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
token() { od -An -N18 -tx1 /dev/urandom | tr -d ' \n'; }

# -- the hosts: spool $dir/HOST/spool (its dropr.toml rewritten), secrets in $dir/HOST/etc ---
declare -A port=([gw]=$GW_PORT [db1]=$DB1_PORT [db2]=$DB2_PORT)
for host in gw db1 db2 shop laptop; do
    mkdir -p "$dir/$host/spool" "$dir/$host/etc"
    chmod 700 "$dir/$host/spool" "$dir/$host/etc"
    sed -e "s#https://gw.example.net:8443/#http://127.0.0.1:$GW_PORT/#" \
        -e "s#https://db1.site-a.internal:8443/#http://127.0.0.1:$DB1_PORT/#" \
        -e "s#https://db2.site-a.internal:8443/#http://127.0.0.1:$DB2_PORT/#" \
        -e "s#0.0.0.0:8443#127.0.0.1:${port[$host]:-0}#" \
        -e "s#/etc/dropr/#$dir/$host/etc/#" \
        -e '/^certfile/d' -e '/^keyfile/d' -e '/^cafile/d' \
        "$here/$host/dropr.toml" > "$dir/$host/spool/dropr.toml"
done
declare -A tok=()
for client in shop laptop db1 db2 gw; do tok[$client]=$(token); done
for client in shop laptop db1 db2; do
    echo "${tok[$client]}" > "$dir/$client/etc/gw.token"              # what it sends to gw
    echo "${tok[$client]} $client" >> "$dir/gw/etc/clients.tokens"    # what gw takes from it
done
echo "${tok[gw]}" > "$dir/gw/etc/db.token"                            # gw to the group db
for db in db1 db2; do echo "${tok[gw]} gw" > "$dir/$db/etc/clients.tokens"; done
chmod 600 "$dir"/*/etc/* "$dir"/*/spool/dropr.toml

on() { local host=$1; shift; DROPR_SPOOL=$dir/$host/spool "$@"; }
serve() {
    DROPR_SPOOL=$dir/$1/spool dropr-serve 2>>"$dir/$1-serve.log" &    # $!: dropr-serve itself
    pid[$1-serve]=$!
    for _ in $(seq 100); do grep -q listening "$dir/$1-serve.log" 2>/dev/null && return; sleep 0.1; done
    echo "dropr-serve of $1 did not start:" >&2; cat "$dir/$1-serve.log" >&2; exit 1
}
sender() { DROPR_SPOOL=$dir/$1/spool dropr-send 2>>"$dir/$1-send.log" & pid[$1-send]=$!; }
count() {  # count HOST BOX STATE: messages in one state of a host's inbox (in) or outbox (out)
    on "$1" dropr-ls "--$2" --state "$3" -l --json | grep -c '"id"' || true
}
wait_for() {  # wait_for WHAT N HOST BOX STATE
    local what=$1 n=$2; shift 2
    local until=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$until" ]; do [ "$(count "$@")" -ge "$n" ] && return; sleep 0.1; done
    echo "timed out waiting for $what; the daemons' last lines:" >&2
    tail -n 5 "$dir"/*.log >&2; exit 1
}

say "site A: dropr-serve on gw (:$GW_PORT), db1 (:$DB1_PORT), db2 (:$DB2_PORT); dropr-send on gw, db1, db2"
for host in gw db1 db2; do serve "$host"; sender "$host"; done

say "shop: three orders for db, sent through gw; they land on db1 (failover: the first member)"
for n in 1 2 3; do echo "order $n" | on shop dropr-put --to db --channel orders >/dev/null; done
on shop dropr-send --once -q || true
wait_for "the orders on db1" 3 db1 in ready
on db1 dropr-ls --in -l
on gw dropr-ls --out

say "db1 goes down; two more orders go to db2"
kill -INT "${pid[db1-serve]}"; wait "${pid[db1-serve]}" 2>/dev/null || true; unset 'pid[db1-serve]'
for n in 4 5; do echo "order $n" | on shop dropr-put --to db --channel orders >/dev/null; done
on shop dropr-send --once -q || true
wait_for "the orders on db2" 2 db2 in ready
on db2 dropr-ls --in -l
on gw dropr-ls --out

say "db1 comes back; db1 and db2 consume their orders; the receipts travel back to shop"
serve db1
for db in db1 db2; do on "$db" dropr-recv --channel orders --all | on "$db" dropr-ack -; done
for _ in $(seq 60); do
    on shop dropr-send --once -q || true
    [ "$(count shop out processed)" -ge 5 ] && break
    sleep 0.5
done
on shop dropr-ls --out -l

say "db1: a report for the laptop; gw holds it; the laptop fetches it"
echo "nightly report" | on db1 dropr-put --to laptop --channel reports
wait_for "the report held on gw" 1 gw out queued
on laptop dropr-send --once --fetch gw -q
on laptop dropr-recv --channel reports --format raw --ack   # prints the payload
on laptop dropr-send --once --fetch gw -q    # the next fetch carries the receipt to gw
wait_for "the report's receipt at db1" 1 db1 out processed
on db1 dropr-ls --out -l

say "laptop: a note for db, through gw"
echo "note from the road" | on laptop dropr-put --to db --channel notes >/dev/null
on laptop dropr-send --once -q || true
wait_for "the note on db1" 1 db1 in ready
on db1 dropr-ls --in --state ready -l

if [ -n "${KEEP:-}" ]; then
    say "running: spools in $dir; Enter stops everything"
    for host in gw db1 db2 shop laptop; do echo "  $host: DROPR_SPOOL=$dir/$host/spool"; done
    read -r _
fi
