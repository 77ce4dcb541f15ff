//! The VPC CNI's IPAMD introspection endpoint (`curl http://127.0.0.1:61679/v1/enis`): one
//! plain HTTP/1.0 GET over TCP, bounded in time and size.
//!
//! Side effects: one TCP connection to the endpoint per snapshot. Nothing listening (a node
//! without the VPC CNI, a lab) is normal: the snapshot goes on without it, logged once.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::model::{
    ReadWarning,
    ipamd::{IpamdEni, parse_enis},
};

/// Where IPAMD listens on every node with the VPC CNI.
pub const DEFAULT_URL: &str = "http://127.0.0.1:61679";
/// The whole exchange, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A node has at most a few hundred addresses: 4 MiB is plenty.
const MAX_BODY: u64 = 4 << 20;

static UNREACHABLE_LOGGED: AtomicBool = AtomicBool::new(false);

/// Why `/v1/enis` could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum IpamdFetchError {
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}/v1/enis took longer than 2 s")]
    Timeout { url: String },
    #[error("{url}/v1/enis answered {status}")]
    Status { url: String, status: String },
}

/// `host:port` of `http://host:port[/]` (or of `host:port`).
fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// GET `<url>/v1/enis`; the body.
async fn get(url: &str) -> Result<String, IpamdFetchError> {
    let io = |source| IpamdFetchError::Io {
        url: url.to_owned(),
        source,
    };
    let host = authority(url);
    let mut s = tokio::net::TcpStream::connect(host).await.map_err(io)?;
    s.write_all(
        format!("GET /v1/enis HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_BODY).read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(IpamdFetchError::Status {
            url: url.to_owned(),
            status: status.to_owned(),
        });
    }
    Ok(body.to_owned())
}

/// The node ENIs IPAMD holds, `None` when it does not answer (logged once per process) or
/// `url` is empty; a malformed answer is a read warning.
pub async fn read(url: &str, warnings: &mut Vec<ReadWarning>) -> Option<Vec<IpamdEni>> {
    if url.is_empty() {
        return None;
    }
    let body = match tokio::time::timeout(TIMEOUT, get(url)).await {
        Ok(Ok(body)) => body,
        Ok(Err(IpamdFetchError::Status { url, status })) => {
            warnings.push(ReadWarning::new(
                format!("{url}/v1/enis"),
                format!("IPAMD at {url} answered /v1/enis with {status}"),
            ));
            return None;
        }
        Ok(Err(e)) => {
            if !UNREACHABLE_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::info!(event = "ipamd-absent", error = %e,
                    "IPAMD introspection does not answer: ENI ids of ordinary pods stay unknown");
            }
            return None;
        }
        Err(_) => {
            let e = IpamdFetchError::Timeout {
                url: url.to_owned(),
            };
            warnings.push(ReadWarning::new(format!("{url}/v1/enis"), e.to_string()));
            return None;
        }
    };
    match parse_enis(&body) {
        Ok(enis) => Some(enis),
        Err(e) => {
            warnings.push(ReadWarning::new(format!("{url}/v1/enis"), e.to_string()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn authority_of_urls() {
        assert_eq!(
            super::authority("http://127.0.0.1:61679"),
            "127.0.0.1:61679"
        );
        assert_eq!(
            super::authority("http://127.0.0.1:61679/"),
            "127.0.0.1:61679"
        );
        assert_eq!(super::authority("[::1]:61679"), "[::1]:61679");
    }
}
