//! `sgpath hub`: the cluster's one reader of EC2. Agents (`sgpath agent --hub URL`) send
//! the addresses they need judged and get back a [`Catalog`](crate::model::sg::Catalog)
//! of what the hub has read: the ENIs owning those addresses, every group those carry with
//! its rules, the prefix lists' entries and the VPC's CIDR blocks. Addresses not read yet
//! are left out (the agent's verdicts about them stay unverified) and queued for the
//! hub's next batched read.
//!
//! The cost EC2 sees depends on the cluster's addresses and groups, not on its nodes:
//! each address is read once per `--address-ttl` (batched, 100 per call) however many
//! agents ask about it, the groups once per `--group-refresh`, and every call within the
//! budget of its action ([`crate::collect::aws::budget`]).
//!
//! The wire ([`server`], [`client`]): `POST /v1/catalog` with `{"addresses": ["10.0.1.10",
//! ...]}` (or `GET /v1/catalog?address=10.0.1.10&address=...`) answers the
//! [`Rules`](crate::model::sg::Rules) JSON: `{"state": "fresh", "catalog": {...}}`, or
//! `{"state": "unavailable", "reason": "..."}` while the hub cannot read EC2. Also
//! `/metrics`, `/healthz`, `/readyz`.
//!
//! Side effects: binds its listener; EC2 (and STS, Pod Identity or instance metadata for
//! credentials) through [`crate::collect::aws`].

pub mod cache;
pub mod client;
pub mod front;
pub mod server;
#[cfg(test)]
mod sim;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;

use tokio::{
    sync::{Mutex as AsyncMutex, Notify},
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    collect::{
        aws::{Aws, AwsConfig, AwsError},
        ec2::{NetworkInterface, Vpc},
    },
    model::sg::SecurityGroup,
};

pub use cache::Cache;
pub use client::{Client, HubError};

/// `--address-ttl`'s default: how long an address's owner (its ENI and that ENI's groups) is
/// served before it is read again. An ENI's groups rarely change (a branch ENI keeps its
/// groups for its pod's life); the groups' rules, which do, are read every
/// `--group-refresh`. At 5,000 nodes, 7 ENIs each, 15 min costs 0.39 calls per second.
pub const DEFAULT_ADDRESS_TTL: Duration = Duration::from_secs(15 * 60);

/// How long the reader waits after an agent queued an address, so that the questions of
/// many agents starting together go in one batch.
pub const SETTLE: Duration = Duration::from_millis(500);
/// The first wait after a failed read; doubles up to [`FAILURE_BACKOFF_MAX`].
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The hub's settings (`sgpath hub` flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub aws: AwsConfig,
    pub address_ttl: Duration,
    pub group_refresh: Duration,
}

/// What the hub reads EC2 with: the real client ([`Aws`]), or the fleet simulation's
/// counting stand-in. Each call takes a token of its action's budget.
pub trait Ec2: Send + 'static {
    /// The Region, with fresh credentials.
    fn prepare(&mut self) -> impl Future<Output = Result<String, AwsError>> + Send;
    /// `DescribeNetworkInterfaces` by address, batched.
    fn enis_by_address(
        &mut self,
        region: &str,
        addresses: &[IpAddr],
    ) -> impl Future<Output = Result<Vec<NetworkInterface>, AwsError>> + Send;
    /// `DescribeSecurityGroups` by group id, batched.
    fn groups(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<SecurityGroup>, AwsError>> + Send;
    /// `GetManagedPrefixListEntries`.
    fn prefix_list(
        &mut self,
        region: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<IpNet>, AwsError>> + Send;
    /// `DescribeVpcs` by id.
    fn vpc_cidrs(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Vpc>, AwsError>> + Send;
    /// Calls made per action since the start (retries included).
    fn calls(&self) -> BTreeMap<&'static str, u64>;
}

impl Ec2 for Aws {
    async fn prepare(&mut self) -> Result<String, AwsError> {
        Aws::prepare(self).await
    }
    async fn enis_by_address(
        &mut self,
        region: &str,
        addresses: &[IpAddr],
    ) -> Result<Vec<NetworkInterface>, AwsError> {
        Aws::enis_by_address(self, region, addresses).await
    }
    async fn groups(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<SecurityGroup>, AwsError> {
        Aws::groups(self, region, ids).await
    }
    async fn prefix_list(&mut self, region: &str, id: &str) -> Result<Vec<IpNet>, AwsError> {
        Aws::prefix_list(self, region, id).await
    }
    async fn vpc_cidrs(&mut self, region: &str, ids: &[String]) -> Result<Vec<Vpc>, AwsError> {
        Aws::vpc_cidrs(self, region, ids).await
    }
    fn calls(&self) -> BTreeMap<&'static str, u64> {
        Aws::calls(self).clone()
    }
}

/// Who may ask for catalogs: the agents, by the token the cluster's issuer signed for their
/// ServiceAccount (checked here against its published keys, no review per token).
pub enum CatalogGate {
    /// Anyone (`--auth none`, only on loopback; tests).
    Open,
    /// Tokens of these subjects (`system:serviceaccount:sgpath:sgpath`).
    Agents {
        keys: Box<crate::auth::issuer::IssuerKeys>,
        subjects: Vec<String>,
    },
}

impl CatalogGate {
    /// `Ok`, or the status (401: no or bad token, 403: another subject, 503: the keys
    /// cannot be read) and why.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Result<(), (u16, String)> {
        let CatalogGate::Agents { keys, subjects } = self else {
            return Ok(());
        };
        let token = authorization
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or((
                401,
                "a bearer token of the agents' ServiceAccount is required".into(),
            ))?;
        match keys.verify(token.trim()).await {
            Ok(sub) if subjects.contains(&sub) => Ok(()),
            Ok(sub) => Err((403, format!("{sub} may not ask for catalogs"))),
            Err(e @ crate::auth::issuer::Refusal::Keys(_)) => Err((503, e.to_string())),
            Err(e) => Err((401, e.to_string())),
        }
    }
}

/// What the server and the reader share.
pub struct Hub<E: Ec2 = Aws> {
    /// Who may ask for catalogs.
    pub catalog_gate: CatalogGate,
    pub cache: std::sync::Mutex<Cache>,
    /// Wakes the reader when an agent queued an address.
    pub queued: Notify,
    /// The reader's client, for its call counts.
    pub aws: AsyncMutex<E>,
    /// Catalog requests answered.
    pub requests: std::sync::atomic::AtomicU64,
    /// The front door for people (`/v1/fleet/report`, `/v1/agents/<node>/...`), when the hub
    /// can list the agents.
    pub front: Option<front::Front>,
    /// Who may use the front door.
    pub gate: Arc<dyn front::Gate>,
}

impl Hub {
    /// A hub without front door (EC2 only).
    pub fn new(config: &Config) -> Arc<Hub> {
        Hub::with_front(config, None, Arc::new(front::Open), CatalogGate::Open)
    }

    /// A hub that also answers people for the agents (`front`), admitting them by `gate`.
    pub fn with_front(
        config: &Config,
        front: Option<front::Front>,
        gate: Arc<dyn front::Gate>,
        catalog_gate: CatalogGate,
    ) -> Arc<Hub> {
        Hub::with_reader(
            config,
            Aws::new(config.aws.clone()),
            front,
            gate,
            catalog_gate,
        )
    }
}

impl<E: Ec2> Hub<E> {
    /// A hub reading EC2 through `ec2`.
    pub fn with_reader(
        config: &Config,
        ec2: E,
        front: Option<front::Front>,
        gate: Arc<dyn front::Gate>,
        catalog_gate: CatalogGate,
    ) -> Arc<Hub<E>> {
        Arc::new(Hub {
            catalog_gate,
            cache: std::sync::Mutex::new(Cache::new(config.address_ttl, config.group_refresh)),
            queued: Notify::new(),
            aws: AsyncMutex::new(ec2),
            requests: Default::default(),
            front,
            gate,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads EC2 for as long as it runs: whenever agents queued addresses (after
    /// [`SETTLE`]) and at every group refresh; a failed read is retried with backoff and
    /// named to every agent meanwhile.
    pub async fn read_forever(self: Arc<Hub<E>>, group_refresh: Duration) {
        let mut failures = 0u32;
        loop {
            match self.read_once().await {
                Ok(()) => {
                    if self.cache().succeed() {
                        info!(event = "ec2-resumed", "reading EC2 again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    let reason = format!("sgpath hub cannot read EC2: {e}");
                    warn!(event = "ec2-unavailable", error = %e, "cannot read EC2");
                    self.cache().fail(reason);
                    let wait = FAILURE_BACKOFF
                        .saturating_mul(1 << failures.min(10))
                        .min(FAILURE_BACKOFF_MAX);
                    failures += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            if self.cache().has_queue() {
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            tokio::select! {
                () = self.queued.notified() => tokio::time::sleep(SETTLE).await,
                () = tokio::time::sleep(group_refresh.min(Duration::from_secs(10))) => {}
            }
        }
    }

    /// One round: what [`Cache::due`] names, read in batches within the budget.
    ///
    /// # Errors
    /// The first [`AwsError`]; addresses whose read failed are queued again.
    pub async fn read_once(&self) -> Result<(), AwsError> {
        let work = self.cache().due(Instant::now());
        if work.is_empty() {
            return Ok(());
        }
        let mut aws = self.aws.lock().await;
        let region = match aws.prepare().await {
            Ok(r) => r,
            Err(e) => {
                self.cache().requeue(&work.addresses);
                return Err(e);
            }
        };
        if !work.addresses.is_empty() {
            match aws.enis_by_address(&region, &work.addresses).await {
                Ok(enis) => {
                    info!(
                        event = "ec2-addresses-read",
                        addresses = work.addresses.len(),
                        enis = enis.len(),
                        "looked addresses up"
                    );
                    self.cache()
                        .apply_enis(&work.addresses, enis, Instant::now());
                }
                Err(e) => {
                    self.cache().requeue(&work.addresses);
                    return Err(e);
                }
            }
        }
        // The ENIs just read may carry groups and VPCs never read: read them in this round.
        let more = self.cache().due(Instant::now());
        let refresh = work.refresh || more.refresh;
        let groups: Vec<String> = work
            .groups
            .into_iter()
            .chain(more.groups)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let vpcs: Vec<String> = work
            .vpcs
            .into_iter()
            .chain(more.vpcs)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        self.cache().requeue(&more.addresses);
        if !vpcs.is_empty() {
            let got = aws.vpc_cidrs(&region, &vpcs).await?;
            self.cache().apply_vpcs(got);
        }
        if !groups.is_empty() {
            let mut read = aws.groups(&region, &groups).await?;
            let due = self.cache().prefix_lists_due(&read, refresh);
            for id in due {
                match aws.prefix_list(&region, &id).await {
                    Ok(cidrs) => self.cache().apply_prefix_list(id, Some(cidrs)),
                    // Refused (neither node policy grants it): its rules stay unverified.
                    Err(AwsError::Ec2(e)) if !e.is_transient() => {
                        warn!(event = "prefix-list-unread", prefix_list = %id, error = %e,
                            "prefix list unread");
                        self.cache().apply_prefix_list(id, None);
                    }
                    Err(e) => return Err(e),
                }
            }
            let entries = self.cache().prefix_list_entries();
            crate::collect::ec2::resolve_prefix_lists(&mut read, &entries);
            info!(
                event = "ec2-groups-read",
                groups = read.len(),
                refresh,
                "read the groups' rules"
            );
            self.cache()
                .apply_groups(&groups, read, Instant::now(), refresh);
        }
        Ok(())
    }

    /// Answers an agent: see [`Cache::ask`]. Wakes the reader when something was queued.
    pub fn ask(
        &self,
        addresses: &std::collections::BTreeSet<std::net::IpAddr>,
    ) -> crate::model::sg::Rules {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (rules, queued) = {
            let mut c = self.cache();
            let r = c.ask(addresses, Instant::now());
            (r, c.has_queue())
        };
        if queued {
            self.queued.notify_one();
        }
        rules
    }
}

/// Runs the hub on `listener` until `shutdown` completes.
///
/// # Errors
/// None today beyond the listener's; kept for the caller's `?`.
pub async fn run(
    config: Config,
    transport: crate::tls::Transport,
    front: Option<front::Front>,
    gate: Arc<dyn front::Gate>,
    catalog_gate: CatalogGate,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let hub = Hub::with_front(&config, front, gate, catalog_gate);
    let reader = tokio::spawn(hub.clone().read_forever(config.group_refresh));
    let server = tokio::spawn(server::serve(listener, transport, hub));
    shutdown.await;
    reader.abort();
    server.abort();
    Ok(())
}
