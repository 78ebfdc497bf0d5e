//! Replays the conformance suite of `spec/conformance/scenarios.json`
//! against a real chatd, over TCP and over WebSocket: every scenario on a
//! fresh server with the settings the scenario asks for. The suite's format
//! is in `spec/conformance/README.md`; this file is one implementation of
//! its runner, and the reference a client author's own runner can be
//! compared with.
//!
//! `CONFORMANCE_TRACE=1` prints every frame sent and received;
//! `CONFORMANCE_ONLY=name` runs the scenarios whose name contains `name`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chat_protocol::pb;
use common::wire::{WebSocket, Wire};
use common::{Tcp, TestServer};
use futures_util::FutureExt;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

/// How long an `expect` waits for its frame.
const EXPECT_WAIT: Duration = Duration::from_secs(10);

fn spec_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

fn suite() -> Value {
    let path = spec_dir().join("conformance/scenarios.json");
    let text = std::fs::read_to_string(&path).expect("spec/conformance/scenarios.json");
    serde_json::from_str(&text).expect("scenarios.json is JSON")
}

/// The two envelopes, from `spec/chat.proto` itself.
struct Schema {
    client: MessageDescriptor,
    server: MessageDescriptor,
}

impl Schema {
    fn load() -> Self {
        let mut compiler = protox::Compiler::new([spec_dir()]).expect("include path");
        compiler
            .open_file("chat.proto")
            .expect("chat.proto compiles");
        let pool: DescriptorPool = compiler.descriptor_pool();
        let get = |name: &str| pool.get_message_by_name(name).expect(name);
        Self {
            client: get("chat.v1.ClientFrame"),
            server: get("chat.v1.ServerFrame"),
        }
    }

    /// A client frame written in the proto3 JSON mapping, as bytes with
    /// their length prefix.
    fn encode_client(&self, json: &Value) -> Vec<u8> {
        let msg = DynamicMessage::deserialize(self.client.clone(), json.clone())
            .unwrap_or_else(|e| panic!("not a ClientFrame in proto3 JSON: {e}: {json}"));
        let body = msg.encode_to_vec();
        let mut out = Vec::with_capacity(body.len() + 10);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(&body);
        out
    }

    /// A server frame in the proto3 JSON mapping, every field written
    /// (defaults included), 64-bit integers as strings, enums by name.
    fn to_json(&self, frame: &pb::ServerFrame) -> Value {
        let msg = DynamicMessage::decode(self.server.clone(), frame.encode_to_vec().as_slice())
            .expect("a ServerFrame decodes as one");
        let options = SerializeOptions::new().skip_default_fields(false);
        msg.serialize_with_options(serde_json::value::Serializer, &options)
            .expect("serialisable")
    }
}

/// Replaces `"$name"` values and `${name}` inside strings by bound values.
fn substitute(v: &Value, vars: &HashMap<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix('$').filter(|n| !n.starts_with('{')) {
                return vars
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("${name} is not bound yet"));
            }
            let mut out = s.clone();
            while let Some(start) = out.find("${") {
                let end = out[start..]
                    .find('}')
                    .map(|e| start + e)
                    .expect("closed ${");
                let name = &out[start + 2..end];
                let value = match vars.get(name) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => panic!("${{{name}}} is not bound yet"),
                };
                out.replace_range(start..=end, &value);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Matches `actual` against the (substituted) pattern: objects by the keys
/// the pattern names, arrays element by element, `"*"` any value but the
/// default, `"?name"` the same (bound to `name`, or equal to it if bound),
/// `null` an absent or default value, scalars by their text (64-bit
/// integers are strings in proto3 JSON).
fn matches(
    pattern: &Value,
    actual: &Value,
    vars: &mut HashMap<String, Value>,
    path: &str,
) -> Result<(), String> {
    match pattern {
        Value::Null if is_default(actual) => Ok(()),
        Value::Null => Err(format!("{path}: expected absent or default, got {actual}")),
        Value::String(s) if s == "*" => {
            if is_default(actual) {
                Err(format!("{path}: expected a value, got {actual}"))
            } else {
                Ok(())
            }
        }
        Value::String(s) if s.starts_with('?') => {
            if is_default(actual) {
                return Err(format!(
                    "{path}: expected a value to bind to {s}, got {actual}"
                ));
            }
            let name = &s[1..];
            match vars.get(name) {
                Some(bound) if bound != actual => {
                    Err(format!("{path}: {name} is bound to {bound}, got {actual}"))
                }
                _ => {
                    vars.insert(name.to_owned(), actual.clone());
                    Ok(())
                }
            }
        }
        Value::Object(p) => {
            for (k, v) in p {
                let a = actual.get(k).unwrap_or(&Value::Null);
                matches(v, a, vars, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(p) => {
            let empty = Vec::new();
            let a = actual.as_array().unwrap_or(&empty);
            if a.len() != p.len() {
                return Err(format!(
                    "{path}: expected {} elements, got {}: {actual}",
                    p.len(),
                    a.len()
                ));
            }
            for (i, (pv, av)) in p.iter().zip(a).enumerate() {
                matches(pv, av, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        scalar => match (scalar_text(scalar), scalar_text(actual)) {
            (Some(p), Some(a)) if p == a => Ok(()),
            _ => Err(format!("{path}: expected {scalar}, got {actual}")),
        },
    }
}

/// The transports the suite is replayed over.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

enum Client {
    Tcp(Tcp),
    Ws(Box<WebSocket>),
}

impl Client {
    async fn open(server: &TestServer, transport: Transport) -> Self {
        match transport {
            Transport::Tcp => {
                let stream = tokio::net::TcpStream::connect(server.addr)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                Client::Tcp(common::Raw::from_stream(stream).wire)
            }
            Transport::Ws => Client::Ws(Box::new(
                WebSocket::open(server.http_addr, None)
                    .await
                    .expect("WebSocket upgrade"),
            )),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        match self {
            Client::Tcp(w) => w.write_bytes(bytes).await,
            Client::Ws(w) => w.write_bytes(bytes).await,
        }
    }

    async fn read(&mut self) -> Option<pb::ServerFrame> {
        match self {
            Client::Tcp(w) => w.read_frame().await,
            Client::Ws(w) => w.read_frame().await,
        }
    }
}

/// One replay of one scenario.
struct Run<'a> {
    schema: &'a Schema,
    server: &'a TestServer,
    transport: Transport,
    clients: HashMap<String, Client>,
    vars: HashMap<String, Value>,
    trace: bool,
    /// Frames seen so far, for the failure report.
    log: Vec<String>,
}

impl Run<'_> {
    fn client(&mut self, name: &str) -> &mut Client {
        self.clients
            .get_mut(name)
            .unwrap_or_else(|| panic!("client {name} is not connected"))
    }

    fn note(&mut self, line: String) {
        if self.trace {
            eprintln!("  {line}");
        }
        self.log.push(line);
    }

    async fn send_bytes(&mut self, who: &str, bytes: Vec<u8>) {
        self.client(who).write(&bytes).await;
    }

    /// The next frame for `who` that is not a server Ping (answered here,
    /// as every client must); `None` once the connection closed.
    async fn next(&mut self, who: &str) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(EXPECT_WAIT, self.client(who).read())
                .await
                .unwrap_or_else(|_| panic!("{who}: no frame within {EXPECT_WAIT:?}"))?;
            if let Some(pb::server_frame::Body::Ping(p)) = &frame.body {
                let pong = pb::ClientFrame {
                    request_id: 0,
                    body: Some(pb::client_frame::Body::Pong(pb::Pong { nonce: p.nonce })),
                };
                let bytes = chat_protocol::codec::encode_to_vec(&pong, usize::MAX).expect("pong");
                self.client(who).write(&bytes).await;
                continue;
            }
            let json = self.schema.to_json(&frame);
            self.note(format!("{who} <- {json}"));
            return Some(json);
        }
    }

    async fn step(&mut self, step: &Value) -> Result<(), String> {
        let s = step.as_object().ok_or("a step is an object")?;
        let who = |key: &str| s.get(key).and_then(Value::as_str).map(str::to_owned);
        if let Some(name) = who("connect") {
            let c = Client::open(self.server, self.transport).await;
            self.clients.insert(name, c);
        } else if let Some(name) = who("send") {
            let frame = substitute(s.get("frame").ok_or("send needs a frame")?, &self.vars);
            self.note(format!("{name} -> {frame}"));
            let bytes = self.schema.encode_client(&frame);
            self.send_bytes(&name, bytes).await;
        } else if let Some(name) = who("send_body_hex") {
            let body = hex::decode(s["hex"].as_str().ok_or("hex")?).map_err(|e| e.to_string())?;
            self.note(format!("{name} -> body {}", hex::encode(&body)));
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(body.len() as u64, &mut bytes);
            bytes.extend_from_slice(&body);
            self.send_bytes(&name, bytes).await;
        } else if let Some(name) = who("send_stream_hex") {
            let bytes = hex::decode(s["hex"].as_str().ok_or("hex")?).map_err(|e| e.to_string())?;
            self.note(format!("{name} -> bytes {}", hex::encode(&bytes)));
            self.send_bytes(&name, bytes).await;
        } else if let Some(name) = who("expect") {
            if let Some(pattern) = s.get("frame") {
                let pattern = substitute(pattern, &self.vars);
                let got = self
                    .next(&name)
                    .await
                    .ok_or_else(|| format!("{name}: closed, expected {pattern}"))?;
                matches(&pattern, &got, &mut self.vars, "frame")?;
            } else {
                // Several frames, in any order.
                let patterns: Vec<Value> = s
                    .get("frames")
                    .and_then(Value::as_array)
                    .ok_or("expect needs frame or frames")?
                    .iter()
                    .map(|p| substitute(p, &self.vars))
                    .collect();
                let mut open: Vec<&Value> = patterns.iter().collect();
                while !open.is_empty() {
                    let got = self
                        .next(&name)
                        .await
                        .ok_or_else(|| format!("{name}: closed, still expected {open:?}"))?;
                    let hit = open.iter().position(|p| {
                        let mut trial = self.vars.clone();
                        matches(p, &got, &mut trial, "frame").is_ok()
                    });
                    let Some(i) = hit else {
                        return Err(format!("{name}: {got} matches none of {open:?}"));
                    };
                    matches(open.remove(i), &got, &mut self.vars, "frame")?;
                }
            }
        } else if let Some(name) = who("expect_closed") {
            if let Some(got) = self.next(&name).await {
                return Err(format!("{name}: expected the connection closed, got {got}"));
            }
            self.clients.remove(&name);
        } else if let Some(name) = who("close") {
            self.clients.remove(&name);
        } else {
            return Err(format!("unknown step {step}"));
        }
        Ok(())
    }
}

/// Applies a scenario's `server` settings (chatd configuration keys).
fn configure(config: &mut chatd::Config, settings: &serde_json::Map<String, Value>) {
    for (key, value) in settings {
        let n = value
            .as_u64()
            .unwrap_or_else(|| panic!("setting {key}: a number"));
        match key.as_str() {
            "max_group_members" => config.max_group_members = n as usize,
            "max_message_bytes" => config.max_message_bytes = n as usize,
            "max_frame_bytes" => config.max_frame_bytes = n as usize,
            "max_sessions_per_user" => config.max_sessions_per_user = n as u32,
            "login_failures_per_username" => config.login_failures_per_username = n as u32,
            "rate_user_per_sec" => config.rate_user_per_sec = n as u32,
            "rate_user_burst" => config.rate_user_burst = n as u32,
            other => panic!("the runner does not know the setting {other}"),
        }
    }
}

/// Replaces each `{"use": fragment, k: v, ...}` step by the fragment's
/// steps, with every `{k}` in them written as `v`.
fn expand(steps: &[Value], fragments: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for step in steps {
        let Some(name) = step.get("use").and_then(Value::as_str) else {
            out.push(step.clone());
            continue;
        };
        let fragment = fragments
            .get(name)
            .unwrap_or_else(|| panic!("no fragment {name}"));
        let mut text = fragment.to_string();
        for (k, v) in step.as_object().expect("a step is an object") {
            if k != "use" {
                let v = v.as_str().expect("fragment arguments are strings");
                text = text.replace(&format!("{{{k}}}"), v);
            }
        }
        let steps: Vec<Value> = serde_json::from_str(&text).expect("expanded fragment");
        out.extend(expand(&steps, fragments));
    }
    out
}

async fn replay(schema: &Schema, scenario: &Value, fragments: &Value, transport: Transport) {
    let name = scenario["name"].as_str().expect("scenario name");
    let empty = serde_json::Map::new();
    let settings = scenario
        .get("server")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let server = TestServer::start_configured(|c| configure(c, settings));
    let mut run = Run {
        schema,
        server: &server,
        transport,
        clients: HashMap::new(),
        vars: HashMap::from([(
            "run".to_owned(),
            Value::String(format!("{:06x}", rand::random::<u32>() & 0xff_ffff)),
        )]),
        trace: std::env::var_os("CONFORMANCE_TRACE").is_some(),
        log: Vec::new(),
    };
    if run.trace {
        eprintln!("{name} over {}", transport.name());
    }
    let steps = expand(scenario["steps"].as_array().expect("steps"), fragments);
    for (i, step) in steps.iter().enumerate() {
        let outcome = std::panic::AssertUnwindSafe(run.step(step))
            .catch_unwind()
            .await
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
        if let Err(why) = outcome {
            let tail: Vec<&String> = run.log.iter().rev().take(12).rev().collect();
            panic!(
                "scenario {name} over {}: step {} {step} failed: {why}\nlast frames:\n{}",
                transport.name(),
                i + 1,
                tail.iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    // Nothing the scenario did not expect is waiting: on every connection
    // still open, a Ping's Pong is the next frame.
    let mut open: Vec<String> = run.clients.keys().cloned().collect();
    open.sort();
    for who in open {
        let fence = serde_json::json!({"requestId": "4242", "ping": {"nonce": "4242"}});
        let outcome = std::panic::AssertUnwindSafe(async {
            run.step(&serde_json::json!({"send": who, "frame": fence}))
                .await?;
            run.step(&serde_json::json!({"expect": who, "frame": {"requestId": "4242", "pong": {"nonce": "4242"}}}))
                .await
        })
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err("panicked".into()));
        if let Err(why) = outcome {
            panic!(
                "scenario {name} over {}: after the last step, {who} had a frame no step expected: {why}",
                transport.name()
            );
        }
    }
    drop(run);
    server.stop().await;
}

async fn replay_all(transport: Transport) {
    let schema = Schema::load();
    let suite = suite();
    let only = std::env::var("CONFORMANCE_ONLY").ok();
    let mut ran = 0;
    let mut failed = Vec::new();
    for scenario in suite["scenarios"].as_array().expect("scenarios") {
        let name = scenario["name"].as_str().expect("name");
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let over: Vec<&str> = scenario
            .get("transports")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_else(|| vec!["tcp", "tls", "quic", "ws", "wss"]);
        if !over.contains(&transport.name()) {
            continue;
        }
        let outcome =
            std::panic::AssertUnwindSafe(replay(&schema, scenario, &suite["fragments"], transport))
                .catch_unwind()
                .await;
        if outcome.is_err() {
            failed.push(name.to_owned());
        }
        ran += 1;
    }
    assert!(ran > 0 || only.is_some(), "no scenario ran");
    assert!(
        failed.is_empty(),
        "{} of {ran} scenarios failed over {} (each reported above): {failed:?}",
        failed.len(),
        transport.name()
    );
}

#[test]
fn patterns_match_as_the_readme_says() {
    use serde_json::json;
    let mut vars = HashMap::new();
    let frame =
        json!({"requestId": "3", "sendAck": {"seq": "1", "duplicate": false, "messageId": "99"}});
    let ok = |p: Value, vars: &mut HashMap<String, Value>| matches(&p, &frame, vars, "frame");
    assert!(
        ok(json!({"sendAck": {"seq": 1}}), &mut vars).is_ok(),
        "numbers match 64-bit strings"
    );
    assert!(ok(json!({"sendAck": {"seq": "2"}}), &mut vars).is_err());
    assert!(ok(json!({"sendAck": {"duplicate": null}}), &mut vars).is_ok());
    assert!(
        ok(json!({"sendAck": {"duplicate": "*"}}), &mut vars).is_err(),
        "* is not a default"
    );
    assert!(
        ok(json!({"error": "*"}), &mut vars).is_err(),
        "* is present"
    );
    assert!(ok(json!({"sendAck": {"messageId": "?m"}}), &mut vars).is_ok());
    assert_eq!(vars["m"], json!("99"));
    assert!(
        ok(json!({"sendAck": {"messageId": "?m"}}), &mut vars).is_ok(),
        "bound: equal"
    );
    vars.insert("m".into(), json!("100"));
    assert!(
        ok(json!({"sendAck": {"messageId": "?m"}}), &mut vars).is_err(),
        "bound: differs"
    );
    let list = json!({"ids": ["1", "2"]});
    assert!(
        matches(&json!({"ids": ["1"]}), &list, &mut vars, "f").is_err(),
        "lengths differ"
    );
    assert_eq!(
        substitute(
            &json!({"u": "a_${run}", "id": "$m"}),
            &HashMap::from([("run".into(), json!("x1")), ("m".into(), json!("7"))])
        ),
        json!({"u": "a_x1", "id": "7"})
    );
}

#[tokio::test]
async fn the_conformance_suite_passes_over_tcp() {
    replay_all(Transport::Tcp).await;
}

#[tokio::test]
async fn the_conformance_suite_passes_over_websocket() {
    replay_all(Transport::Ws).await;
}

/// The suite covers what `spec/conformance/README.md` promises: every
/// client message kind the handshake, auth, messaging, sync, receipts,
/// presence and typing use, and every error code a client can provoke.
#[test]
fn the_suite_covers_every_error_a_client_can_cause() {
    let suite = suite();
    let text = suite.to_string();
    let not_scripted: Vec<&str> = suite["not_scripted"]
        .as_object()
        .expect("not_scripted lists the codes a script cannot cause, with why")
        .keys()
        .map(String::as_str)
        .collect();
    let errors = std::fs::read_to_string(spec_dir().join("errors.md")).expect("errors.md");
    let mut missing = Vec::new();
    for line in errors.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || cells[1].parse::<u32>().is_err() {
            continue;
        }
        let code = cells[2];
        let expected = format!("\"code\":\"{code}\"");
        if !text.contains(&expected) && !not_scripted.contains(&code) {
            missing.push(code.to_owned());
        }
    }
    assert!(missing.is_empty(), "no scenario expects {missing:?}");
    for kind in [
        "hello",
        "register",
        "login",
        "logout",
        "resume",
        "createConversation",
        "sendMessage",
        "getHistory",
        "sync",
        "markDelivered",
        "markRead",
        "getReceipts",
        "typing",
        "setPresence",
        "subscribePresence",
        "ping",
    ] {
        assert!(
            text.contains(&format!("\"{kind}\":")),
            "no scenario sends {kind}"
        );
    }
}
