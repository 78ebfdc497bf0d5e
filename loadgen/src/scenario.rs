//! Runs a messaging scenario end to end: start (or reach) the target, set
//! up, load, and turn the outcome into a [`Report`].

use std::rc::Rc;

use anyhow::{Context as _, bail};

use crate::cli::{Common, Target, Transport};
use crate::fanout;
use crate::procstat;
use crate::setup::{self, Plan};
use crate::spawn::{self, Spawned};
use crate::stats::{Report, ServerUsage};
use crate::transport::Dialer;

/// The server under test: started here or given with `--server`.
pub struct Server {
    pub spawned: Option<Spawned>,
    /// Opens connections over the run's transport.
    pub dialer: Rc<Dialer>,
}

impl Server {
    /// Starts the target (unless `--server` names one), then pins loadgen
    /// to `--cpu`: after, so that the server does not inherit the pinning.
    pub fn start(common: &Common) -> anyhow::Result<Self> {
        let server = Self::start_unpinned(common)?;
        if let Some(cpu) = common.cpu {
            procstat::pin_to_cpu(cpu).with_context(|| format!("pinning loadgen to CPU {cpu}"))?;
        }
        Ok(server)
    }

    fn start_unpinned(common: &Common) -> anyhow::Result<Self> {
        if common.target != Target::Chatd && common.transport != Transport::Tcp {
            bail!("{} is reached over tcp only", common.target.name());
        }
        if common.server.len() > 1 && common.transport != Transport::Tcp {
            bail!("several --server addresses are for plain tcp");
        }
        let (spawned, addr, cert) = match common.server.first() {
            Some(&addr) => (None, addr, common.ca_cert.clone()),
            None => {
                let s = spawn::start(common)?;
                let cert = common.ca_cert.clone().or_else(|| s.cert.clone());
                let addr = s.transport_addr;
                (Some(s), addr, cert)
            }
        };
        let ca_pem = match &cert {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            }
            None => None,
        };
        let dialer = Dialer::new(
            common.transport,
            addr,
            ca_pem.as_deref(),
            &common.tls_name,
            common.quic_endpoints,
        )?;
        let dialer = match Rc::try_unwrap(dialer) {
            Ok(d) => Rc::new(d.spread_over(common.server.get(1..).unwrap_or_default())),
            Err(shared) => shared,
        };
        Ok(Self { spawned, dialer })
    }

    pub fn pid(&self) -> Option<u32> {
        self.spawned.as_ref().map(|s| s.pid)
    }

    /// chatd's `/metrics` figures (a started chatd only).
    pub fn metrics(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        server_metrics(self.spawned.as_ref()?.http?)
    }

    pub fn command(&self) -> Option<String> {
        self.spawned.as_ref().map(|s| s.command.clone())
    }

    /// Adds the server's last log lines to an error.
    pub fn context(&self, e: anyhow::Error) -> anyhow::Error {
        match &self.spawned {
            Some(s) => e.context(format!("server log:\n{}", s.log_tail())),
            None => e,
        }
    }
}

/// An empty report for `scenario` with the common fields filled in.
pub fn base_report(scenario: &str, common: &Common, server: &Server) -> Report {
    Report {
        scenario: scenario.into(),
        target: common.target.name().into(),
        transport: format!("{:?}", common.transport).to_lowercase(),
        label: common.label.clone().unwrap_or_else(|| {
            let name = format!("{scenario}-{}", common.target.name());
            match common.transport {
                Transport::Tcp => name,
                t => format!("{name}-{t:?}").to_lowercase(),
            }
        }),
        args: std::env::args().collect(),
        server_command: server.command(),
        payload_bytes: common.payload,
        rate: common.rate,
        window: common.window,
        measured_seconds: common.duration,
        users: 0,
        fanout: 0,
        sent_per_second: 0.0,
        deliveries_per_second: 0.0,
        send_to_ack: None,
        send_to_deliver: None,
        send_to_last: None,
        errors: 0,
        error_samples: Vec::new(),
        verification: Default::default(),
        server: None,
        extra: Default::default(),
    }
}

/// `direct`, `group` or `channel`.
pub async fn messaging(scenario: &str, plan: Plan, common: &Common) -> anyhow::Result<Report> {
    if common.target == Target::Ejabberd && plan.kind != setup::Kind::Direct {
        bail!("ejabberd runs the direct scenario only (one-to-one <message> stanzas)");
    }
    let server = Server::start(common)?;
    let pid = server.pid();
    let ready = setup::prepare(&plan, common, &server)
        .await
        .context("setting the run up")
        .map_err(|e| server.context(e))?;
    let memory_before = pid.and_then(procstat::memory);
    let outcome = fanout::run(&plan, ready, common, pid).await?;
    let memory_after = pid.and_then(procstat::memory);
    let run = outcome.run.borrow();
    let mut report = base_report(scenario, common, &server);
    report.users = plan.users;
    report.fanout = plan.convs.first().map_or(0, |c| c.len().saturating_sub(1));
    report.measured_seconds = outcome.measured_seconds;
    report.sent_per_second = run.sent_in_window as f64 / outcome.measured_seconds;
    report.deliveries_per_second = run.deliveries_in_window as f64 / outcome.measured_seconds;
    report.send_to_ack = run.ack.summary();
    report.send_to_deliver = run.deliver.summary();
    if report.fanout > 1 {
        report.send_to_last = run.last.summary();
    }
    report.errors = run.errors;
    report.error_samples = run.error_samples.clone();
    report.verification = run.verify.clone();
    report.extra.insert("echoes".into(), run.echoes.into());
    if common.target == Target::Chatd && common.server.is_empty() {
        report
            .extra
            .insert("durability".into(), common.durability.clone().into());
    }
    report.extra.insert("acked".into(), run.acked.into());
    if common.rate > 0.0 {
        report
            .extra
            .insert("late_sends".into(), run.late_sends.into());
    }
    if let Some(c) = outcome.loadgen_cpu_seconds {
        // Near 1.0 with --cpu means loadgen itself was the limit.
        report.extra.insert(
            "loadgen_cpu_share".into(),
            (c / outcome.measured_seconds).into(),
        );
    }
    if let Some(v) = server.spawned.as_ref().and_then(|s| s.version.clone()) {
        report.extra.insert("server_version".into(), v.into());
    }
    if let Some(m) = server.metrics() {
        report.extra.insert("server_metrics".into(), m.into());
    }
    if let (Some(a), Some(b)) = (outcome.cpu_start, outcome.cpu_end) {
        let cpu = b - a;
        let deliveries = run.deliveries_in_window as f64;
        report.server = Some(ServerUsage {
            cpu_seconds: cpu,
            cpu_us_per_delivery: (deliveries > 0.0).then(|| cpu * 1e6 / deliveries),
            deliveries_per_cpu_second: (cpu > 0.0).then(|| deliveries / cpu),
            memory_before: memory_before.map(Into::into),
            memory_after: memory_after.map(Into::into),
        });
    }
    Ok(report)
}

/// Prints the report and writes its JSON if asked.
pub fn finish(report: &Report, common: &Common) -> anyhow::Result<()> {
    report.print();
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads chatd's `/metrics` and returns the figures that explain a run:
/// group-commit batch size and commit time, write-to-ack time, shed and
/// slow-consumer counts. Values summed over labels.
pub fn server_metrics(
    http: std::net::SocketAddr,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect_timeout(&http, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: chatd\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut sums: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        if let Ok(v) = value.parse::<f64>() {
            *sums.entry(name).or_default() += v;
        }
    }
    let get = |k: &str| sums.get(k).copied().unwrap_or(0.0);
    let mean = |k: &str| {
        let n = get(&format!("{k}_count"));
        (n > 0.0).then(|| get(&format!("{k}_sum")) / n)
    };
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            out.insert(k.into(), v.into());
        }
    };
    put(
        "storage_commits",
        Some(get("chatd_storage_commit_seconds_count")),
    );
    put("storage_batch_jobs_mean", mean("chatd_storage_batch_jobs"));
    put(
        "storage_batch_records_mean",
        mean("chatd_storage_batch_ops"),
    );
    put(
        "storage_commit_ms_mean",
        mean("chatd_storage_commit_seconds").map(|v| v * 1e3),
    );
    put(
        "write_ack_ms_mean",
        mean("chatd_write_ack_seconds").map(|v| v * 1e3),
    );
    put("messages_stored", Some(get("chatd_messages_stored_total")));
    put("deliveries", Some(get("chatd_deliveries_total")));
    put("slow_consumers", Some(get("chatd_slow_consumers_total")));
    put("ephemeral_shed", Some(get("chatd_ephemeral_shed_total")));
    Some(out)
}
