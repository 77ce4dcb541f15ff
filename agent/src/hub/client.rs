//! The agent's side of the hub (`sgpath agent --hub URL`): one `POST /v1/catalog` with the
//! addresses the agent needs, answered with the [`Rules`] to judge by.
//!
//! Side effects: HTTP(S) requests to the hub, each bounded by [`TIMEOUT`]. An `https://` hub
//! is not verified ([`crate::tls::client_config`] without a CA: its certificate is
//! self-signed).

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};

use super::server::CatalogRequest;
use crate::model::sg::Rules;

/// Each request's limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the hub gave no catalog; the text names the hub (it becomes `ec2-unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("sgpath hub {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("sgpath hub {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("sgpath hub {url}: not a catalog: {source}")]
    Malformed {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A client of one hub.
#[derive(Clone)]
pub struct Client {
    url: String,
    /// The agent's projected ServiceAccount token (audience `sgpath`), read at every request:
    /// the kubelet rotates it.
    token_file: Option<std::path::PathBuf>,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// `url`: the hub's base URL (`https://sgpath-hub.kube-system.svc:9465`).
    pub fn new(url: &str) -> Client {
        let mut tls = crate::tls::client_config(None).expect("no CA file to read");
        // hyper-rustls sets ALPN itself (http/1.1 below).
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Client {
            url: url.trim_end_matches('/').to_owned(),
            token_file: None,
            http: HttpClient::builder(hyper_util::rt::TokioExecutor::new()).build(https),
        }
    }

    /// Sends the token in `path` as the bearer of every request (`--hub-token-file`).
    #[must_use]
    pub fn with_token_file(mut self, path: Option<std::path::PathBuf>) -> Client {
        self.token_file = path;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The catalog for `addresses`. A hub that cannot read EC2 answers
    /// [`Rules::Unavailable`]; its reason is prefixed with the hub's URL.
    ///
    /// # Errors
    /// [`HubError`] naming the hub: not reachable, not answering within [`TIMEOUT`], an
    /// HTTP error, or an answer that is not the catalog JSON.
    pub async fn catalog(&self, addresses: &BTreeSet<IpAddr>) -> Result<Rules, HubError> {
        let url = format!("{}/v1/catalog", self.url);
        let unreachable = |message: String| HubError::Unreachable {
            url: self.url.clone(),
            message,
        };
        let body = serde_json::to_vec(&CatalogRequest {
            addresses: addresses.clone(),
        })
        .expect("addresses serialize");
        let mut req =
            hyper::Request::post(&url).header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| {
                unreachable(format!(
                    "the token file {} (--hub-token-file): {e}",
                    path.display()
                ))
            })?;
            req = req.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let (status, body) = tokio::time::timeout(TIMEOUT, async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| unreachable(format!("{e:#}: {}", source_chain(&e))))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, HubError>((status, body))
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
        if status != 200 {
            return Err(HubError::Status {
                url: self.url.clone(),
                status,
                body: String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        let rules: Rules = serde_json::from_slice(&body).map_err(|source| HubError::Malformed {
            url: self.url.clone(),
            source,
        })?;
        Ok(match rules {
            Rules::Unavailable { reason } => Rules::Unavailable {
                reason: format!("sgpath hub {}: {reason}", self.url),
            },
            fresh => fresh,
        })
    }
}

/// The innermost cause of a client error ("Connection refused (os error 111)").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collect::aws::AwsConfig,
        hub::{Config, Hub, server},
        model::sg::Locus,
    };

    /// A hub that never read EC2 answers its first catalog with every address unknown, and
    /// the round trip keeps the catalog's shape; a hub that is not there is named.
    #[tokio::test]
    async fn the_agent_side_reads_the_hubs_answer_and_names_a_missing_hub() {
        let config = Config {
            aws: AwsConfig {
                ec2_endpoint: Some("http://127.0.0.1:9".into()),
                imds_endpoint: "http://127.0.0.1:9".into(),
                region: Some("us-east-1".into()),
                limits: Default::default(),
            },
            address_ttl: Duration::from_secs(300),
            group_refresh: Duration::from_secs(60),
        };
        let hub = Hub::new(&config);
        // HTTPS with a self-signed certificate, as `sgpath hub` serves by default.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let url = format!("https://{addr}");
        let tls = crate::tls::Transport::new(&crate::tls::Source::SelfSigned, addr)
            .expect("a certificate");
        let server = tokio::spawn(server::serve(l, tls, hub.clone()));
        let client = Client::new(&url);
        let pod: IpAddr = "192.168.3.219".parse().unwrap();
        let rules = client.catalog(&[pod].into()).await.unwrap();
        let Rules::Fresh { catalog } = rules else {
            panic!("{rules:?}")
        };
        assert_eq!(catalog.locate(pod), Locus::Unknown);
        assert!(hub.cache().has_queue());
        // The hub's read fails (nothing at :9): every agent is told, with the hub's URL.
        hub.cache()
            .fail("sgpath hub cannot read EC2: refused".into());
        let Rules::Unavailable { reason } = client.catalog(&[pod].into()).await.unwrap() else {
            panic!("fresh while failing")
        };
        assert_eq!(
            reason,
            format!("sgpath hub {url}: sgpath hub cannot read EC2: refused")
        );
        server.abort();
        let e = Client::new("http://127.0.0.1:9")
            .catalog(&[pod].into())
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with("sgpath hub http://127.0.0.1:9: "),
            "{e}"
        );
    }
}
