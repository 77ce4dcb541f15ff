//! Reading the security groups from AWS: instance metadata (IMDSv2: the node ENIs' groups
//! by MAC, the VPC's CIDRs, the region, the instance role), the standard credential chain,
//! and the signed EC2 Query calls whose answers [`super::ec2`] parses.
//!
//! Side effects: HTTP(S) requests to IMDS, EC2, STS and the EKS Pod Identity agent, each
//! bounded by [`TIMEOUT`]; EC2 calls within a token bucket per action ([`budget`]: default
//! 1 per second sustained, 10 at once), retried with jittered exponential backoff when EC2
//! throttles, fails (5xx, `InternalError`, `Unavailable`) or does not answer. Temporary
//! credentials are kept until 5 minutes before they expire. Secrets never reach a log line.
//!
//! Two readers use it: `sgpath hub` (no instance metadata: region and credentials from the
//! environment, IRSA or EKS Pod Identity; [`Aws::enis_by_address`], [`Aws::groups`],
//! [`Aws::prefix_list`], [`Aws::vpc_cidrs`]) and the one-shot `sgpath trace --ec2` (and
//! `agent --ec2`), which also asks instance metadata for the node's own ENIs ([`Aws::read`]).
//!
//! The same data by hand:
//! `curl -H "X-aws-ec2-metadata-token: $T" $IMDS/latest/meta-data/network/interfaces/macs/$MAC/security-group-ids`,
//! `aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=$IP`,
//! `aws ec2 describe-security-groups --group-ids $SG`,
//! `aws ec2 get-managed-prefix-list-entries --prefix-list-id $PL`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
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

pub use budget::{Backoff, Budget, Limits};

/// Each request's limit.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a call EC2 throttled, failed or left unanswered, with [`BACKOFF`].
const RETRIES: u32 = 4;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(20),
};
/// Temporary credentials are read again this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
/// IMDS's documented address.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
const EC2_VERSION: &str = "2016-11-15";
/// Values per filter or id list in one call (EC2 accepts up to 200).
const BATCH: usize = 100;
/// How long an address's answer from `DescribeNetworkInterfaces` (its ENI, or that none
/// owns it) is reused before it is asked again: a far end seen every minute costs one
/// lookup per this, not one per read. Groups' rules are re-read on every read.
pub const ADDRESS_TTL: Duration = Duration::from_secs(300);

/// Where to reach AWS.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// The EC2 endpoint (`--ec2-endpoint`, else `AWS_ENDPOINT_URL_EC2`, else
    /// `https://ec2.<region>.amazonaws.com`).
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
            ec2_endpoint: ec2_endpoint
                .or_else(|| env("AWS_ENDPOINT_URL_EC2"))
                .or_else(|| env("AWS_ENDPOINT_URL")),
            imds_endpoint: imds_endpoint.unwrap_or_else(|| DEFAULT_IMDS.to_owned()),
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            limits: Limits::default(),
        }
    }
}

/// Why the rules could not be read; the text becomes the `ec2-unavailable` finding.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
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
    #[error("setting up TLS: {0}")]
    Tls(String),
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
    /// EC2 and STS: built at the first `https://` call (loading the system's roots costs
    /// 2 s of CPU under TCG, and a `trace` may never need them).
    https: std::sync::OnceLock<Http>,
    config: AwsConfig,
    credentials: Option<Credentials>,
    /// When [`Aws::credentials`] expire (`None`: long-term keys, kept for the process).
    credentials_expire: Option<SystemTime>,
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
    pub fn new(config: AwsConfig) -> Aws {
        Aws {
            http: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            https: std::sync::OnceLock::new(),
            budget: Budget::new(config.limits),
            config,
            credentials: None,
            credentials_expire: None,
            lookups: BTreeMap::new(),
        }
    }

    /// # Errors
    /// [`AwsError::Tls`] when the system's root certificates cannot be loaded.
    fn https(&self) -> Result<&Http, AwsError> {
        if let Some(c) = self.https.get() {
            return Ok(c);
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| AwsError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(self.https.get_or_init(|| client))
    }

    async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<(u16, String), AwsError> {
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
        let answer = tokio::time::timeout(TIMEOUT, async {
            let resp = sent.await.map_err(|e| err(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            Ok::<_, AwsError>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .map_err(|_| err(format!("no answer within {TIMEOUT:?}")))??;
        Ok(answer)
    }

    /// An IMDSv2 session token (PUT `/latest/api/token`).
    async fn imds_token(&self) -> Result<String, AwsError> {
        let url = format!("{}/latest/api/token", self.config.imds_endpoint);
        let headers = [("X-aws-ec2-metadata-token-ttl-seconds", "300".to_owned())];
        match self.request("PUT", &url, &headers, String::new()).await? {
            (200, token) => Ok(token.trim().to_owned()),
            (status, _) => Err(AwsError::Status { url, status }),
        }
    }

    async fn imds(&self, token: &str, path: &str) -> Result<String, AwsError> {
        let url = format!("{}/latest/meta-data/{path}", self.config.imds_endpoint);
        let headers = [("X-aws-ec2-metadata-token", token.to_owned())];
        match self.request("GET", &url, &headers, String::new()).await? {
            (200, body) => Ok(body),
            (status, _) => Err(AwsError::Status { url, status }),
        }
    }

    /// Every ENI attached to the instance, by MAC, with its groups (no credentials needed).
    ///
    /// # Errors
    /// [`AwsError`] when IMDS does not answer or answers an address that is not one.
    pub async fn node_enis(&self) -> Result<Vec<MetadataEni>, AwsError> {
        let token = self.imds_token().await?;
        let macs = self.imds(&token, "network/interfaces/macs/").await?;
        let mut out = Vec::new();
        for mac in lines(&macs) {
            let mac = mac.trim_end_matches('/');
            let base = format!("network/interfaces/macs/{mac}");
            let id = self.imds(&token, &format!("{base}/interface-id")).await?;
            let groups = self
                .imds(&token, &format!("{base}/security-group-ids"))
                .await?;
            // An ENI without IPv4 (IPv6-only clusters) answers 404 here.
            let v4 = self
                .imds(&token, &format!("{base}/local-ipv4s"))
                .await
                .unwrap_or_default();
            let v6 = self
                .imds(&token, &format!("{base}/ipv6s"))
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
                    self.imds(&token, &format!("{base}/{what}"))
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
    /// EKS Pod Identity, the instance role; with their expiry when temporary.
    async fn credentials(
        &mut self,
        region: &str,
    ) -> Result<(Credentials, Option<SystemTime>), AwsError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
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
            let token = std::fs::read_to_string(&file).map_err(|e| AwsError::Malformed {
                what: format!("AWS_WEB_IDENTITY_TOKEN_FILE {file}"),
                message: e.to_string(),
            })?;
            let url = env("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
            let body = sigv4::form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", &role),
                ("RoleSessionName", "sgpath"),
                ("WebIdentityToken", token.trim()),
            ]);
            let headers = [(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            )];
            let (status, xml) = self.request("POST", &url, &headers, body).await?;
            if status != 200 {
                return Err(AwsError::Status { url, status });
            }
            return web_identity_credentials(&xml);
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
            let (status, json) = self
                .request("GET", &url, &[("Authorization", auth)], String::new())
                .await?;
            if status != 200 {
                return Err(AwsError::Status { url, status });
            }
            return json_credentials(&url, &json);
        }
        let imds = async {
            let token = self.imds_token().await?;
            let roles = self.imds(&token, "iam/security-credentials/").await?;
            let role = lines(&roles).next().ok_or_else(|| AwsError::Malformed {
                what: "instance metadata iam/security-credentials/".into(),
                message: "no role".into(),
            })?;
            let json = self
                .imds(&token, &format!("iam/security-credentials/{role}"))
                .await?;
            json_credentials("instance metadata iam/security-credentials", &json)
        };
        imds.await.map_err(|e| AwsError::NoCredentials {
            imds: e.to_string(),
        })
    }

    async fn region(&self) -> Result<String, AwsError> {
        if let Some(r) = &self.config.region {
            return Ok(r.clone());
        }
        let imds = async {
            let token = self.imds_token().await?;
            self.imds(&token, "placement/region").await
        };
        imds.await
            .map(|r| r.trim().to_owned())
            .map_err(|e| AwsError::NoRegion {
                imds: e.to_string(),
            })
    }

    /// One signed EC2 Query call within the budget of its action, retried with jittered
    /// exponential backoff while EC2 throttles, fails (5xx, `InternalError`, `Unavailable`)
    /// or does not answer; every attempt takes a token.
    async fn call(
        &mut self,
        region: &str,
        action: &'static str,
        params: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let endpoint = self
            .config
            .ec2_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        let url = format!("{}/", endpoint.trim_end_matches('/'));
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
        for attempt in 0..=RETRIES {
            self.budget.take(action).await;
            let content_type = "application/x-www-form-urlencoded; charset=utf-8";
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
                "ec2",
                SystemTime::now(),
            );
            let mut headers: Vec<(&str, String)> = vec![("content-type", content_type.into())];
            headers.extend(signed);
            let err = match self.request("POST", &url, &headers, body.clone()).await {
                Ok((200, xml)) => return Ok(xml),
                // EC2's error document names the fault; anything else is the status.
                Ok((status, xml)) => match ec2::api_error(action, &xml) {
                    Some(e) if e.is_transient() || status >= 500 => (true, AwsError::Ec2(e)),
                    Some(e) => (false, AwsError::Ec2(e)),
                    None => (
                        status >= 500 || status == 429,
                        AwsError::Status {
                            url: url.clone(),
                            status,
                        },
                    ),
                },
                // No answer within the timeout, a refused or reset connection.
                Err(e @ AwsError::Http { .. }) => (true, e),
                Err(e) => (false, e),
            };
            let (transient, err) = err;
            if !transient || attempt == RETRIES {
                return Err(err);
            }
            let wait = BACKOFF.wait(attempt);
            tracing::debug!(event = "ec2-retry", action, attempt, error = %err,
                wait_ms = wait.as_millis() as u64, "EC2 call failed; backing off");
            tokio::time::sleep(wait).await;
        }
        unreachable!("the last attempt returns")
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

    /// A one-shot fake of IMDS and EC2 on loopback: answers each request from `route`.
    async fn serve(route: fn(&str, &str) -> (u16, String)) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
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
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                                let (status, answer) = route(&path, body);
                                let out = format!(
                                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                                    answer.len()
                                );
                                let _ = s.write_all(out.as_bytes()).await;
                                return;
                            }
                        }
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
        let mut a = Aws::new(AwsConfig {
            ec2_endpoint: Some(url.to_owned()),
            imds_endpoint: url.to_owned(),
            region: Some("us-east-1".into()),
            limits: Limits::default(),
        });
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
        // The environment's keys come first in the chain; without them the fake IMDS role.
        a.fresh_credentials("us-east-1").await.unwrap();
        let id = a.credentials.as_ref().unwrap().access_key_id.clone();
        let env = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
        assert!(id == "ASIA" || id == env, "{id}");
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
}
