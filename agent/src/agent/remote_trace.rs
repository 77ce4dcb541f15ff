//! `GET /v1/trace?from=<pod IP or host veth>&to=<ip>[:<port>]&proto=tcp|udp`: the agent runs
//! `sgpath trace` on its node for a remote caller (`kubectl sgpath trace`) and answers
//!
//! ```text
//! { "schema": "sgpath.trace-answer/v1", "exit": 0 | 1, "text": "<trace as text>",
//!   "trace": <trace as `sgpath trace -o json` prints it> }
//! ```
//! 400 for a malformed query (naming the parameter), 422 when `sgpath trace` refuses (an
//! unknown pod: its message), 503 when another trace holds the slot too long, 504 when it
//! does not finish in [`TRACE_TIMEOUT`].
//!
//! The trace runs in a child process (this same binary, `sgpath trace`), one at a time: it
//! takes a fresh snapshot of the node, so it never blocks the agent's loop, and a trace
//! that hangs on netlink is killed, not the agent.
//!
//! Side effects: spawns `sgpath trace` (netlink reads only, nothing sent on the wire).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

/// Time a trace has to finish, and a caller to wait for the slot.
pub const TRACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs traces for the HTTP server.
pub struct RemoteTrace {
    pub cni_config: PathBuf,
    slot: Semaphore,
}

/// A validated `/v1/trace` query.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    from: String,
    to: String,
    proto: &'static str,
}

/// The HTTP answer: status and body.
pub type Answer = (u16, String);

/// `%41` -> `A`; `None` for a truncated or non-hex escape or non-UTF-8 result.
fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Query {
    /// # Errors
    /// A message naming the parameter that is missing, repeated, unknown or malformed.
    pub fn parse(query: &str) -> Result<Query, String> {
        let (mut from, mut to, mut proto) = (None, None, None);
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = unescape(v).ok_or_else(|| format!("{k}: malformed %-escape"))?;
            let slot = match k {
                "from" => &mut from,
                "to" => &mut to,
                "proto" => &mut proto,
                _ => {
                    return Err(format!(
                        "unknown parameter {:?} (from, to, proto)",
                        k.chars().take(32).collect::<String>()
                    ));
                }
            };
            if slot.replace(v).is_some() {
                return Err(format!("{k} given twice"));
            }
        }
        let from = from.ok_or("from is required: the pod's IP or host veth")?;
        let is_veth = |s: &str| {
            (1..=15).contains(&s.len())
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if from.parse::<IpAddr>().is_err() && !is_veth(&from) {
            return Err(format!(
                "from {from:?} is neither an IP nor an interface name"
            ));
        }
        let to = to.ok_or("to is required: <ip>, <ip>:<port> or [<ipv6>]:<port>")?;
        if to.parse::<IpAddr>().is_err() && to.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "to {to:?} is not <ip>, <ip>:<port> or [<ipv6>]:<port>"
            ));
        }
        let proto = match proto.as_deref() {
            None | Some("tcp") => "tcp",
            Some("udp") => "udp",
            Some(p) => return Err(format!("proto {p:?} is not tcp or udp")),
        };
        Ok(Query { from, to, proto })
    }
}

impl RemoteTrace {
    pub fn new(cni_config: PathBuf) -> RemoteTrace {
        RemoteTrace {
            cni_config,
            slot: Semaphore::new(1),
        }
    }

    /// Runs the trace `query` asks for.
    pub async fn answer(&self, query: &str) -> Answer {
        let q = match Query::parse(query) {
            Ok(q) => q,
            Err(e) => return (400, e),
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(TRACE_TIMEOUT, self.slot.acquire()).await else {
            return (503, "another trace is running; try again".into());
        };
        let cni = self.cni_config.clone();
        let ran = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + TRACE_TIMEOUT;
            let json = run(&q, &cni, "json", deadline)?;
            let text = run(&q, &cni, "text", deadline)?;
            Ok::<_, Answer>((json, text))
        })
        .await;
        let ((code, json), (_, text)) = match ran {
            Ok(Ok(both)) => both,
            Ok(Err(answer)) => return answer,
            Err(e) => return (500, format!("the trace task failed: {e}")),
        };
        let trace: serde_json::Value = match serde_json::from_str(&json) {
            Ok(v) => v,
            Err(e) => return (500, format!("sgpath trace printed no JSON: {e}")),
        };
        let body = serde_json::json!({
            "schema": "sgpath.trace-answer/v1", "exit": code, "text": text, "trace": trace,
        });
        (200, body.to_string() + "\n")
    }
}

/// `sgpath trace ... -o <output>`: (exit 0 or 1, stdout), or the HTTP answer for a refusal
/// (exit 2) or a timeout.
fn run(
    q: &Query,
    cni: &std::path::Path,
    output: &str,
    deadline: Instant,
) -> Result<(u8, String), Answer> {
    let exe =
        std::env::current_exe().map_err(|e| (500, format!("cannot find sgpath itself: {e}")))?;
    let mut child = Command::new(exe)
        // `--flag=value`: a value is never read as a flag.
        .arg("trace")
        .arg(format!("--from={}", q.from))
        .arg(format!("--to={}", q.to))
        .arg(format!("--proto={}", q.proto))
        .arg(format!("--output={output}"))
        .arg("--cni-config")
        .arg(cni)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (500, format!("cannot run sgpath trace: {e}")))?;
    // Drain both pipes while it runs: a full pipe would block it.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((
                    504,
                    format!("sgpath trace did not finish within {TRACE_TIMEOUT:?}"),
                ));
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status.code() {
        Some(c @ (0 | 1)) => Ok((c as u8, out)),
        _ => {
            let msg: String = err.trim().chars().take(1024).collect();
            Err((422, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_queries_are_validated_by_name() {
        assert_eq!(
            Query::parse("from=192.168.3.219&to=169.254.20.10%3A53&proto=udp"),
            Ok(Query {
                from: "192.168.3.219".into(),
                to: "169.254.20.10:53".into(),
                proto: "udp"
            })
        );
        assert_eq!(
            Query::parse("from=vlan0c5&to=10.0.0.1").unwrap().proto,
            "tcp"
        );
        for (q, want) in [
            ("to=10.0.0.1", "from is required"),
            ("from=10.0.0.2", "to is required"),
            ("from=10.0.0.2&to=nope", "to \"nope\" is not"),
            ("from=a%20b&to=10.0.0.1", "neither an IP nor an interface"),
            ("from=--help&to=10.0.0.1", "neither an IP"),
            ("from=10.0.0.2&to=10.0.0.1&proto=sctp", "proto \"sctp\""),
            (
                "from=10.0.0.2&from=10.0.0.3&to=10.0.0.1",
                "from given twice",
            ),
            ("from=10.0.0.2&to=10.0.0.1&x=1", "unknown parameter \"x\""),
            ("from=%zz&to=10.0.0.1", "malformed %-escape"),
        ] {
            let e = Query::parse(q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }
}
