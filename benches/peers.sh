#!/usr/bin/env bash
# Runs the side-by-side benchmark of ekko against nginx and Varnish (benches/peers.rs) on
# 127.0.0.1 and writes the tables to standard output and target/bench-peers/results.md.
#
#   bash benches/peers.sh                      # every scenario, 10 s per run, 3 runs each
#   bash benches/peers.sh --seconds 5 --repeats 3 --scenario s1,s2
#   bash benches/peers.sh --smoke              # ekko only, about 2 s per scenario (CI)
#
# Needs 2 CPUs (servers on CPU 0, wrk and the upstream on CPU 1) and, as root on Debian:
#   apt-get install wrk nginx-light varnish    # wrk alone for --smoke
set -euo pipefail

cd "$(dirname "$0")/.."

# Exits with an install hint when a command is missing.
require() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "peers.sh: \`$1\` not found; install it with \`apt-get install $2\`" >&2
        exit 1
    fi
}

smoke=false
for arg in "$@"; do
    if [ "$arg" = "--smoke" ]; then
        smoke=true
    fi
done

require taskset util-linux
require wrk wrk
if [ "$smoke" = false ]; then
    require nginx nginx-light
    require varnishd varnish
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "peers.sh: needs 2 CPUs, this machine has $(nproc)" >&2
    exit 1
fi

# cargo bench builds the release binary target/release/ekko that the harness starts.
exec cargo bench --bench peers -- "$@"
