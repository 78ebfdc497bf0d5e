//! The operator files in `server/deploy/`: the Grafana dashboard and the
//! Prometheus rules query only metrics a running chatd exports, the rules
//! are well formed (and pass `promtool check rules` where promtool is
//! installed), the example configuration is accepted, the systemd unit
//! passes `systemd-analyze verify` where systemd-analyze is installed, and
//! the Dockerfile exposes the default ports.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Raw;
use common::process::Chatd;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name` as found on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The body of `GET /metrics` (HTTP/1.0: no chunked encoding).
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_owned()
}

/// Metric name to type (`counter`, `gauge`, `histogram`, `summary`,
/// `untyped`), from the exposition's `# TYPE` lines and, for samples
/// without one, the sample names.
fn exported(exposition: &str) -> HashMap<String, String> {
    let mut types = HashMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let covered = types.contains_key(&name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|b| types.contains_key(b)));
        if !name.is_empty() && !covered {
            types.insert(name, "untyped".to_owned());
        }
    }
    types
}

/// The `chatd_` metric names a PromQL expression (or a Grafana
/// `label_values(…)` query) selects: identifiers outside string literals.
fn queried_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // A string literal: label values, never metric names.
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut ident = c.to_string();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                        ident.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if ident.starts_with("chatd_") {
                    names.insert(ident);
                }
            }
            c if c.is_ascii_digit() => {
                // A number (`0.99`, `1e3`): its letters are no identifier.
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.')
                {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    names
}

/// `Ok` if the server exports the series `name` selects: a counter, gauge
/// or summary by its own name, a histogram's `_bucket`, `_sum` and `_count`
/// series, a summary's `_sum` and `_count`.
fn check_exported(name: &str, types: &HashMap<String, String>) -> Result<(), String> {
    match types.get(name).map(String::as_str) {
        Some("histogram") => {
            return Err(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            ));
        }
        Some(_) => return Ok(()),
        None => {}
    }
    let base_is = |suffix: &str, kinds: &[&str]| {
        name.strip_suffix(suffix)
            .and_then(|base| types.get(base))
            .is_some_and(|kind| kinds.contains(&kind.as_str()))
    };
    if base_is("_bucket", &["histogram"])
        || base_is("_sum", &["histogram", "summary"])
        || base_is("_count", &["histogram", "summary"])
    {
        Ok(())
    } else {
        Err(format!("{name} is not exported by chatd"))
    }
}

/// Every query string of a Grafana dashboard (panel targets' `expr`,
/// template variables' `query`), each with the title of the panel or the
/// name of the variable it belongs to.
fn dashboard_queries(v: &serde_json::Value, owner: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            let owner = map
                .get("title")
                .or_else(|| map.get("name"))
                .and_then(|t| t.as_str())
                .unwrap_or(owner);
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push((owner.to_owned(), q.clone()));
                    }
                    _ => dashboard_queries(value, owner, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_queries(item, owner, out);
            }
        }
        _ => {}
    }
}

/// A Prometheus rules file (the fields chatd's uses; any other is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Whether `s` is a Prometheus duration such as `5m` or `1h30m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .iter()
            .find(|u| rest.starts_with(**u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn load_rules() -> RuleFile {
    let path = deploy("prometheus/chatd-rules.yml");
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn rules_are_well_formed() {
    let rules = load_rules();
    let mut alerts = BTreeSet::new();
    for group in &rules.groups {
        assert!(!group.name.is_empty(), "a group without a name");
        for rule in &group.rules {
            assert!(!rule.expr.trim().is_empty(), "{rule:?}: empty expr");
            let Some(alert) = &rule.alert else {
                assert!(rule.record.is_some(), "{rule:?}: neither alert nor record");
                continue;
            };
            assert!(rule.record.is_none(), "{alert}: both alert and record");
            assert!(alerts.insert(alert.clone()), "{alert}: defined twice");
            let pending = rule.for_.as_deref().unwrap_or_default();
            assert!(is_duration(pending), "{alert}: for: {pending:?}");
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{alert}: severity {severity:?}"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule.annotations.get(key).is_some_and(|a| !a.is_empty()),
                    "{alert}: no {key} annotation"
                );
            }
        }
    }
    assert!(alerts.len() >= 5, "{alerts:?}");

    let rules_file = deploy("prometheus/chatd-rules.yml");
    let Some(promtool) = on_path("promtool") else {
        eprintln!("note: promtool is not on PATH; `promtool check rules` skipped");
        return;
    };
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules_file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_is_importable() {
    let path = deploy("grafana/chatd.json");
    let dash: serde_json::Value =
        serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(dash["uid"], "chatd");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id repeated"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
            assert!(ref_ids.insert(target["refId"].as_str().expect("refId")));
        }
    }
    assert!(graphs >= 8, "{graphs} panels");
}

/// The dashboard and the alert rules select only series that a chatd with
/// a little traffic exports (`/metrics` of a real process).
#[tokio::test]
async fn dashboard_and_rules_query_only_exported_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Chatd::start(dir.path(), "");
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 0..3 {
        alice.send_text(conv, &format!("m{i}"), "hello").await;
    }
    for _ in 0..3 {
        bob.next_message().await;
    }
    drop(bob);
    let mut bob = Raw::login(server.addr, "bob").await;
    bob.send_text(conv, "reply", "hi").await;
    alice.next_message().await;
    // Histogram samples reach /metrics at the next upkeep, which a scrape
    // runs first; the commits above are all acknowledged.
    let types = exported(&scrape(server.http_addr).await);
    assert_eq!(
        types.get("chatd_write_ack_seconds").map(String::as_str),
        Some("histogram"),
        "the exporter's histograms changed form"
    );

    let mut queries = Vec::new();
    let path = deploy("grafana/chatd.json");
    let dash: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    let mut found = Vec::new();
    dashboard_queries(&dash, "dashboard", &mut found);
    queries.extend(
        found
            .into_iter()
            .map(|(owner, q)| (format!("grafana/chatd.json {owner:?}"), q)),
    );
    for group in load_rules().groups {
        for rule in group.rules {
            let name = rule.alert.or(rule.record).unwrap_or_default();
            queries.push((format!("prometheus/chatd-rules.yml {name}"), rule.expr));
        }
    }

    let mut queried = BTreeSet::new();
    let mut missing = Vec::new();
    for (owner, query) in &queries {
        for name in queried_metrics(query) {
            if let Err(why) = check_exported(&name, &types) {
                missing.push(format!("{owner}: {why}"));
            }
            queried.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}",
        missing.join("\n")
    );
    // The extraction found what the files are about.
    for name in [
        "chatd_sessions",
        "chatd_write_ack_seconds_bucket",
        "chatd_storage_commit_seconds_bucket",
        "chatd_push_failed_total",
        "chatd_slow_consumers_total",
    ] {
        assert!(queried.contains(name), "{name} not found in {queried:?}");
    }
}

#[test]
fn metric_names_are_found_outside_strings_only() {
    let q = queried_metrics(
        r#"histogram_quantile(0.99, sum by (le) (rate(chatd_a_bucket{job="chatd_b", x='chatd_c'}[5m]))) / chatd_d:rate5m > 1e3"#,
    );
    let expected: BTreeSet<String> = ["chatd_a_bucket", "chatd_d:rate5m"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(q, expected);
    let types: HashMap<String, String> = [("chatd_h", "histogram"), ("chatd_c_total", "counter")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert!(check_exported("chatd_h_bucket", &types).is_ok());
    assert!(check_exported("chatd_h_count", &types).is_ok());
    assert!(check_exported("chatd_h", &types).is_err());
    assert!(check_exported("chatd_c_total", &types).is_ok());
    assert!(check_exported("chatd_c_total_count", &types).is_err());
    assert!(check_exported("chatd_nope", &types).is_err());
}

#[test]
fn example_config_is_accepted() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--print-config")
        .arg("--config")
        .arg(deploy("chatd.toml"))
        .env_remove("CHATD_CONFIG")
        .env("CHATD_LOG", "error")
        .output()
        .expect("run chatd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "http_listen = \"0.0.0.0:7480\"",
        "data_dir = \"/var/lib/chatd\"",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} not in\n{stdout}");
    }
}

/// The value of the unit's `key=` line.
fn directive<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn systemd_unit_verifies() {
    let unit = read(&deploy("systemd/chatd.service"));
    let defaults = chatd::Config::default();
    let stop: u64 = directive(&unit, "TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop * 1000 > defaults.shutdown_grace_ms,
        "TimeoutStopSec={stop} is within shutdown_grace_ms"
    );
    let nofile: usize = directive(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE");
    assert!(nofile > defaults.max_connections_per_shard);
    const EXEC: &str = "/usr/local/bin/chatd --config /etc/chatd/chatd.toml";
    assert_eq!(directive(&unit, "ExecStart"), EXEC);

    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("note: systemd-analyze is not on PATH; `systemd-analyze verify` skipped");
        return;
    };
    // verify requires ExecStart's program to exist: run it on the built one.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("chatd.service");
    let built = format!(
        "\"{}\" --config /etc/chatd/chatd.toml",
        env!("CARGO_BIN_EXE_chatd")
    );
    std::fs::write(&copy, unit.replace(EXEC, &built)).expect("write unit");
    let version = Command::new(&analyze)
        .arg("--version")
        .output()
        .expect("systemd-analyze --version");
    // "systemd 252 (…)"; --recursive-errors (250 and later) keeps the units
    // this one names (network-online.target) out of the verdict.
    let release: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut verify = Command::new(&analyze);
    verify.arg("verify").arg("--man=no");
    if release >= 250 {
        verify.arg("--recursive-errors=no");
    }
    let out = verify.arg(&copy).output().expect("systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("systemd-analyze verify (systemd {release}):\n{text}");
    // Unknown keys and unparsable values are warnings ("…, ignoring") with
    // exit status 0: any line about this unit is an error of the unit.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("chatd.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn dockerfile_exposes_the_default_ports() {
    let dockerfile = read(&deploy("docker/Dockerfile"));
    let exposed: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    let d = chatd::Config::default();
    let port = |a: Option<std::net::SocketAddr>| a.expect("listener on by default").port();
    let expected: BTreeSet<String> = [
        format!("{}/tcp", d.tcp_listen.port()),
        format!("{}/tcp", port(d.tls_listen)),
        format!("{}/udp", port(d.quic_listen)),
        format!("{}/tcp", port(d.wss_listen)),
        format!("{}/tcp", d.http_listen.port()),
    ]
    .into_iter()
    .collect();
    let exposed: BTreeSet<String> = exposed.into_iter().map(String::from).collect();
    assert_eq!(exposed, expected);
    // COPY sources are relative to the build context, the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) || words.len() < 3 {
            continue;
        }
        for source in &words[1..words.len() - 1] {
            assert!(root.join(source).exists(), "{line}: {source} not found");
        }
    }
}
