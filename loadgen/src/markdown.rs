//! `loadgen report`: turns the JSON reports of one benchmark run into
//! BENCHMARKS.md with tables, a check against the project's targets, and
//! latency-vs-throughput plots as SVG files beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::stats::{LatencySummary, Report};

fn load(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        out.push(serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?);
    }
    Ok(out)
}

fn us(l: &Option<LatencySummary>, f: impl Fn(&LatencySummary) -> f64) -> String {
    l.as_ref().map_or("–".into(), |l| fmt_us(f(l)))
}

fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn num(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The target, with chatd's durability when it is not the default.
fn target_name(r: &Report) -> String {
    match r.extra.get("durability").and_then(|v| v.as_str()) {
        Some(d) if d != "sync" => format!("{} ({d})", r.target),
        _ => r.target.clone(),
    }
}

/// The target and, when it is not plain TCP, the transport: one line of a
/// plot each.
fn series_name(r: &Report) -> String {
    if r.transport == "tcp" {
        target_name(r)
    } else {
        format!("{} over {}", target_name(r), r.transport)
    }
}

/// Transports in the order the tables list them.
const TRANSPORTS: [&str; 5] = ["tcp", "tls", "quic", "ws", "wss"];

fn transport_rank(r: &Report) -> usize {
    TRANSPORTS
        .iter()
        .position(|t| *t == r.transport)
        .unwrap_or(TRANSPORTS.len())
}

fn rate(r: &Report) -> String {
    if r.rate > 0.0 {
        format!("{}/s", num(r.rate))
    } else {
        format!("max (window {})", r.window)
    }
}

/// "ok", or what failed: the checks that did not hold and the first error
/// the run saw (a session the server closed, say).
fn verdict(r: &Report) -> String {
    if r.verification.ok {
        return "ok".to_owned();
    }
    let v = &r.verification;
    let mut what = Vec::new();
    for (n, name) in [
        (v.missing, "missing"),
        (v.duplicates, "duplicated"),
        (v.out_of_order, "out of order"),
        (v.unknown, "unknown"),
    ] {
        if n > 0 {
            what.push(format!("{} {name}", num(n as f64)));
        }
    }
    if r.errors > 0 {
        let first = r
            .error_samples
            .first()
            .map(|e| format!(", first: {}", e.replace('|', "/")))
            .unwrap_or_default();
        what.push(format!("{} errors{first}", r.errors));
    }
    if what.is_empty() {
        "**FAILED**".to_owned()
    } else {
        format!("**FAILED** ({})", what.join("; "))
    }
}

fn messaging_table(out: &mut String, reports: &[&Report]) {
    out.push_str(
        "| run | target | transport | offered | sent msg/s | deliveries/s | send→ack p50 / p99 | send→deliver p50 | p90 | p99 | p99.9 | max | send→last p99 | server CPU per delivery | deliveries per CPU-s | loadgen CPU | verified |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let d = &r.send_to_deliver;
        let server = r.server.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            target_name(r),
            r.transport,
            rate(r),
            num(r.sent_per_second),
            num(r.deliveries_per_second),
            us(&r.send_to_ack, |l| l.p50_us),
            us(&r.send_to_ack, |l| l.p99_us),
            us(d, |l| l.p50_us),
            us(d, |l| l.p90_us),
            us(d, |l| l.p99_us),
            us(d, |l| l.p999_us),
            us(d, |l| l.max_us),
            us(&r.send_to_last, |l| l.p99_us),
            server
                .and_then(|s| s.cpu_us_per_delivery)
                .map_or("–".into(), |v| format!("{v:.2} µs")),
            server
                .and_then(|s| s.deliveries_per_cpu_second)
                .map_or("–".into(), num),
            loadgen_cpu(r),
            verdict(r),
        );
    }
    out.push('\n');
}

/// One point of a plot: deliveries per second, p99 in µs, and whether it
/// is an open-loop run at a fixed rate (on the line) or a run as fast as
/// the window allows (a hollow marker: its latency is mostly queueing in
/// the window).
type Point = (f64, f64, bool);

/// One SVG chart: p99 send→deliver against deliveries per second, both on
/// log scales, one line per target through its fixed-rate runs.
fn plot(title: &str, series: &BTreeMap<String, Vec<Point>>) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 80.0, 170.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = series.values().flatten().map(|p| p.0.max(1.0)).collect();
    let xmin_log = xs.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let xmax_log = xs
        .iter()
        .copied()
        .fold(1.0_f64, f64::max)
        .log10()
        .ceil()
        .max(xmin_log + 1.0);
    let ys: Vec<f64> = series.values().flatten().map(|p| p.1.max(1.0)).collect();
    let ymin_log = ys.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let ymax_log = ys
        .iter()
        .copied()
        .fold(1.0_f64, f64::max)
        .log10()
        .ceil()
        .max(ymin_log + 1.0);
    let x = |v: f64| left + (v.max(1.0).log10() - xmin_log) / (xmax_log - xmin_log) * pw;
    let y = |v: f64| top + ph - (v.max(1.0).log10() - ymin_log) / (ymax_log - ymin_log) * ph;
    let colors = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        left + pw / 2.0
    );
    // Axes, grid and labels.
    let mut decade = ymin_log;
    while decade <= ymax_log {
        let v = 10f64.powf(decade);
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            fmt_us(v)
        );
        decade += 1.0;
    }
    let mut ticks = Vec::new();
    let mut d = xmin_log;
    while d <= xmax_log {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(d);
            if v.log10() <= xmax_log + 1e-9 {
                ticks.push(v);
            }
        }
        d += 1.0;
    }
    for v in ticks {
        let xx = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" y1="{top}" x2="{xx}" y2="{}" stroke="#eee"/><text x="{xx}" y="{}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            num(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">deliveries per second (log); hollow: as fast as the window allows</text>"#,
        left + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">p99 send→deliver (log)</text>"#,
        top + ph / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut pts = points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .filter(|p| p.2)
            .map(|&(a, b, _)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(a, b, fixed_rate) in &pts {
            let fill = if fixed_rate { color } else { "white" };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"/>"#,
                x(a),
                y(b)
            );
        }
        let ly = top + 16.0 + 20.0 * i as f64;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One line of the targets table.
struct Check {
    target: &'static str,
    measured: String,
    met: Option<bool>,
    gap: String,
}

fn find<'a>(reports: &'a [Report], label: &str) -> Option<&'a Report> {
    reports.iter().find(|r| r.label == label)
}

fn p99(l: &Option<LatencySummary>) -> Option<f64> {
    l.as_ref().map(|l| l.p99_us)
}

/// The disk's own floor: p99 of one small write and `fdatasync` in the
/// layout chatd's commit log uses (`loadgen disk`'s `written` phase: a
/// file written to its full size beforehand).
fn disk_floor_p99(disk: Option<&serde_json::Value>) -> Option<f64> {
    disk?
        .get("phases")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("written"))?
        .get("latency")?
        .get("p99_us")?
        .as_f64()
}

fn cpu_per_delivery(r: &Report) -> Option<f64> {
    r.server.as_ref().and_then(|s| s.cpu_us_per_delivery)
}

fn deliveries_per_cpu(r: &Report) -> Option<f64> {
    r.server.as_ref().and_then(|s| s.deliveries_per_cpu_second)
}

/// The targets of the durable write path, each checked against this run's
/// figures (`disk`: the run's `loadgen disk` report, for the latency floor).
fn checks(reports: &[Report], disk: Option<&serde_json::Value>) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(c) = find(reports, "direct-max-chatd") {
        let cpu = cpu_per_delivery(c).unwrap_or(f64::MAX);
        out.push(Check {
            target: "`direct` 100 B at full load: server CPU per delivery ≤ 2.0 µs",
            measured: format!("{cpu:.2} µs"),
            met: Some(cpu <= 2.0),
            gap: if cpu <= 2.0 {
                String::new()
            } else {
                format!("{:.1}× the target", cpu / 2.0)
            },
        });
        if let Some(r) = find(reports, "direct-max-redis") {
            let (ct, rt) = (c.deliveries_per_second, r.deliveries_per_second);
            let share = ct / rt.max(1.0);
            out.push(Check {
                target: "`direct` 100 B at full load: throughput ≥ 40 % of Redis pub/sub's",
                measured: format!("chatd {} msg/s; Redis pub/sub {} msg/s", num(ct), num(rt)),
                met: Some(share >= 0.4),
                gap: if share >= 0.4 {
                    String::new()
                } else {
                    format!("{:.0} % of Redis pub/sub's", share * 100.0)
                },
            });
        }
        let peers: Vec<&Report> = DURABLE_PEERS
            .iter()
            .filter_map(|p| find(reports, &format!("direct-max-{p}")))
            .collect();
        if !peers.is_empty() {
            let ct = c.deliveries_per_second;
            let below: Vec<String> = peers
                .iter()
                .filter(|p| ct < p.deliveries_per_second)
                .map(|p| {
                    format!(
                        "{:.0} % of {}",
                        ct / p.deliveries_per_second.max(1.0) * 100.0,
                        p.target
                    )
                })
                .collect();
            out.push(Check {
                target: "`direct` 100 B at full load: throughput ≥ 1.0× each durable peer's",
                measured: format!(
                    "chatd {} msg/s; {}",
                    num(ct),
                    peers
                        .iter()
                        .map(|p| format!("{} {}", p.target, num(p.deliveries_per_second)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                met: Some(below.is_empty()),
                gap: below.join("; "),
            });
        }
    }
    if let Some(c) = find(reports, "direct-rate20000-chatd") {
        let p = p99(&c.send_to_deliver).unwrap_or(f64::MAX);
        let p999 = c.send_to_deliver.as_ref().map(|l| l.p999_us);
        let floor = disk_floor_p99(disk);
        let met = floor.map(|f| p <= 2.0 * f);
        out.push(Check {
            target: "`direct` at 20,000 msg/s: p99 send→deliver ≤ 2× the disk's p99 for the commit log's layout (`loadgen disk`, `written`)",
            measured: format!(
                "p99 {} (p99.9 {}); disk p99 {}",
                fmt_us(p),
                p999.map_or("–".into(), fmt_us),
                floor.map_or("not measured".into(), fmt_us)
            ),
            met,
            gap: match (met, floor) {
                (Some(false), Some(f)) => format!("{:.0}× the disk's p99", p / f.max(1.0)),
                _ => String::new(),
            },
        });
    }
    if let (Some(c), Some(r)) = (
        find(reports, "group500-max-chatd"),
        find(reports, "group500-max-redis"),
    ) {
        let (cd, rd) = (
            deliveries_per_cpu(c).unwrap_or(0.0),
            deliveries_per_cpu(r).unwrap_or(f64::MAX),
        );
        out.push(Check {
            target: "`group` of 500 online members: deliveries per server CPU-second ≥ Redis pub/sub's",
            measured: format!("chatd {}; Redis pub/sub {}", num(cd), num(rd)),
            met: Some(cd >= rd),
            gap: if cd >= rd {
                String::new()
            } else {
                format!("{:.0} % of Redis pub/sub's", cd / rd.max(1.0) * 100.0)
            },
        });
    }
    // Idle sessions: TCP within 4 KiB, QUIC within 16 KiB, each on its
    // largest verified run.
    for (transport, budget, target) in [
        (
            "tcp",
            4096.0,
            "`connections` over TCP: ≤ 4 KiB of server memory per idle session",
        ),
        (
            "quic",
            16384.0,
            "`connections` over QUIC: ≤ 16 KiB of server memory per idle session",
        ),
    ] {
        let run = reports
            .iter()
            .filter(|r| {
                r.scenario == "connections" && r.verification.ok && r.transport == transport
            })
            .max_by_key(|r| {
                r.extra
                    .get("sessions")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
            });
        let Some(r) = run else { continue };
        let sessions = r
            .extra
            .get("sessions")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let bytes = r
            .extra
            .get("private_bytes_per_session")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::MAX);
        out.push(Check {
            target,
            measured: format!(
                "{} bytes of private memory per session, {} sessions over {transport}",
                num(bytes),
                num(sessions as f64)
            ),
            met: Some(bytes <= budget),
            gap: if bytes <= budget {
                String::new()
            } else {
                format!("{:.2}× the budget", bytes / budget)
            },
        });
    }
    out
}

/// The comparison targets that store every message durably.
const DURABLE_PEERS: [&str; 3] = ["redis-streams", "nats-jetstream", "ejabberd"];

/// `direct` at one offered rate over each transport, side by side: what
/// TLS, QUIC and WebSocket cost against plain TCP (chatd runs only, rates
/// run over more than one transport).
fn transports_table(out: &mut String, reports: &[Report]) {
    let mut by_rate: BTreeMap<(String, u64), Vec<&Report>> = BTreeMap::new();
    for r in reports {
        if r.scenario == "direct" && r.target == "chatd" && r.rate > 0.0 {
            by_rate
                .entry((target_name(r), r.rate as u64))
                .or_default()
                .push(r);
        }
    }
    by_rate.retain(|_, rs| rs.iter().any(|r| r.transport != "tcp"));
    if by_rate.is_empty() {
        return;
    }
    out.push_str(
        "## Transports\n\n`direct` at the same offered rate over each of chatd's transports \
         (rows from the `direct` table).\n\n\
         | target | offered | transport | sent msg/s | send→ack p50 / p99 | send→deliver p50 | p99 | p99.9 | server CPU per delivery | loadgen CPU | verified |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for rs in by_rate.values_mut() {
        rs.sort_by_key(|r| transport_rank(r));
        for r in rs.iter() {
            let d = &r.send_to_deliver;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                target_name(r),
                rate(r),
                r.transport,
                num(r.sent_per_second),
                us(&r.send_to_ack, |l| l.p50_us),
                us(&r.send_to_ack, |l| l.p99_us),
                us(d, |l| l.p50_us),
                us(d, |l| l.p99_us),
                us(d, |l| l.p999_us),
                r.server
                    .as_ref()
                    .and_then(|s| s.cpu_us_per_delivery)
                    .map_or("–".into(), |v| format!("{v:.2} µs")),
                loadgen_cpu(r),
                verdict(r),
            );
        }
    }
    out.push('\n');
}

/// loadgen's share of its own core during the run, as a table cell.
fn loadgen_cpu(r: &Report) -> String {
    r.extra
        .get("loadgen_cpu_share")
        .and_then(|v| v.as_f64())
        .map_or("–".into(), |v| format!("{:.0} %", v * 100.0))
}

/// Writes `output` from the reports in `input`.
pub fn write(
    input: &Path,
    output: &Path,
    notes: Option<&Path>,
    appendix: Option<&Path>,
    disk: Option<&Path>,
) -> anyhow::Result<()> {
    let reports = load(input)?;
    let disk: Option<serde_json::Value> = match disk {
        Some(d) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(d).with_context(|| format!("reading {}", d.display()))?,
            )
            .with_context(|| format!("{} is not a `loadgen disk` report", d.display()))?,
        ),
        None => None,
    };
    let dir = output.parent().unwrap_or(Path::new("."));
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `benches/run.sh` (`loadgen report`) from the JSON reports of one run; \
         every number below comes from that run. chatd persists every message with fsync \
         before it acknowledges it; Redis and NATS pub/sub store nothing; the durable peers \
         (redis-streams, nats-jetstream, ejabberd) sync every message to disk before they \
         acknowledge or deliver it (their settings are under \"Durable peers\").\n\n",
    );
    if let Some(n) = notes {
        md.push_str(
            &std::fs::read_to_string(n).with_context(|| format!("reading {}", n.display()))?,
        );
        md.push('\n');
    }

    let checks = checks(&reports, disk.as_ref());
    if !checks.is_empty() {
        md.push_str("## Targets\n\n| target | measured | met | by how much |\n|---|---|---|---|\n");
        for c in &checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.target,
                c.measured,
                match c.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                },
                c.gap
            );
        }
        md.push('\n');
    }

    for scenario in ["direct", "group", "channel"] {
        let mut rs: Vec<&Report> = reports.iter().filter(|r| r.scenario == scenario).collect();
        // Runs as fast as the window allows first, then by offered rate;
        // the targets side by side.
        rs.sort_by(|a, b| {
            (a.rate > 0.0)
                .cmp(&(b.rate > 0.0))
                .then(a.fanout.cmp(&b.fanout))
                .then(a.rate.total_cmp(&b.rate))
                .then(target_name(a).cmp(&target_name(b)))
                .then(transport_rank(a).cmp(&transport_rank(b)))
        });
        if rs.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## `{scenario}`\n");
        if let Some(r) = rs.first() {
            let _ = writeln!(
                md,
                "{} users, {} recipient(s) per message besides the sender, {} B payloads, {:.0} s measured after the warm-up.\n",
                num(r.users as f64),
                r.fanout,
                r.payload_bytes,
                r.measured_seconds
            );
        }
        messaging_table(&mut md, &rs);
        let mut series: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for r in &rs {
            if let Some(p) = p99(&r.send_to_deliver) {
                series.entry(series_name(r)).or_default().push((
                    r.deliveries_per_second,
                    p,
                    r.rate > 0.0,
                ));
            }
        }
        if series.values().any(|v| v.len() > 1) {
            let name = format!("latency-{scenario}.svg");
            std::fs::write(
                dir.join(&name),
                plot(
                    &format!("{scenario}: p99 send→deliver vs throughput"),
                    &series,
                ),
            )?;
            let _ = writeln!(md, "![{scenario}: latency vs throughput]({name})\n");
        }
    }

    transports_table(&mut md, &reports);

    let conns: Vec<&Report> = reports
        .iter()
        .filter(|r| r.scenario == "connections")
        .collect();
    if !conns.is_empty() {
        md.push_str("## `connections`\n\n| run | transport | sessions | alive at end | private bytes / session | RSS bytes / session | opened per second | pong p99 (from the start of a ping sweep over all sessions) | verified |\n|---|---|---|---|---|---|---|---|---|\n");
        for r in conns {
            let g = |k: &str| r.extra.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.transport,
                num(g("sessions")),
                num(g("alive_at_end")),
                num(g("private_bytes_per_session")),
                num(g("rss_bytes_per_session")),
                num(g("sessions_opened_per_second")),
                us(&r.send_to_ack, |l| l.p99_us),
                verdict(r)
            );
        }
        md.push('\n');
    }
    let syncs: Vec<&Report> = reports.iter().filter(|r| r.scenario == "sync").collect();
    if !syncs.is_empty() {
        md.push_str("## `sync`\n\n| run | transport | pairs | missed per round | rounds | catch-up p50 | p99 | max | messages synced per second | verified |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in syncs {
            let c: Option<LatencySummary> = r
                .extra
                .get("catch_up")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let g = |k: &str| r.extra.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.transport,
                r.users / 2,
                num(g("missed_per_round")),
                num(g("rounds")),
                us(&c, |l| l.p50_us),
                us(&c, |l| l.p99_us),
                us(&c, |l| l.max_us),
                num(r.deliveries_per_second),
                verdict(r)
            );
        }
        md.push('\n');
    }
    if let Some(a) = appendix {
        md.push_str(
            &std::fs::read_to_string(a).with_context(|| format!("reading {}", a.display()))?,
        );
        md.push('\n');
    }
    md.push_str("## Every run\n\n| run | command |\n|---|---|\n");
    for r in &reports {
        let args: Vec<&str> = r.args.iter().skip(1).map(String::as_str).collect();
        let _ = writeln!(md, "| {} | `loadgen {}` |", r.label, args.join(" "));
    }
    md.push('\n');
    std::fs::write(output, md).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of `scenario` over `transport` (`None`: a report from
    /// before loadgen had transports) with p99 send→deliver `p99_us`.
    fn report(label: &str, scenario: &str, transport: Option<&str>, p99_us: f64) -> String {
        let mut r = serde_json::json!({
            "scenario": scenario, "target": "chatd", "label": label,
            "args": ["loadgen", scenario], "server_command": null,
            "payload_bytes": 100, "rate": 20000.0, "window": 1000,
            "measured_seconds": 10.0, "users": 100, "fanout": 1,
            "sent_per_second": 20000.0, "deliveries_per_second": 20000.0,
            "send_to_ack": null,
            "send_to_deliver": {"count": 1, "mean_us": 1.0, "p50_us": 1.0, "p90_us": 1.0,
                                "p99_us": p99_us, "p999_us": 1.0, "max_us": 1.0},
            "send_to_last": null, "errors": 0, "error_samples": [],
            "verification": {"ok": true, "sent": 1, "expected_deliveries": 1,
                             "deliveries": 1, "missing": 0, "duplicates": 0,
                             "out_of_order": 0, "unknown": 0},
            "server": null,
            "extra": {"sessions": 50000, "private_bytes_per_session": 1000.0}
        });
        if let Some(t) = transport {
            r["transport"] = t.into();
        }
        r.to_string()
    }

    #[test]
    fn transports_are_listed_side_by_side() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = [
            (
                "a.json",
                report("direct-rate20000-chatd", "direct", None, 111.0),
            ),
            (
                "b.json",
                report("direct-rate20000-chatd-wss", "direct", Some("wss"), 555.0),
            ),
            (
                "c.json",
                report("direct-rate20000-chatd-quic", "direct", Some("quic"), 333.0),
            ),
            (
                "d.json",
                report("connections-quic", "connections", Some("quic"), 1.0),
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write report");
        }
        let out = dir.path().join("B.md");
        write(dir.path(), &out, None, None, None).expect("report");
        let md = std::fs::read_to_string(&out).expect("read");
        let table = md
            .split("## Transports")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("a transports table");
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| chatd")).collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(
            rows[0].contains("| tcp |") && rows[0].contains("111 µs"),
            "{table}"
        );
        assert!(
            rows[1].contains("| quic |") && rows[1].contains("333 µs"),
            "{table}"
        );
        assert!(
            rows[2].contains("| wss |") && rows[2].contains("555 µs"),
            "{table}"
        );
        assert!(md.contains("| connections-quic | quic | 50,000 |"), "{md}");
        assert!(md.contains("50,000 sessions over quic"), "{md}");
        assert!(md.contains("`connections` over QUIC: ≤ 16 KiB"), "{md}");
    }

    #[test]
    fn chatd_is_checked_against_each_durable_peer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let with = |label: &str, target: &str, rate: f64| {
            let mut r: serde_json::Value =
                serde_json::from_str(&report(label, "direct", None, 1.0)).expect("json");
            r["target"] = target.into();
            r["rate"] = 0.0.into();
            r["deliveries_per_second"] = rate.into();
            r.to_string()
        };
        for (label, target, rate) in [
            ("direct-max-chatd", "chatd", 1000.0),
            ("direct-max-redis-streams", "redis-streams", 4000.0),
            ("direct-max-ejabberd", "ejabberd", 400.0),
        ] {
            std::fs::write(
                dir.path().join(format!("{label}.json")),
                with(label, target, rate),
            )
            .expect("write report");
        }
        let out = dir.path().join("B.md");
        write(dir.path(), &out, None, None, None).expect("report");
        let md = std::fs::read_to_string(&out).expect("read");
        let row = md
            .lines()
            .find(|l| l.contains("each durable peer"))
            .expect("a durable peers check");
        assert!(row.contains("redis-streams 4,000, ejabberd 400"), "{row}");
        assert!(
            row.contains("**no**") && row.contains("25 % of redis-streams"),
            "{row}"
        );
        assert!(!row.contains("of ejabberd"), "{row}");
    }
}
