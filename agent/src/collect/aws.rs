//! Reading the security groups from AWS: instance metadata (IMDSv2: the node ENIs' groups
//! by MAC, the VPC's CIDRs, the region, the instance role), the standard credential chain,
//! and the signed EC2 Query calls whose answers [`super::ec2`] parses.
//!
//! Side effects: HTTP(S) requests to IMDS, EC2, STS and the EKS Pod Identity agent, each
//! bounded by [`TIMEOUT`] and all under one retry policy ([`retry`]: jittered exponential
//! backoff on throttling, 5xx, `InternalError`, `Unavailable`, timeouts and connection
//! errors); EC2 calls within a token bucket per action ([`budget`]: default 1 per second
//! sustained, 10 at once). Temporary credentials are kept until 5 minutes before they
//! expire, the IMDSv2 session token for its TTL. Secrets never reach a log line.
//!
//! Endpoints follow the standard settings ([`endpoint`]): the partition's DNS suffix from
//! the Region (aws-cn, aws-us-gov, aws-iso*), `AWS_USE_FIPS_ENDPOINT`,
//! `AWS_USE_DUALSTACK_ENDPOINT`, `AWS_ENDPOINT_URL[_EC2|_STS]`. HTTPS trusts Mozilla's roots
//! compiled in and `SSL_CERT_FILE`'s ([`tls`]). Instance metadata is asked only for what
//! the environment does not give: with `AWS_REGION` and keys, IRSA or Pod Identity it is
//! never touched (and `AWS_EC2_METADATA_DISABLED=true` forbids it). A request refused for
//! its time (`RequestExpired`, `RequestTimeTooSkewed`...) is signed again with the clock
//! offset the answer's `Date` gives, and later requests keep that offset.
//!
//! Two readers use it: `sgpath hub` (no instance metadata: region and credentials from the
//! environment, IRSA or EKS Pod Identity; [`Aws::enis_by_address`], [`Aws::groups`],
//! [`Aws::prefix_list`], [`Aws::vpc_cidrs`]) and the one-shot `sgpath trace --ec2` (and
//! `agent --ec2`), which also asks instance metadata for the node's own ENIs ([`Aws::read`]).
//!
//! The same data by hand:
//! `curl -H "X-aws-ec2-metadata-token: $T" $IMDS/latest/meta-data/network/interfaces/macs/$MAC/security-group-ids`,
//! `aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=$IP`,
//! `aws ec2 describe-security-groups --filters Name=group-id,Values=$SG`,
//! `aws ec2 get-managed-prefix-list-entries --prefix-list-id $PL`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use ipnet::IpNet;

use super::{
    ec2::{self, Ec2Error},
    sigv4::{self, Credentials},
};
use crate::model::sg::{Catalog, Locus, Rules, SecurityGroup};

pub mod budget;
pub mod endpoint;
pub mod retry;
pub mod tls;

pub use budget::{Backoff, Budget, Limits};
pub use endpoint::{EndpointError, Partition, Service};
pub use retry::Answer;
pub use tls::TlsError;

/// Each request's limit.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Temporary credentials are read again this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
/// The IMDSv2 session token's TTL asked for (IMDS's maximum, 6 hours); it is used until
/// [`IMDS_TOKEN_MARGIN`] before then.
pub const IMDS_TOKEN_TTL: Duration = Duration::from_secs(21_600);
const IMDS_TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// A server's `Date` this far from the signing clock, in an answer refusing the request
/// for its time, sets the clock offset (AWS refuses beyond 5 minutes).
const SKEW_THRESHOLD: Duration = Duration::from_secs(60);
/// IMDS's documented address.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
const EC2_VERSION: &str = "2016-11-15";
/// Values per filter or id list in one call (EC2 accepts up to 200).
pub const BATCH: usize = 100;
/// How long an address's answer from `DescribeNetworkInterfaces` (its ENI, or that none
/// owns it) is reused before it is asked again: a far end seen every minute costs one
/// lookup per this, not one per read. Groups' rules are re-read on every read.
pub const ADDRESS_TTL: Duration = Duration::from_secs(300);
/// At most this much of an error answer's body is quoted.
const QUOTED: usize = 300;

/// Where to reach AWS.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// The EC2 endpoint (`--ec2-endpoint`), else the environment's
    /// ([`endpoint::Settings`]: `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, else the
    /// Region's, FIPS and dual-stack as set).
    pub ec2_endpoint: Option<String>,
    /// Instance metadata (`--imds-endpoint`).
    pub imds_endpoint: String,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`, else IMDS's.
    pub region: Option<String>,
    /// The budget of EC2 calls per action (`--ec2-calls-per-second`, `--ec2-burst`).
    pub limits: Limits,
}

impl AwsConfig {
    /// From the flags and the standard environment variables.
    pub fn from_env(ec2_endpoint: Option<String>, imds_endpoint: Option<String>) -> AwsConfig {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        AwsConfig {
            ec2_endpoint,
            imds_endpoint: imds_endpoint.unwrap_or_else(|| DEFAULT_IMDS.to_owned()),
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            limits: Limits::default(),
        }
    }
}

/// The variables the client reads (the credential chain's, the endpoint settings,
/// `SSL_CERT_FILE`), taken once when the client is made: the process's, or a test's.
#[derive(Clone, Debug, Default)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    /// The process's `AWS_*` variables and `SSL_CERT_FILE`.
    pub fn of_process() -> Environment {
        Environment::from_vars(
            std::env::vars().filter(|(k, _)| k.starts_with("AWS_") || k == "SSL_CERT_FILE"),
        )
    }

    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Environment {
        Environment(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The variable's value, when set and not empty.
    pub fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.trim().is_empty()).cloned()
    }
}

/// Why the rules could not be read; the text becomes the `ec2-unavailable` finding.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No answer: a refused or reset connection, TLS, or the timeout.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        /// The start of the answer's body, quoted.
        body: String,
    },
    /// STS refused: its error document's code and message, quoted.
    #[error("STS {call} at {url}: HTTP {status}: {code}: {message}")]
    Sts {
        call: &'static str,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(
        "no AWS credentials: none in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, no IRSA web identity \
         (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN), no EKS Pod Identity \
         (AWS_CONTAINER_CREDENTIALS_FULL_URI), and instance metadata gave no role: {imds}"
    )]
    NoCredentials { imds: String },
    #[error("{what}: {message}")]
    Malformed { what: String, message: String },
    #[error("no AWS region: set AWS_REGION (instance metadata did not answer: {imds})")]
    NoRegion { imds: String },
    #[error("instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)")]
    ImdsDisabled,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A node ENI as instance metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataEni {
    pub mac: String,
    pub id: String,
    pub groups: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// Prefixes delegated to it (`ipv4-prefix`, `ipv6-prefix`: prefix delegation).
    pub prefixes: Vec<IpNet>,
    /// Every IPv4 and IPv6 CIDR block of the VPC, secondary ones included.
    pub vpc_cidrs: Vec<IpNet>,
}

/// The reader: HTTP and HTTPS clients, where to go, and the credentials while they last.
pub struct Aws {
    /// Instance metadata, and any `http://` endpoint given.
    http: Client<HttpConnector, Full<Bytes>>,
    /// EC2 and STS: built at the first `https://` call (a `trace` may never need them).
    https: std::sync::OnceLock<Http>,
    config: AwsConfig,
    env: Environment,
    /// The endpoint settings from [`Aws::env`], or why they are not usable.
    endpoints: Result<endpoint::Settings, EndpointError>,
    credentials: Option<Credentials>,
    /// When [`Aws::credentials`] expire (`None`: long-term keys, kept for the process).
    credentials_expire: Option<SystemTime>,
    /// The IMDSv2 session token and when it stops being used.
    imds_token: Mutex<Option<(String, tokio::time::Instant)>>,
    /// IMDSv2 tokens asked for (PUT `/latest/api/token`), for tests and metrics.
    imds_tokens_made: std::sync::atomic::AtomicU64,
    /// AWS's clock minus ours, in seconds, learnt from a refused request's `Date`.
    clock_offset: AtomicI64,
    budget: Budget,
    /// Answers of `DescribeNetworkInterfaces` by address, and when they were read: the ENI
    /// owning it, or `None` when EC2 named none.
    lookups: BTreeMap<
        IpAddr,
        (
            tokio::time::Instant,
            Option<std::sync::Arc<ec2::NetworkInterface>>,
        ),
    >,
}

impl Aws {
    /// A client reading the process's environment ([`Environment::of_process`]).
    pub fn new(config: AwsConfig) -> Aws {
        Aws::with_environment(config, Environment::of_process())
    }

    /// A client reading `env` instead of the process's variables.
    pub fn with_environment(config: AwsConfig, env: Environment) -> Aws {
        Aws {
            http: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            https: std::sync::OnceLock::new(),
            budget: Budget::new(config.limits),
            endpoints: endpoint::Settings::from_env(|k| env.get(k)),
            env,
            config,
            credentials: None,
            credentials_expire: None,
            imds_token: Mutex::new(None),
            imds_tokens_made: Default::default(),
            clock_offset: AtomicI64::new(0),
            lookups: BTreeMap::new(),
        }
    }

    /// # Errors
    /// [`AwsError::Tls`] when `SSL_CERT_FILE` names a file without certificates.
    fn https(&self) -> Result<&Http, AwsError> {
        if let Some(c) = self.https.get() {
            return Ok(c);
        }
        let cert_file = self.env.get("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let config = tls::client_config(cert_file.as_deref())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(self.https.get_or_init(|| client))
    }

    /// One request, no retry: the answer, or [`AwsError::Http`] when there was none.
    async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<Answer, AwsError> {
        let err = |message: String| AwsError::Http {
            url: url.to_owned(),
            message,
        };
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string()))?;
        let sent = if url.starts_with("https://") {
            self.https()?.request(req)
        } else {
            self.http.request(req)
        };
        tokio::time::timeout(TIMEOUT, async {
            let resp = sent.await.map_err(|e| err(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let date = resp
                .headers()
                .get(hyper::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(http_date);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                date,
            })
        })
        .await
        .map_err(|_| err(format!("no answer within {TIMEOUT:?}")))?
    }

    /// A request under the retry policy ([`retry::Attempts`]): the final answer, whatever
    /// its status.
    async fn send(
        &self,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Result<Answer, AwsError> {
        let mut attempts = retry::Attempts::new(what);
        loop {
            let result = self.request(method, url, headers, body.to_owned()).await;
            if let Some(answer) = attempts.after(result).await? {
                return Ok(answer);
            }
        }
    }

    /// IMDSv2 tokens asked for so far (each is a PUT `/latest/api/token`).
    pub fn imds_tokens_made(&self) -> u64 {
        self.imds_tokens_made.load(Ordering::Relaxed)
    }

    /// The IMDSv2 session token: the one held while it lasts, else a new one (PUT
    /// `/latest/api/token` with [`IMDS_TOKEN_TTL`]).
    async fn imds_token(&self) -> Result<String, AwsError> {
        if self
            .env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Err(AwsError::ImdsDisabled);
        }
        let now = tokio::time::Instant::now();
        if let Some((token, until)) = &*self.imds_token.lock().unwrap_or_else(|e| e.into_inner())
            && now < *until
        {
            return Ok(token.clone());
        }
        let url = format!("{}/latest/api/token", self.config.imds_endpoint);
        let headers = [(
            "X-aws-ec2-metadata-token-ttl-seconds",
            IMDS_TOKEN_TTL.as_secs().to_string(),
        )];
        self.imds_tokens_made.fetch_add(1, Ordering::Relaxed);
        let a = self.send("imds token", "PUT", &url, &headers, "").await?;
        if a.status != 200 {
            return Err(status_error(url, &a));
        }
        let token = a.body.trim().to_owned();
        *self.imds_token.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((token.clone(), now + IMDS_TOKEN_TTL - IMDS_TOKEN_MARGIN));
        Ok(token)
    }

    /// A metadata path's body. A token IMDS no longer takes (401: it restarted, or the
    /// instance was stopped) is dropped and the path asked again once with a new one.
    async fn imds(&self, path: &str) -> Result<String, AwsError> {
        let url = format!("{}/latest/meta-data/{path}", self.config.imds_endpoint);
        for fresh in [false, true] {
            let token = self.imds_token().await?;
            let headers = [("X-aws-ec2-metadata-token", token)];
            let a = self.send("imds", "GET", &url, &headers, "").await?;
            match a.status {
                200 => return Ok(a.body),
                401 if !fresh => {
                    *self.imds_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                _ => return Err(status_error(url, &a)),
            }
        }
        unreachable!("the second try returns")
    }

    /// Every ENI attached to the instance, by MAC, with its groups (no credentials needed).
    ///
    /// # Errors
    /// [`AwsError`] when IMDS does not answer or answers an address that is not one.
    pub async fn node_enis(&self) -> Result<Vec<MetadataEni>, AwsError> {
        let macs = self.imds("network/interfaces/macs/").await?;
        let mut out = Vec::new();
        for mac in lines(&macs) {
            let mac = mac.trim_end_matches('/');
            let base = format!("network/interfaces/macs/{mac}");
            let id = self.imds(&format!("{base}/interface-id")).await?;
            let groups = self.imds(&format!("{base}/security-group-ids")).await?;
            // An ENI without IPv4 (IPv6-only clusters) answers 404 here.
            let v4 = self
                .imds(&format!("{base}/local-ipv4s"))
                .await
                .unwrap_or_default();
            let v6 = self
                .imds(&format!("{base}/ipv6s"))
                .await
                .unwrap_or_default();
            // Absent (404) where the ENI has no prefixes or the VPC no IPv6 block.
            let mut optional = Vec::new();
            for what in [
                "ipv4-prefix",
                "ipv6-prefix",
                "vpc-ipv4-cidr-blocks",
                "vpc-ipv6-cidr-blocks",
            ] {
                optional.push(
                    self.imds(&format!("{base}/{what}"))
                        .await
                        .unwrap_or_default(),
                );
            }
            let parse = |what: &str, s: &str| AwsError::Malformed {
                what: format!("instance metadata {base}/{what}"),
                message: format!("{s:?} is not an address or CIDR"),
            };
            let nets = |what: &str, body: &str| -> Result<Vec<IpNet>, AwsError> {
                lines(body)
                    .map(|a| a.parse().map_err(|_| parse(what, a)))
                    .collect()
            };
            let mut prefixes = nets("ipv4-prefix", &optional[0])?;
            prefixes.extend(nets("ipv6-prefix", &optional[1])?);
            let mut vpc_cidrs = nets("vpc-ipv4-cidr-blocks", &optional[2])?;
            vpc_cidrs.extend(nets("vpc-ipv6-cidr-blocks", &optional[3])?);
            out.push(MetadataEni {
                mac: mac.to_owned(),
                id: id.trim().to_owned(),
                groups: lines(&groups).map(str::to_owned).collect(),
                addresses: lines(&v4)
                    .chain(lines(&v6))
                    .map(|a| a.parse().map_err(|_| parse("local-ipv4s", a)))
                    .collect::<Result<_, _>>()?,
                prefixes,
                vpc_cidrs,
            });
        }
        Ok(out)
    }

    /// Keeps credentials from the chain ([`Aws::credentials`]) until
    /// [`CREDENTIALS_MARGIN`] before they expire.
    async fn fresh_credentials(&mut self, region: &str) -> Result<(), AwsError> {
        let valid = match (&self.credentials, self.credentials_expire) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(at)) => SystemTime::now() + CREDENTIALS_MARGIN < at,
        };
        if !valid {
            let (c, expire) = self.credentials(region).await?;
            self.credentials = Some(c);
            self.credentials_expire = expire;
        }
        Ok(())
    }

    /// Credentials from the standard chain, in its order: environment, IRSA web identity,
    /// EKS Pod Identity, the instance role; with their expiry when temporary. Instance
    /// metadata is asked only when no earlier link is configured.
    async fn credentials(
        &self,
        region: &str,
    ) -> Result<(Credentials, Option<SystemTime>), AwsError> {
        let env = |k: &str| self.env.get(k);
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok((
                Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: env("AWS_SESSION_TOKEN"),
                },
                None,
            ));
        }
        if let (Some(file), Some(role)) = (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
        {
            return self.web_identity(region, &file, &role).await;
        }
        if let Some(url) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            let auth = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                Some(f) => std::fs::read_to_string(&f)
                    .map_err(|e| AwsError::Malformed {
                        what: format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}"),
                        message: e.to_string(),
                    })?
                    .trim()
                    .to_owned(),
                None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN").unwrap_or_default(),
            };
            let a = self
                .send("pod identity", "GET", &url, &[("Authorization", auth)], "")
                .await?;
            if a.status != 200 {
                return Err(status_error(url, &a));
            }
            return json_credentials(&url, &a.body);
        }
        let imds = async {
            let roles = self.imds("iam/security-credentials/").await?;
            let role = lines(&roles).next().ok_or_else(|| AwsError::Malformed {
                what: "instance metadata iam/security-credentials/".into(),
                message: "no role".into(),
            })?;
            let json = self
                .imds(&format!("iam/security-credentials/{role}"))
                .await?;
            json_credentials("instance metadata iam/security-credentials", &json)
        };
        imds.await.map_err(|e| AwsError::NoCredentials {
            imds: e.to_string(),
        })
    }

    /// IRSA: STS `AssumeRoleWithWebIdentity` with the projected token (unsigned: the
    /// token is the proof), at the Region's STS endpoint or `AWS_ENDPOINT_URL_STS`.
    async fn web_identity(
        &self,
        region: &str,
        file: &str,
        role: &str,
    ) -> Result<(Credentials, Option<SystemTime>), AwsError> {
        const CALL: &str = "AssumeRoleWithWebIdentity";
        let token = std::fs::read_to_string(file).map_err(|e| AwsError::Malformed {
            what: format!("AWS_WEB_IDENTITY_TOKEN_FILE {file}"),
            message: e.to_string(),
        })?;
        let endpoints = self.endpoints.as_ref().map_err(Clone::clone)?;
        let url = format!("{}/", endpoints.url(Service::Sts, region)?);
        let session = self
            .env
            .get("AWS_ROLE_SESSION_NAME")
            .unwrap_or_else(|| "sgpath".to_owned());
        let body = sigv4::form(&[
            ("Action", CALL),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", &session),
            ("WebIdentityToken", token.trim()),
        ]);
        let headers = [(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        )];
        let a = self
            .send(&format!("sts {CALL}"), "POST", &url, &headers, &body)
            .await?;
        if a.status != 200 {
            return Err(match a.error() {
                Some((code, message)) => AwsError::Sts {
                    call: CALL,
                    url,
                    status: a.status,
                    code,
                    message,
                },
                None => status_error(url, &a),
            });
        }
        web_identity_credentials(&a.body)
    }

    async fn region(&self) -> Result<String, AwsError> {
        if let Some(r) = &self.config.region {
            return Ok(r.clone());
        }
        self.imds("placement/region")
            .await
            .map(|r| r.trim().to_owned())
            .map_err(|e| AwsError::NoRegion {
                imds: e.to_string(),
            })
    }

    /// The EC2 endpoint's URL (ending in `/`) for `region`.
    fn ec2_url(&self, region: &str) -> Result<String, AwsError> {
        let base = match &self.config.ec2_endpoint {
            Some(e) => e.clone(),
            None => self
                .endpoints
                .as_ref()
                .map_err(Clone::clone)?
                .url(Service::Ec2, region)?,
        };
        Ok(format!("{}/", base.trim_end_matches('/')))
    }

    /// The clock requests are signed with: ours, corrected by AWS's once it told us.
    fn signing_time(&self) -> SystemTime {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        let magnitude = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + magnitude
        } else {
            SystemTime::now() - magnitude
        }
    }

    /// AWS's clock minus ours, as last learnt (0 until a request is refused for its time).
    pub fn clock_offset(&self) -> i64 {
        self.clock_offset.load(Ordering::Relaxed)
    }

    /// When `a` refuses a request for its time and its `Date` is more than
    /// [`SKEW_THRESHOLD`] from the time it was signed with, keeps the offset and says so.
    fn correct_clock(&self, a: &Answer, signed_at: SystemTime) -> bool {
        let (Some(date), Some((code, _))) = (a.date, a.error()) else {
            return false;
        };
        if !(400..500).contains(&a.status) || !retry::is_skew_code(&code) {
            return false;
        }
        let diff = |a: SystemTime, b: SystemTime| a.duration_since(b).map_or(0, |d| d.as_secs());
        let ahead = diff(date, signed_at) as i64 - diff(signed_at, date) as i64;
        if ahead.unsigned_abs() < SKEW_THRESHOLD.as_secs() {
            return false;
        }
        let offset = self.clock_offset.load(Ordering::Relaxed) + ahead;
        self.clock_offset.store(offset, Ordering::Relaxed);
        tracing::warn!(
            event = "aws-clock-skew",
            code,
            offset_s = offset,
            "AWS refused a request for its time; signing with AWS's clock from now on"
        );
        true
    }

    /// One signed EC2 Query call within the budget of its action, under the retry policy
    /// ([`retry`]); every attempt takes a token. A request refused for its time is signed
    /// again at once with the clock the answer's `Date` gives (once per call).
    async fn call(
        &mut self,
        region: &str,
        action: &'static str,
        params: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let url = self.ec2_url(region)?;
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let mut all = vec![("Action", action), ("Version", EC2_VERSION)];
        all.extend_from_slice(params);
        let body = sigv4::form(&all);
        let creds = self
            .credentials
            .clone()
            .ok_or_else(|| AwsError::NoCredentials {
                imds: "not read".into(),
            })?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut attempts = retry::Attempts::new(format!("ec2 {action}"));
        let mut corrected = false;
        loop {
            self.budget.take(action).await;
            let signed_at = self.signing_time();
            let signed = sigv4::sign(
                &sigv4::Request {
                    method: "POST",
                    host: &host,
                    path: "/",
                    query: "",
                    headers: &[("content-type", content_type)],
                    body: body.as_bytes(),
                },
                &creds,
                region,
                Service::Ec2.name(),
                signed_at,
            );
            let mut headers: Vec<(&str, String)> = vec![("content-type", content_type.into())];
            headers.extend(signed);
            let result = self.request("POST", &url, &headers, body.clone()).await;
            if let Ok(a) = &result
                && !corrected
                && self.correct_clock(a, signed_at)
            {
                corrected = true;
                continue;
            }
            let Some(a) = attempts.after(result).await? else {
                continue;
            };
            if a.status == 200 {
                return Ok(a.body);
            }
            // EC2's error document names the fault; anything else is the status.
            return Err(match ec2::api_error(action, &a.body) {
                Some(e) => AwsError::Ec2(e),
                None => status_error(url, &a),
            });
        }
    }

    /// The region and credentials the hub's calls need: the region from the configuration
    /// (`AWS_REGION`; instance metadata only when it is unset), credentials from the chain
    /// (kept until shortly before they expire).
    ///
    /// # Errors
    /// [`AwsError::NoRegion`] or the credential chain's failure.
    pub async fn prepare(&mut self) -> Result<String, AwsError> {
        let region = self.region().await?;
        self.fresh_credentials(&region).await?;
        Ok(region)
    }

    /// The ENIs owning any of `addresses` (`DescribeNetworkInterfaces` with the
    /// `addresses.private-ip-address` filter; one call per [`BATCH`] addresses and page).
    ///
    /// # Errors
    /// [`AwsError`] of the call.
    pub async fn enis_by_address(
        &mut self,
        region: &str,
        addresses: &[IpAddr],
    ) -> Result<Vec<ec2::NetworkInterface>, AwsError> {
        let mut out = Vec::new();
        for chunk in addresses.chunks(BATCH) {
            let mut params: Vec<(String, String)> = vec![(
                "Filter.1.Name".into(),
                "addresses.private-ip-address".into(),
            )];
            for (i, a) in chunk.iter().enumerate() {
                params.push((format!("Filter.1.Value.{}", i + 1), a.to_string()));
            }
            out.extend(
                self.paged(
                    region,
                    "DescribeNetworkInterfaces",
                    params,
                    ec2::network_interfaces,
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// The groups `ids` with their rules, prefix lists unresolved (`DescribeSecurityGroups`
    /// with the `group-id` filter: a deleted group is simply absent from the answer, where
    /// `GroupId.N` would fail the whole call with `InvalidGroup.NotFound`).
    ///
    /// # Errors
    /// [`AwsError`] of the call.
    pub async fn groups(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<SecurityGroup>, AwsError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(BATCH) {
            let mut params: Vec<(String, String)> =
                vec![("Filter.1.Name".into(), "group-id".into())];
            for (i, g) in chunk.iter().enumerate() {
                params.push((format!("Filter.1.Value.{}", i + 1), g.clone()));
            }
            out.extend(
                self.paged(
                    region,
                    "DescribeSecurityGroups",
                    params,
                    ec2::security_groups,
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// A managed prefix list's CIDRs (`GetManagedPrefixListEntries`).
    ///
    /// # Errors
    /// [`AwsError`] of the call (neither node policy grants it: callers treat a refusal as
    /// one unread list).
    pub async fn prefix_list(&mut self, region: &str, id: &str) -> Result<Vec<IpNet>, AwsError> {
        let params = vec![("PrefixListId".into(), id.to_owned())];
        self.paged(
            region,
            "GetManagedPrefixListEntries",
            params,
            ec2::prefix_list_entries,
        )
        .await
    }

    /// Every CIDR block of the VPCs `ids` (`DescribeVpcs` with the `vpc-id` filter).
    ///
    /// # Errors
    /// [`AwsError`] of the call.
    pub async fn vpc_cidrs(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<ec2::Vpc>, AwsError> {
        let mut params: Vec<(String, String)> = vec![("Filter.1.Name".into(), "vpc-id".into())];
        for (i, v) in ids.iter().enumerate() {
            params.push((format!("Filter.1.Value.{}", i + 1), v.clone()));
        }
        self.paged(region, "DescribeVpcs", params, ec2::vpcs).await
    }

    /// EC2 calls made per action since the start (each retry counts).
    pub fn calls(&self) -> &BTreeMap<&'static str, u64> {
        self.budget.calls()
    }

    /// Reads what the checks judge with: the node ENIs' groups from IMDS, the ENIs owning
    /// `addresses` (branch pods, CoreDNS) from `DescribeNetworkInterfaces`, every group
    /// they carry from `DescribeSecurityGroups`, and the prefix lists those rules name.
    ///
    /// # Errors
    /// [`AwsError`] naming the source that failed (IMDS, credentials, an EC2 call).
    pub async fn read(&mut self, addresses: &BTreeSet<IpAddr>) -> Result<Rules, AwsError> {
        let node = self.node_enis().await?;
        let region = self.prepare().await?;
        let mut catalog = Catalog::default();
        for e in &node {
            let groups: Vec<&str> = e.groups.iter().map(String::as_str).collect();
            for a in &e.addresses {
                catalog.insert_eni(*a, e.id.clone(), &groups);
            }
            for p in &e.prefixes {
                catalog.insert_prefix(*p, e.id.clone(), &groups);
            }
            catalog.vpc_cidrs.extend(&e.vpc_cidrs);
        }
        catalog.vpc_cidrs.sort();
        catalog.vpc_cidrs.dedup();
        // Only addresses inside the VPC that no node ENI owns: the rest need no lookup.
        let wanted: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| matches!(catalog.locate(*a), Locus::Unknown))
            .collect();
        let now = tokio::time::Instant::now();
        self.lookups
            .retain(|_, (at, _)| now.duration_since(*at) < ADDRESS_TTL);
        let ask: Vec<IpAddr> = wanted
            .iter()
            .filter(|a| !self.lookups.contains_key(a))
            .copied()
            .collect();
        if !ask.is_empty() {
            let enis = self.enis_by_address(&region, &ask).await?;
            // Every address asked is answered: by the ENI that has it, or by none.
            for a in &ask {
                self.lookups.insert(*a, (now, None));
            }
            for eni in enis {
                let eni = std::sync::Arc::new(eni);
                for a in &eni.addresses {
                    self.lookups.insert(*a, (now, Some(eni.clone())));
                }
            }
        }
        for a in &wanted {
            catalog.looked_up.insert(*a);
            let Some((_, Some(eni))) = self.lookups.get(a) else {
                continue;
            };
            let groups: Vec<&str> = eni.groups.iter().map(String::as_str).collect();
            for a in &eni.addresses {
                catalog.insert_eni(*a, eni.id.clone(), &groups);
            }
            for p in &eni.prefixes {
                catalog.insert_prefix(*p, eni.id.clone(), &groups);
            }
        }
        let group_ids: BTreeSet<String> = catalog
            .enis
            .values()
            .flat_map(|e| e.groups.iter().cloned())
            .collect();
        let group_ids: Vec<String> = group_ids.into_iter().collect();
        let mut groups = self.groups(&region, &group_ids).await?;
        let mut entries: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for id in ec2::prefix_list_ids(&groups) {
            match self.prefix_list(&region, &id).await {
                Ok(cidrs) => {
                    entries.insert(id, cidrs);
                }
                // Neither node policy grants this call: one list unread leaves its rules
                // unjudged (their verdicts say "unverified"), not the whole catalog.
                Err(AwsError::Ec2(e @ Ec2Error::Api { .. })) if !e.is_transient() => {
                    tracing::warn!(prefix_list = %id, error = %e, "prefix list unread");
                    catalog.unread_prefix_lists.insert(id);
                }
                Err(e) => return Err(e),
            }
        }
        ec2::resolve_prefix_lists(&mut groups, &entries);
        for g in groups {
            catalog.insert_group(g);
        }
        Ok(Rules::Fresh { catalog })
    }

    /// Every page of a call (`NextToken`).
    async fn paged<T>(
        &mut self,
        region: &str,
        action: &'static str,
        params: Vec<(String, String)>,
        parse: fn(&str) -> Result<ec2::Page<T>, Ec2Error>,
    ) -> Result<Vec<T>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut p: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if let Some(t) = &token {
                p.push(("NextToken", t));
            }
            let xml = self.call(region, action, &p).await?;
            let page = parse(&xml)?;
            out.extend(page.items);
            match page.next_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// The JSON of IMDS's role credentials and of the EKS Pod Identity agent, with their
/// `Expiration`.
fn json_credentials(what: &str, json: &str) -> Result<(Credentials, Option<SystemTime>), AwsError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let a: Answer = serde_json::from_str(json).map_err(|e| AwsError::Malformed {
        what: what.to_owned(),
        message: format!("not the credentials JSON: {e}"),
    })?;
    Ok((
        Credentials {
            access_key_id: a.access_key_id,
            secret_access_key: a.secret_access_key,
            session_token: a.token,
        },
        a.expiration.as_deref().and_then(timestamp),
    ))
}

/// `2026-12-03T20:00:00Z` (AWS's credential expiry; fractions of a second ignored).
fn timestamp(s: &str) -> Option<SystemTime> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|n| n.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|n| n.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// STS `AssumeRoleWithWebIdentityResponse`'s credentials and their expiry.
fn web_identity_credentials(xml: &str) -> Result<(Credentials, Option<SystemTime>), AwsError> {
    let bad = |message: String| AwsError::Malformed {
        what: "STS AssumeRoleWithWebIdentity".into(),
        message,
    };
    let doc = roxmltree::Document::parse(xml).map_err(|e| bad(e.to_string()))?;
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| bad(format!("no <{name}> in the answer")))
    };
    Ok((
        Credentials {
            access_key_id: find("AccessKeyId")?,
            secret_access_key: find("SecretAccessKey")?,
            session_token: Some(find("SessionToken")?),
        },
        find("Expiration").ok().as_deref().and_then(timestamp),
    ))
}

/// [`AwsError::Status`] quoting the start of the answer's body.
fn status_error(url: String, a: &Answer) -> AwsError {
    let body = a.body.trim();
    let mut quoted: String = body.chars().take(QUOTED).collect();
    if quoted.len() < body.len() {
        quoted.push_str("...");
    }
    if quoted.is_empty() {
        quoted = "(no body)".to_owned();
    }
    AwsError::Status {
        url,
        status: a.status,
        body: quoted,
    }
}

/// An error and its sources on one line (hyper's own text is only "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// An HTTP `Date` (IMF-fixdate, RFC 9110: `Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(s: &str) -> Option<SystemTime> {
    let mut f = s.split_whitespace().skip(1);
    let (day, month, year, time) = (f.next()?, f.next()?, f.next()?, f.next()?);
    if f.next()? != "GMT" {
        return None;
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)?
        + 1;
    timestamp(&format!("{year}-{month:02}-{day}T{time}Z"))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_answers() {
        let (c, expire) = json_credentials(
            "imds",
            r#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-03T20:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            expire,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_328_000))
        );
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("ASIA1", Some("t"))
        );
        let e = json_credentials("instance metadata", "<html>").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("instance metadata: not the credentials JSON"),
            "{e}"
        );
        let sts = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <SessionToken>tok</SessionToken><SecretAccessKey>sec</SecretAccessKey>
    <Expiration>2026-12-03T20:00:00Z</Expiration><AccessKeyId>ASIA2</AccessKeyId>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let (c, expire) = web_identity_credentials(sts).unwrap();
        assert_eq!(
            expire,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_328_000))
        );
        assert_eq!(c.access_key_id, "ASIA2");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let e = web_identity_credentials("<x/>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "STS AssumeRoleWithWebIdentity: no <AccessKeyId> in the answer"
        );
    }

    /// A request as the fakes see it.
    struct FakeRequest {
        method: String,
        path: String,
        /// Header names lower-cased.
        headers: Vec<(String, String)>,
        body: String,
    }

    impl FakeRequest {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// An answer: status, extra headers, body.
    type FakeAnswer = (u16, Vec<(String, String)>, String);

    /// A one-shot fake of IMDS and EC2 on loopback: answers each request from `route`.
    async fn serve(route: fn(&str, &str) -> (u16, String)) -> String {
        serve_with(move |r: &FakeRequest| {
            let (status, body) = route(&r.path, &r.body);
            (status, Vec::new(), body)
        })
        .await
    }

    /// A fake of IMDS, STS, Pod Identity or EC2 on loopback, one connection per request,
    /// for the faults moto cannot produce on demand (throttling, 5xx, a skewed clock).
    async fn serve_with(
        route: impl Fn(&FakeRequest) -> FakeAnswer + Send + Sync + 'static,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let route = std::sync::Arc::new(route);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let route = route.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut n = 0;
                    // Headers, then the body by Content-Length.
                    loop {
                        let m = s.read(&mut buf[n..]).await.unwrap_or(0);
                        if m == 0 {
                            return;
                        }
                        n += m;
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let mut lines = head.lines();
                        let mut request_line = lines.next().unwrap_or("").split_whitespace();
                        let method = request_line.next().unwrap_or("").to_owned();
                        let path = request_line.next().unwrap_or("").to_owned();
                        let headers: Vec<(String, String)> = lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        let len: usize = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        if body.len() < len {
                            continue;
                        }
                        let req = FakeRequest {
                            method,
                            path,
                            headers,
                            body: body.to_owned(),
                        };
                        let (status, extra, answer) = route(&req);
                        let extra: String =
                            extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                        let out = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{answer}",
                            answer.len()
                        );
                        let _ = s.write_all(out.as_bytes()).await;
                        return;
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn fake(path: &str, body: &str) -> (u16, String) {
        let macs = "/latest/meta-data/network/interfaces/macs/";
        match path {
            "/latest/api/token" => (200, "tok".into()),
            p if p == macs => (200, "0a:00:00:00:00:01/\n".into()),
            p if p.ends_with("/interface-id") => (200, "eni-node".into()),
            p if p.ends_with("/security-group-ids") => (200, "sg-node".into()),
            p if p.ends_with("/local-ipv4s") => (200, "192.168.1.10".into()),
            p if p.ends_with("/vpc-ipv4-cidr-blocks") => (200, "192.168.0.0/16".into()),
            // A secondary VPC block, and prefix delegation on the node's ENI.
            p if p.ends_with("/vpc-ipv6-cidr-blocks") => (200, "2600:1f14::/56".into()),
            p if p.ends_with("/ipv4-prefix") => (200, "192.168.7.32/28\n".into()),
            "/latest/meta-data/iam/security-credentials/" => (200, "node-role".into()),
            "/latest/meta-data/iam/security-credentials/node-role" => (
                200,
                r#"{"AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t"}"#.into(),
            ),
            p if p.starts_with("/latest/meta-data") => (404, String::new()),
            "/" if body.contains("Action=DescribeNetworkInterfaces") => (200, r#"<DescribeNetworkInterfacesResponse><networkInterfaceSet><item><networkInterfaceId>eni-b</networkInterfaceId><groupSet><item><groupId>sg-pod</groupId></item></groupSet><privateIpAddress>192.168.3.219</privateIpAddress></item></networkInterfaceSet></DescribeNetworkInterfacesResponse>"#.into()),
            "/" if body.contains("Action=DescribeSecurityGroups") => (200, r#"<DescribeSecurityGroupsResponse><securityGroupInfo><item><groupId>sg-pod</groupId><ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>80</fromPort><toPort>80</toPort><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges></item></ipPermissions></item><item><groupId>sg-node</groupId><ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges></item></ipPermissionsEgress></item></securityGroupInfo></DescribeSecurityGroupsResponse>"#.into()),
            _ => (400, "<Response><Errors><Error><Code>InvalidAction</Code><Message>no</Message></Error></Errors></Response>".into()),
        }
    }

    fn throttled(path: &str, body: &str) -> (u16, String) {
        if path == "/" {
            return (503, "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>".into());
        }
        fake(path, body)
    }

    fn denied(path: &str, body: &str) -> (u16, String) {
        if path == "/" {
            return (403, "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors></Response>".into());
        }
        fake(path, body)
    }

    /// sg-pod admits tcp/443 from a prefix list whose entries the caller may not read.
    fn prefix_list_denied(path: &str, body: &str) -> (u16, String) {
        if body.contains("Action=DescribeSecurityGroups") {
            return (200, r#"<DescribeSecurityGroupsResponse><securityGroupInfo><item><groupId>sg-pod</groupId><ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>443</fromPort><toPort>443</toPort><prefixListIds><item><prefixListId>pl-1</prefixListId></item></prefixListIds></item></ipPermissions></item></securityGroupInfo></DescribeSecurityGroupsResponse>"#.into());
        }
        if body.contains("Action=GetManagedPrefixListEntries") {
            return denied(path, body);
        }
        fake(path, body)
    }

    fn malformed(path: &str, body: &str) -> (u16, String) {
        if body.contains("Action=DescribeSecurityGroups") {
            return (
                200,
                "<DescribeSecurityGroupsResponse><securityGroupInfo><item>".into(),
            );
        }
        fake(path, body)
    }

    fn aws(url: &str) -> Aws {
        let mut a = Aws::with_environment(
            AwsConfig {
                ec2_endpoint: Some(url.to_owned()),
                imds_endpoint: url.to_owned(),
                region: Some("us-east-1".into()),
                limits: Limits::default(),
            },
            Environment::default(),
        );
        a.credentials = Some(Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        });
        a
    }

    #[tokio::test]
    async fn reads_the_node_and_the_pods_groups() {
        let url = serve(fake).await;
        let mut a = aws(&url);
        // `read` takes credentials from the chain: give it the environment's first link
        // without touching the process environment (tests run in parallel).
        let node = a.node_enis().await.unwrap();
        assert_eq!(node[0].groups, ["sg-node"]);
        assert_eq!(
            node[0].vpc_cidrs,
            [
                "192.168.0.0/16".parse::<IpNet>().unwrap(),
                "2600:1f14::/56".parse().unwrap()
            ]
        );
        assert_eq!(
            node[0].prefixes,
            ["192.168.7.32/28".parse::<IpNet>().unwrap()]
        );
        let region = a.region().await.unwrap();
        let enis = a
            .paged(
                &region,
                "DescribeNetworkInterfaces",
                Vec::new(),
                ec2::network_interfaces,
            )
            .await
            .unwrap();
        assert_eq!(enis[0].groups, ["sg-pod"]);
    }

    /// The whole read: IMDS, credentials (the environment's or the instance role's, the
    /// fake does not check signatures), the pod's ENI and both groups, judged.
    #[tokio::test]
    async fn read_gives_a_catalog_the_judge_uses() {
        use crate::model::sg::Flow;
        let url = serve(fake).await;
        let mut a = aws(&url);
        let pod: IpAddr = "192.168.3.219".parse().unwrap();
        let rules = a.read(&[pod].into()).await.unwrap();
        let Rules::Fresh { catalog } = rules else {
            panic!("not fresh")
        };
        assert_eq!(
            catalog.vpc_cidrs,
            [
                "192.168.0.0/16".parse::<IpNet>().unwrap(),
                "2600:1f14::/56".parse().unwrap()
            ]
        );
        // Prefix delegation: CoreDNS or an ordinary pod in the node ENI's /28 carries its
        // groups (instance metadata's ipv4-prefix).
        let in_prefix: IpAddr = "192.168.7.37".parse().unwrap();
        assert_eq!(
            catalog.groups_of(in_prefix),
            Some(&["sg-node".to_owned()][..])
        );
        assert_eq!(catalog.groups_of(pod), Some(&["sg-pod".to_owned()][..]));
        let node: IpAddr = "192.168.1.10".parse().unwrap();
        assert!(catalog.judge(&Flow::tcp(node, pod, 80)).is_allowed());
        let crate::model::sg::Verdict::Denied(m) = catalog.judge(&Flow::tcp(node, pod, 8080))
        else {
            panic!("8080 is not admitted")
        };
        assert_eq!(
            m.summary(),
            "sg-pod admits no tcp/8080 from members of sg-node"
        );
    }

    #[test]
    fn timestamps_of_credential_expiry() {
        let t = |s| timestamp(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            t("2000-03-01T00:00:01Z"),
            Some(Duration::from_secs(951_868_801))
        );
        assert_eq!(
            t("2026-12-03T20:00:00.123Z"),
            Some(Duration::from_secs(1_796_328_000))
        );
        assert_eq!(t("2026-13-03T20:00:00Z"), None);
        assert_eq!(t("yesterday"), None);
    }

    /// Temporary credentials are kept until 5 minutes before they expire, then read again.
    #[tokio::test]
    async fn credentials_are_kept_until_they_expire() {
        let url = serve(fake).await;
        let mut a = aws(&url);
        a.credentials_expire = Some(SystemTime::now() + Duration::from_secs(3600));
        a.fresh_credentials("us-east-1").await.unwrap();
        assert_eq!(a.credentials.as_ref().unwrap().access_key_id, "testing");
        a.credentials_expire = Some(SystemTime::now() + Duration::from_secs(200));
        // No keys, IRSA or Pod Identity in this environment: the fake IMDS's role.
        a.fresh_credentials("us-east-1").await.unwrap();
        assert_eq!(a.credentials.as_ref().unwrap().access_key_id, "ASIA");
    }

    #[tokio::test]
    async fn throttling_backs_off_then_fails_with_the_code() {
        let url = serve(throttled).await;
        let mut a = aws(&url);
        let start = tokio::time::Instant::now();
        let e = a
            .call("us-east-1", "DescribeSecurityGroups", &[])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "EC2 DescribeSecurityGroups: RequestLimitExceeded: Request limit exceeded."
        );
        // Half of 250 + 500 + 1000 + 2000 ms of backoff at least, all of it at most.
        let took = start.elapsed();
        assert!(
            (Duration::from_millis(1875)..Duration::from_millis(4500)).contains(&took),
            "{took:?}"
        );
        // Five attempts, each a call the budget counted.
        assert_eq!(a.calls()["DescribeSecurityGroups"], 5);
    }

    #[tokio::test]
    async fn access_denied_and_endpoint_gone_are_named() {
        let url = serve(denied).await;
        let mut a = aws(&url);
        let e = a
            .call("us-east-1", "DescribeNetworkInterfaces", &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("UnauthorizedOperation"), "{e}");
        let mut gone = aws("http://127.0.0.1:9");
        let e = gone
            .call("us-east-1", "DescribeSecurityGroups", &[])
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("http://127.0.0.1:9/: "), "{e}");
    }

    /// A denied GetManagedPrefixListEntries costs one rule, not the read: the catalog is
    /// fresh, the list is named unread and a denial it might have admitted is unverified.
    #[tokio::test]
    async fn an_unreadable_prefix_list_leaves_its_rule_unverified() {
        use crate::model::sg::Flow;
        let url = serve(prefix_list_denied).await;
        let mut a = aws(&url);
        let pod: IpAddr = "192.168.3.219".parse().unwrap();
        let Rules::Fresh { catalog, .. } = a.read(&[pod].into()).await.unwrap() else {
            panic!("not fresh")
        };
        assert_eq!(catalog.unread_prefix_lists, ["pl-1".to_string()].into());
        let v = catalog.judge(&Flow::tcp("10.0.0.9".parse().unwrap(), pod, 443));
        let crate::model::sg::Verdict::Denied(m) = v else {
            panic!("{v:?}")
        };
        assert_eq!(m.unread, ["pl-1"]);
    }

    #[tokio::test]
    async fn a_malformed_answer_is_named_never_half_read() {
        let url = serve(malformed).await;
        let mut a = aws(&url);
        let pod: IpAddr = "192.168.3.219".parse().unwrap();
        let e = a.read(&[pod].into()).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("EC2 DescribeSecurityGroups: the answer is not XML"),
            "{e}"
        );
    }

    static ENI_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// The default fake, counting `DescribeNetworkInterfaces`.
    fn counting(path: &str, body: &str) -> (u16, String) {
        if body.contains("Action=DescribeNetworkInterfaces") {
            ENI_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fake(path, body)
    }

    /// Issue 29: addresses are looked up once per [`ADDRESS_TTL`], batched, and an address
    /// EC2 names no ENI for is marked looked up (inside the VPC: unverified, not outside).
    #[tokio::test]
    async fn addresses_are_looked_up_once_per_ttl() {
        use crate::model::sg::Locus;
        let url = serve(counting).await;
        let mut a = aws(&url);
        let pod: IpAddr = "192.168.3.219".parse().unwrap();
        let nobody: IpAddr = "192.168.9.9".parse().unwrap();
        let outside: IpAddr = "10.0.1.10".parse().unwrap();
        let wanted = [pod, nobody, outside].into();
        let Rules::Fresh { catalog } = a.read(&wanted).await.unwrap() else {
            panic!("not fresh")
        };
        assert_eq!(ENI_CALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(catalog.locate(pod), Locus::Eni(_)));
        assert_eq!(catalog.locate(nobody), Locus::NoEni);
        assert_eq!(catalog.locate(outside), Locus::OutsideVpc);
        // Outside the VPC needs no lookup; the rest is cached.
        assert_eq!(catalog.looked_up, [pod, nobody].into());
        let Rules::Fresh { catalog } = a.read(&wanted).await.unwrap() else {
            panic!("not fresh")
        };
        assert_eq!(ENI_CALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(catalog.locate(pod), Locus::Eni(_)));
        assert_eq!(catalog.locate(nobody), Locus::NoEni);
        // Past the TTL, asked again.
        for (at, _) in a.lookups.values_mut() {
            *at -= ADDRESS_TTL;
        }
        a.read(&wanted).await.unwrap();
        assert_eq!(ENI_CALLS.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok</SessionToken><SecretAccessKey>sec</SecretAccessKey><Expiration>2099-01-01T00:00:00Z</Expiration><AccessKeyId>ASIASTS</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;

    fn counter() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        Default::default()
    }

    fn count(c: &std::sync::atomic::AtomicUsize) -> usize {
        c.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(c: &std::sync::atomic::AtomicUsize) -> usize {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// A client with no credentials yet, reading `env`.
    fn client(ec2: Option<&str>, imds: &str, env: &[(&str, &str)]) -> Aws {
        Aws::with_environment(
            AwsConfig {
                ec2_endpoint: ec2.map(str::to_owned),
                imds_endpoint: imds.to_owned(),
                region: Some("us-east-1".into()),
                limits: Limits::default(),
            },
            Environment::from_vars(env.iter().copied()),
        )
    }

    /// A file holding `text` (a projected token), removed by the caller's test dir.
    fn token_file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("sgpath-aws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// One IMDSv2 token serves every metadata read for its TTL (asked for 6 hours); past
    /// it, or when IMDS refuses it (401: IMDS restarted), a new one is asked for.
    #[tokio::test]
    async fn the_imds_token_is_reused_for_its_ttl() {
        let ttl_asked = std::sync::Arc::new(Mutex::new(Vec::new()));
        let asked = ttl_asked.clone();
        let url = serve_with(move |r: &FakeRequest| {
            if r.method == "PUT" {
                let ttl = r
                    .header("x-aws-ec2-metadata-token-ttl-seconds")
                    .unwrap_or("");
                asked.lock().unwrap().push(ttl.to_owned());
                return (200, vec![], "tok".into());
            }
            if r.header("x-aws-ec2-metadata-token") != Some("tok") {
                return (401, vec![], String::new());
            }
            let (status, body) = fake(&r.path, &r.body);
            (status, vec![], body)
        })
        .await;
        let a = aws(&url);
        a.node_enis().await.unwrap();
        a.node_enis().await.unwrap();
        assert_eq!(a.imds_tokens_made(), 1);
        assert_eq!(*ttl_asked.lock().unwrap(), ["21600"]);
        // Past its TTL less the margin: a new one.
        *a.imds_token.lock().unwrap() = Some(("tok".into(), tokio::time::Instant::now()));
        a.node_enis().await.unwrap();
        assert_eq!(a.imds_tokens_made(), 2);
        // A token IMDS no longer takes: dropped, a new one, the read goes on.
        *a.imds_token.lock().unwrap() = Some((
            "stale".into(),
            tokio::time::Instant::now() + Duration::from_secs(3600),
        ));
        assert_eq!(a.node_enis().await.unwrap()[0].groups, ["sg-node"]);
        assert_eq!(a.imds_tokens_made(), 3);
    }

    /// With AWS_REGION and credentials from the environment, IRSA or Pod Identity, instance
    /// metadata is never asked anything (a hub pod may have no route to it, and a hop
    /// limit of 1 drops its answers); with AWS_EC2_METADATA_DISABLED it is never asked
    /// even as the last link.
    #[tokio::test]
    async fn imds_is_never_asked_when_the_environment_answers() {
        let imds_hits = counter();
        let hits = imds_hits.clone();
        let imds = serve_with(move |_: &FakeRequest| {
            bump(&hits);
            (500, vec![], String::new())
        })
        .await;
        let ec2 = serve(fake).await;
        let sts = serve_with(|r: &FakeRequest| {
            assert!(
                r.body.contains("Action=AssumeRoleWithWebIdentity"),
                "{}",
                r.body
            );
            (200, vec![], STS_OK.into())
        })
        .await;
        let pod_identity = serve_with(|r: &FakeRequest| {
            assert_eq!(r.header("authorization"), Some("pod-token"));
            (
                200,
                vec![],
                r#"{"AccessKeyId":"ASIAPOD","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#
                    .into(),
            )
        })
        .await;
        let web_token = token_file("web-identity", "eyJ.e30.sig\n");
        let pod_token = token_file("pod-identity", "pod-token\n");
        let pod_url = format!("{pod_identity}/v1/credentials");
        for (env, key) in [
            (
                vec![
                    ("AWS_ACCESS_KEY_ID", "AKIAENV"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                ],
                "AKIAENV",
            ),
            (
                vec![
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", web_token.as_str()),
                    ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/hub"),
                    ("AWS_ENDPOINT_URL_STS", sts.as_str()),
                ],
                "ASIASTS",
            ),
            (
                vec![
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", pod_url.as_str()),
                    ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", pod_token.as_str()),
                ],
                "ASIAPOD",
            ),
        ] {
            let mut a = client(Some(&ec2), &imds, &env);
            let region = a.prepare().await.unwrap();
            assert_eq!(a.credentials.as_ref().unwrap().access_key_id, key);
            let groups = a.groups(&region, &["sg-pod".into()]).await.unwrap();
            assert_eq!(groups[0].id, "sg-pod");
        }
        assert_eq!(count(&imds_hits), 0, "instance metadata was asked");
        let mut a = client(Some(&ec2), &imds, &[("AWS_EC2_METADATA_DISABLED", "true")]);
        let e = a.prepare().await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("instance metadata gave no role: instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)"),
            "{e}"
        );
        assert_eq!(count(&imds_hits), 0);
    }

    /// STS is retried under the same policy as EC2 when it throttles (STS answers 400
    /// `Throttling`; moto never throttles, hence a fake), and its refusals are quoted.
    #[tokio::test]
    async fn sts_throttling_is_retried_and_its_errors_quoted() {
        let tries = counter();
        let t = tries.clone();
        let sts = serve_with(move |r: &FakeRequest| {
            assert!(r.body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fhub"));
            assert!(r.body.contains("WebIdentityToken=eyJ.e30.sig&") || r.body.ends_with("WebIdentityToken=eyJ.e30.sig"));
            if bump(&t) <= 2 {
                return (400, vec![], "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>".into());
            }
            (200, vec![], STS_OK.into())
        })
        .await;
        let web_token = token_file("web-identity-sts", "eyJ.e30.sig");
        let env = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", web_token.as_str()),
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/hub"),
            ("AWS_ENDPOINT_URL", sts.as_str()),
        ];
        let a = client(None, "http://127.0.0.1:9", &env);
        let (c, expire) = a.credentials("us-east-1").await.unwrap();
        assert_eq!(c.access_key_id, "ASIASTS");
        assert!(expire.is_some());
        assert_eq!(count(&tries), 3);

        let refusals = counter();
        let r2 = refusals.clone();
        let sts = serve_with(move |_: &FakeRequest| {
            bump(&r2);
            (400, vec![], r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found in your account for https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE</Message></Error><RequestId>r</RequestId></ErrorResponse>"#.into())
        })
        .await;
        let env = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", web_token.as_str()),
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/hub"),
            ("AWS_ENDPOINT_URL_STS", sts.as_str()),
        ];
        let e = client(None, "http://127.0.0.1:9", &env)
            .credentials("us-east-1")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "STS AssumeRoleWithWebIdentity at {sts}/: HTTP 400: InvalidIdentityToken: No OpenIDConnect provider found in your account for https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
            )
        );
        assert_eq!(count(&refusals), 1, "a refusal is not retried");
    }

    /// Instance metadata and the Pod Identity agent get the same retries as EC2 on 5xx
    /// (both answer 500 while they start or their upstream is throttled; moto serves
    /// neither).
    #[tokio::test]
    async fn imds_and_pod_identity_retry_server_errors() {
        let gets = counter();
        let g = gets.clone();
        let imds = serve_with(move |r: &FakeRequest| {
            if r.method == "GET" && bump(&g) <= 2 {
                return (503, vec![], String::new());
            }
            let (status, body) = fake(&r.path, &r.body);
            (status, vec![], body)
        })
        .await;
        let a = client(None, &imds, &[]);
        let (c, _) = a.credentials("us-east-1").await.unwrap();
        assert_eq!(c.access_key_id, "ASIA");
        // Two 503s, then the role's name, then its credentials.
        assert_eq!(count(&gets), 4);

        let tries = counter();
        let t = tries.clone();
        let pod = serve_with(move |_: &FakeRequest| {
            if bump(&t) == 1 {
                return (500, vec![], r#"{"message":"upstream throttled"}"#.into());
            }
            (
                200,
                vec![],
                r#"{"AccessKeyId":"ASIAPOD","SecretAccessKey":"s","Token":"t"}"#.into(),
            )
        })
        .await;
        let url = format!("{pod}/v1/credentials");
        let a = client(
            None,
            "http://127.0.0.1:9",
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url)],
        );
        assert_eq!(
            a.credentials("us-east-1").await.unwrap().0.access_key_id,
            "ASIAPOD"
        );
        assert_eq!(count(&tries), 2);
        // A refusal is final and quoted.
        let denied =
            serve_with(|_: &FakeRequest| (403, vec![], r#"{"message":"token audience"}"#.into()))
                .await;
        let url = format!("{denied}/v1/credentials");
        let e = client(
            None,
            "http://127.0.0.1:9",
            &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url)],
        )
        .credentials("us-east-1")
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{url} answered HTTP 403: {{\"message\":\"token audience\"}}")
        );
    }

    /// `Sat, 05 Dec 2026 13:22:33 GMT` from a time.
    fn imf_fixdate(t: SystemTime) -> String {
        let a = sigv4::amz_date(t);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m: usize = a[4..6].parse().unwrap();
        format!(
            "Sat, {} {} {} {}:{}:{} GMT",
            &a[6..8],
            months[m - 1],
            &a[..4],
            &a[9..11],
            &a[11..13],
            &a[13..15]
        )
    }

    #[test]
    fn http_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_476_953);
        assert_eq!(http_date(&imf_fixdate(t)), Some(t));
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date("yesterday"), None);
    }

    /// EC2 two hours ahead of this host refuses the request (`RequestExpired`, as EC2
    /// answers a signature more than 5 minutes off) with its `Date`: the call is signed
    /// again with that clock at once, and later calls keep the offset. A
    /// `SignatureDoesNotMatch` whose `Date` agrees with ours is a wrong secret: final.
    /// moto does not check signatures' times, hence a fake.
    #[tokio::test]
    async fn a_skewed_clock_is_corrected_from_the_date_header() {
        let tries = counter();
        let t = tries.clone();
        let ahead = Duration::from_secs(7200);
        let ec2 = serve_with(move |r: &FakeRequest| {
            bump(&t);
            let aws_now = SystemTime::now() + ahead;
            let signed = r.header("x-amz-date").unwrap();
            let signed = timestamp(&format!(
                "{}-{}-{}T{}:{}:{}Z",
                &signed[..4], &signed[4..6], &signed[6..8], &signed[9..11], &signed[11..13], &signed[13..15]
            ))
            .unwrap();
            let off = aws_now.duration_since(signed).unwrap_or_default().as_secs()
                + signed.duration_since(aws_now).unwrap_or_default().as_secs();
            let date = vec![("Date".to_owned(), imf_fixdate(aws_now))];
            if off > 300 {
                return (400, date, "<Response><Errors><Error><Code>RequestExpired</Code><Message>Request has expired.</Message></Error></Errors></Response>".into());
            }
            let (status, body) = fake(&r.path, &r.body);
            (status, date, body)
        })
        .await;
        let mut a = aws(&ec2);
        a.groups("us-east-1", &["sg-pod".into()]).await.unwrap();
        assert_eq!(count(&tries), 2);
        assert!(
            (7195..=7205).contains(&a.clock_offset()),
            "{}",
            a.clock_offset()
        );
        a.groups("us-east-1", &["sg-pod".into()]).await.unwrap();
        assert_eq!(count(&tries), 3, "the offset is kept");

        let tries = counter();
        let t = tries.clone();
        let wrong_secret = serve_with(move |_: &FakeRequest| {
            bump(&t);
            (403, vec![("Date".to_owned(), imf_fixdate(SystemTime::now()))], "<Response><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error></Errors></Response>".into())
        })
        .await;
        let mut a = aws(&wrong_secret);
        let e = a.groups("us-east-1", &["sg-pod".into()]).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("EC2 DescribeSecurityGroups: SignatureDoesNotMatch"),
            "{e}"
        );
        assert_eq!((count(&tries), a.clock_offset()), (1, 0));
    }

    /// Without `--ec2-endpoint`, EC2 is where the environment says: `AWS_ENDPOINT_URL`
    /// here, else the Region's endpoint in its partition; a setting that is not one is
    /// named by the call.
    #[tokio::test]
    async fn the_ec2_endpoint_comes_from_the_environment() {
        let hits = counter();
        let h = hits.clone();
        let ec2 = serve_with(move |r: &FakeRequest| {
            bump(&h);
            let (status, body) = fake(&r.path, &r.body);
            (status, vec![], body)
        })
        .await;
        let mut a = client(None, "http://127.0.0.1:9", &[("AWS_ENDPOINT_URL", &ec2)]);
        a.credentials = aws(&ec2).credentials;
        a.groups("us-east-1", &["sg-pod".into()]).await.unwrap();
        assert_eq!(count(&hits), 1);
        let plain = client(None, "http://127.0.0.1:9", &[]);
        assert_eq!(
            plain.ec2_url("cn-north-1").unwrap(),
            "https://ec2.cn-north-1.amazonaws.com.cn/"
        );
        assert_eq!(
            plain.ec2_url("us-gov-west-1").unwrap(),
            "https://ec2.us-gov-west-1.amazonaws.com/"
        );
        let fips = client(
            None,
            "http://127.0.0.1:9",
            &[("AWS_USE_FIPS_ENDPOINT", "true")],
        );
        assert_eq!(
            fips.ec2_url("us-east-1").unwrap(),
            "https://ec2-fips.us-east-1.amazonaws.com/"
        );
        let mut bad = client(
            None,
            "http://127.0.0.1:9",
            &[("AWS_USE_DUALSTACK_ENDPOINT", "1")],
        );
        bad.credentials = aws(&ec2).credentials;
        let e = bad
            .groups("us-east-1", &["sg-pod".into()])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "AWS_USE_DUALSTACK_ENDPOINT=\"1\": not true or false"
        );
    }
}
