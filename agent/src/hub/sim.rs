//! The fleet simulation (issue 31): what EC2 sees from sgpath at 1,000 and 5,000 nodes, for
//! the hub as shipped and for the per-node design it replaced, side by side.
//!
//! The hub is the real thing: [`Hub::read_forever`] with the real [`Cache`](super::Cache)
//! and the real [`Budget`], on tokio's paused clock, reading a counting stand-in for EC2
//! ([`SimEc2`]: a VPC of nodes, their ENIs and pods, batched like [`Aws`](super::Aws)).
//! The agents are modelled by when they ask (`read_from_hub` in `agent/src/agent.rs`): at
//! start, every `--ec2-refresh` (60 s), 2 s after their addresses change, and soon
//! (2 s doubling) while some address is still unknown.
//!
//! The per-node design is a model of the agent before issue 31: each agent read EC2 itself
//! at start, every 60 s, and 2 s after any change of its cluster snapshot (no minimum gap,
//! no jitter): one `DescribeSecurityGroups` per read, and one `DescribeNetworkInterfaces`
//! when one of its branch pods' addresses was new to it or older than 5 min.
//!
//! Every call of both designs is replayed through EC2's own bucket for non-mutating actions
//! (100 tokens, 20 refilled per second, per action), with nothing else spending it: a call
//! finding it empty is one EC2 would have throttled.
//!
//! `simulated_fleet_matches_benchmarks` checks the table in BENCHMARKS.md against a fresh
//! run (`SGPATH_WRITE_BENCHMARKS=1` rewrites it) and asserts issue 31's bar: at 5,000 nodes
//! the hub stays under 1 call per second per action sustained and never empties the bucket.

use std::{
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;

use super::{Config, Ec2, Hub, front};
use crate::{
    collect::{
        aws::{AwsConfig, AwsError, BATCH, Budget, Limits},
        ec2::{NetworkInterface, Vpc},
    },
    model::sg::{Locus, Rules, SecurityGroup},
};

const DNI: &str = "DescribeNetworkInterfaces";
const DSG: &str = "DescribeSecurityGroups";

/// The simulated cluster's shape per node.
const NODE_ENIS: u32 = 3;
const ORDINARY_PODS: u32 = 16;
const BRANCH_PODS: u32 = 4;
/// Addresses reserved per node: ENI primaries, pods, and room for replaced branch pods.
const PER_NODE: u32 = 64;
const SGPS: u32 = 200;
/// The agents' `--ec2-refresh`, and the settle after a change.
const REFRESH: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);
/// What is measured, after a warm-up that fills the hub's cache (and spreads the agents).
const WINDOW: Duration = Duration::from_secs(600);
const WARM_UP: Duration = Duration::from_secs(25 * 60);
const WARM_ASK: Duration = Duration::from_secs(300);

/// Node `n`'s `i`-th address: 10.0.0.0/8, `PER_NODE` per node.
fn addr(n: u32, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n * PER_NODE + i))
}

/// The VPC EC2 answers for: node ENIs holding the ordinary pods' addresses as secondary
/// addresses, and one branch ENI per branch pod with its SecurityGroupPolicy's group.
#[derive(Default)]
struct Vpc10 {
    by_address: BTreeMap<IpAddr, Arc<NetworkInterface>>,
}

impl Vpc10 {
    fn new(nodes: u32) -> Vpc10 {
        let mut v = Vpc10::default();
        for n in 0..nodes {
            for k in 0..NODE_ENIS {
                let addresses: Vec<IpAddr> = std::iter::once(addr(n, k))
                    .chain(
                        (0..ORDINARY_PODS)
                            .filter(|p| p % NODE_ENIS == k)
                            .map(|p| addr(n, NODE_ENIS + p)),
                    )
                    .collect();
                v.add(format!("eni-{n}-{k}"), addresses, "sg-node".into());
            }
            for b in 0..BRANCH_PODS {
                v.branch(n, b);
            }
        }
        v
    }

    fn branch_slot(b: u32) -> u32 {
        NODE_ENIS + ORDINARY_PODS + b
    }

    fn branch(&mut self, n: u32, slot: u32) {
        let a = addr(n, Vpc10::branch_slot(slot));
        let group = format!("sg-sgp-{}", (n * BRANCH_PODS + slot) % SGPS);
        self.add(format!("eni-{n}-b{slot}"), vec![a], group);
    }

    fn add(&mut self, id: String, addresses: Vec<IpAddr>, group: String) {
        let eni = Arc::new(NetworkInterface {
            id,
            groups: vec![group],
            addresses: addresses.clone(),
            prefixes: Vec::new(),
            vpc_id: Some("vpc-sim".into()),
        });
        for a in addresses {
            self.by_address.insert(a, eni.clone());
        }
    }
}

/// EC2 as the hub sees it: answers from [`Vpc10`], every call taking a token of the real
/// [`Budget`] first (as [`Aws`](super::Aws) does) and recorded with its time.
struct SimEc2 {
    vpc: Arc<Mutex<Vpc10>>,
    budget: Budget,
    log: Arc<Mutex<Vec<(Instant, &'static str)>>>,
}

impl SimEc2 {
    async fn call(&mut self, action: &'static str) {
        self.budget.take(action).await;
        self.log.lock().unwrap().push((Instant::now(), action));
    }
}

impl Ec2 for SimEc2 {
    async fn prepare(&mut self) -> Result<String, AwsError> {
        Ok("us-east-1".into())
    }

    async fn enis_by_address(
        &mut self,
        _region: &str,
        addresses: &[IpAddr],
    ) -> Result<Vec<NetworkInterface>, AwsError> {
        let mut out: BTreeMap<String, NetworkInterface> = BTreeMap::new();
        for chunk in addresses.chunks(BATCH) {
            self.call(DNI).await;
            let vpc = self.vpc.lock().unwrap();
            for a in chunk {
                if let Some(e) = vpc.by_address.get(a) {
                    out.insert(e.id.clone(), (**e).clone());
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn groups(
        &mut self,
        _region: &str,
        ids: &[String],
    ) -> Result<Vec<SecurityGroup>, AwsError> {
        for _ in ids.chunks(BATCH) {
            self.call(DSG).await;
        }
        Ok(ids.iter().map(SecurityGroup::new).collect())
    }

    async fn prefix_list(&mut self, _region: &str, _id: &str) -> Result<Vec<IpNet>, AwsError> {
        self.call("GetManagedPrefixListEntries").await;
        Ok(Vec::new())
    }

    async fn vpc_cidrs(&mut self, _region: &str, ids: &[String]) -> Result<Vec<Vpc>, AwsError> {
        self.call("DescribeVpcs").await;
        Ok(ids
            .iter()
            .map(|id| Vpc {
                id: id.clone(),
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            })
            .collect())
    }

    fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.budget.calls().clone()
    }
}

/// What happens during the measured window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Nothing: every agent on its refresh.
    Steady,
    /// Every agent restarted, a tenth of the fleet at a time (the DaemonSet's
    /// maxUnavailable 10 %), a wave every 30 s.
    RollingRestart,
    /// A namespace created every second.
    NamespacePerSecond,
    /// Each of the 200 SecurityGroupPolicies changed once (one every 3 s), and each change
    /// rolls 10 of its branch pods onto new addresses and new branch ENIs.
    SgpsChanging,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Steady,
        Scenario::RollingRestart,
        Scenario::NamespacePerSecond,
        Scenario::SgpsChanging,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::RollingRestart => "rolling restart of every agent",
            Scenario::NamespacePerSecond => "a namespace every second",
            Scenario::SgpsChanging => "200 SecurityGroupPolicies changing",
        }
    }
}

/// One cluster event within the window, at its offset from the window's start.
#[derive(Clone, Debug)]
enum Event {
    /// Agents restarted.
    Restart(Vec<u32>),
    /// A change of the cluster snapshot every agent sees (a namespace, an SGP).
    ClusterChange,
    /// Branch pods replaced: (node, slot) get new addresses and ENIs.
    PodsReplaced(Vec<(u32, u32)>),
}

fn events(s: Scenario, nodes: u32) -> Vec<(Duration, Event)> {
    match s {
        Scenario::Steady => Vec::new(),
        Scenario::RollingRestart => {
            let wave = nodes.div_ceil(10);
            (0..10)
                .map(|w| {
                    let ids = (w * wave..((w + 1) * wave).min(nodes)).collect();
                    (Duration::from_secs(u64::from(w) * 30), Event::Restart(ids))
                })
                .collect()
        }
        Scenario::NamespacePerSecond => (0..600)
            .map(|t| (Duration::from_secs(t), Event::ClusterChange))
            .collect(),
        Scenario::SgpsChanging => (0..SGPS)
            .flat_map(|i| {
                let at = Duration::from_secs(u64::from(i) * 3);
                // The pods this SGP selects are on nodes n with n*BRANCH_PODS+b ≡ i.
                let pods: Vec<(u32, u32)> = (0..nodes)
                    .flat_map(|n| (0..BRANCH_PODS).map(move |b| (n, b)))
                    .filter(|(n, b)| (n * BRANCH_PODS + b) % SGPS == i)
                    .take(10)
                    .collect();
                [(at, Event::ClusterChange), (at, Event::PodsReplaced(pods))]
            })
            .collect(),
    }
}

/// Calls per action of one design in one scenario.
#[derive(Clone, Debug, Default, PartialEq)]
struct Cost {
    /// The most calls within any one second.
    peak: u64,
    /// Calls per second over the window.
    sustained: f64,
    /// Calls EC2's bucket (100, 20/s) would have throttled.
    throttled: u64,
}

/// Replays call times (seconds from the window's start) through EC2's bucket.
fn cost(times: &[f64]) -> Cost {
    let mut times = times.to_vec();
    times.sort_by(f64::total_cmp);
    let mut peak = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 1.0 {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    let (mut level, mut at, mut throttled) = (100.0f64, 0.0f64, 0);
    for &t in &times {
        level = (level + (t - at) * 20.0).min(100.0);
        at = t;
        if level >= 1.0 {
            level -= 1.0;
        } else {
            throttled += 1;
        }
    }
    Cost {
        peak: peak as u64,
        sustained: times.len() as f64 / WINDOW.as_secs_f64(),
        throttled,
    }
}

/// The per-node model: the times (from the window's start) of each agent's reads, and the
/// calls they make.
fn per_node(s: Scenario, nodes: u32) -> BTreeMap<&'static str, Cost> {
    const LOOKUP_TTL: f64 = 300.0;
    let events = events(s, nodes);
    let mut dni = Vec::new();
    let mut dsg = Vec::new();
    let window = WINDOW.as_secs_f64();
    for n in 0..nodes {
        // Started long ago: its refresh and its lookups' age at a spread phase.
        let phase = f64::from(n) / f64::from(nodes);
        let mut reads: Vec<f64> = Vec::new();
        let mut t = -60.0 + phase * 60.0;
        while t < window {
            reads.push(t);
            t += 60.0;
        }
        let mut lookups_at = -LOOKUP_TTL + phase * LOOKUP_TTL;
        let mut new_pods_at: Vec<f64> = Vec::new();
        for (at, e) in &events {
            let at = at.as_secs_f64();
            match e {
                Event::ClusterChange => reads.push(at + SETTLE.as_secs_f64()),
                Event::Restart(ids) if ids.contains(&n) => {
                    // A restarted agent reads at once, its lookups forgotten, and its
                    // refresh starts again from there.
                    let start = at + 10.0;
                    reads.retain(|r| *r < start);
                    let mut t = start;
                    while t < window {
                        reads.push(t);
                        t += 60.0;
                    }
                    new_pods_at.push(start);
                }
                Event::PodsReplaced(pods) if pods.iter().any(|(pn, _)| *pn == n) => {
                    reads.push(at + SETTLE.as_secs_f64());
                    new_pods_at.push(at);
                }
                _ => {}
            }
        }
        reads.sort_by(f64::total_cmp);
        for &r in reads.iter().filter(|r| **r >= 0.0 && **r < window) {
            dsg.push(r);
            let new_pod = new_pods_at.iter().any(|p| *p <= r && *p > lookups_at);
            if new_pod || r - lookups_at >= LOOKUP_TTL {
                dni.push(r);
                lookups_at = r;
            }
        }
    }
    BTreeMap::from([(DNI, cost(&dni)), (DSG, cost(&dsg))])
}

/// An agent as the hub sees it: its addresses and when it asks next.
struct SimAgent {
    addresses: BTreeSet<IpAddr>,
    soon: Duration,
}

impl SimAgent {
    fn new(n: u32) -> SimAgent {
        let mut addresses: BTreeSet<IpAddr> = (0..NODE_ENIS + ORDINARY_PODS + BRANCH_PODS)
            .map(|i| addr(n, i))
            .collect();
        // CoreDNS: two ordinary pods of node 0.
        addresses.extend([addr(0, NODE_ENIS), addr(0, NODE_ENIS + 1)]);
        SimAgent {
            addresses,
            soon: SETTLE,
        }
    }

    /// Asks the hub; when to ask next (`read_from_hub`'s waits).
    fn ask(&mut self, hub: &Hub<SimEc2>) -> Duration {
        let unknown = match hub.ask(&self.addresses) {
            Rules::Fresh { catalog } => self
                .addresses
                .iter()
                .filter(|a| matches!(catalog.locate(**a), Locus::Unknown))
                .count(),
            Rules::Unavailable { .. } => 1,
        };
        if unknown > 0 {
            let w = self.soon;
            self.soon = (self.soon * 2).min(REFRESH);
            w
        } else {
            self.soon = SETTLE;
            REFRESH
        }
    }
}

/// What the hub design cost in the window: per action, and the agents' asks per second.
struct HubRun {
    costs: BTreeMap<&'static str, Cost>,
    asks_per_second: f64,
    /// The longest an agent waited, in the window, for a new address to be answered.
    slowest_answer: Duration,
    /// Addresses still queued when the window opened (the warm-up's cold read unfinished).
    queued_at_window: Option<usize>,
}

async fn hub_run(s: Scenario, nodes: u32) -> HubRun {
    let vpc = Arc::new(Mutex::new(Vpc10::new(nodes)));
    let log = Arc::new(Mutex::new(Vec::new()));
    let ec2 = SimEc2 {
        vpc: vpc.clone(),
        budget: Budget::new(Limits::default()),
        log: log.clone(),
    };
    let config = Config {
        aws: AwsConfig::from_env(None, None),
        address_ttl: super::DEFAULT_ADDRESS_TTL,
        group_refresh: REFRESH,
    };
    let hub = Hub::with_reader(
        &config,
        ec2,
        None,
        Arc::new(front::Open),
        super::CatalogGate::Open,
    );
    let reader = tokio::spawn(hub.clone().read_forever(config.group_refresh));
    let start = Instant::now();
    let mut agents: Vec<SimAgent> = (0..nodes).map(SimAgent::new).collect();
    // (when, agent): a min-heap by time, agents starting over the first minute.
    let mut queue: BinaryHeap<std::cmp::Reverse<(Instant, u32)>> = (0..nodes)
        .map(|n| {
            let at = start + REFRESH.mul_f64(f64::from(n) / f64::from(nodes));
            std::cmp::Reverse((at, n))
        })
        .collect();
    let window_start = start + WARM_UP;
    let mut pending: Vec<(Instant, Event)> = events(s, nodes)
        .into_iter()
        .map(|(at, e)| (window_start + at, e))
        .collect();
    pending.reverse();
    let mut asks = 0u64;
    // Since when each agent has had an address the hub could not answer.
    let mut waiting: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut queued_at_window = None;
    let end = window_start + WINDOW;
    while let Some(std::cmp::Reverse((at, n))) = queue.pop() {
        if at >= end {
            break;
        }
        // Cluster events due before this ask.
        while pending.last().is_some_and(|(t, _)| *t <= at) {
            let (t, e) = pending.pop().unwrap();
            tokio::time::sleep_until(t).await;
            match e {
                Event::ClusterChange => {} // The agents' addresses did not change.
                Event::Restart(ids) => {
                    for id in ids {
                        agents[id as usize].soon = SETTLE;
                        queue.push(std::cmp::Reverse((t + Duration::from_secs(10), id)));
                    }
                }
                Event::PodsReplaced(pods) => {
                    for (pn, slot) in pods {
                        let old = addr(pn, Vpc10::branch_slot(slot));
                        let new = addr(pn, Vpc10::branch_slot(slot + BRANCH_PODS));
                        {
                            let mut v = vpc.lock().unwrap();
                            v.by_address.remove(&old);
                            v.branch(pn, slot + BRANCH_PODS);
                        }
                        let a = &mut agents[pn as usize];
                        a.addresses.remove(&old);
                        a.addresses.insert(new);
                        a.soon = SETTLE;
                        waiting.entry(pn).or_insert(t);
                        queue.push(std::cmp::Reverse((t + SETTLE, pn)));
                    }
                }
            }
        }
        tokio::time::sleep_until(at).await;
        if at >= window_start && queued_at_window.is_none() {
            queued_at_window = Some(hub.cache.lock().unwrap().sizes().1);
        }
        let mut wait = agents[n as usize].ask(&hub);
        // During the warm-up the agents ask every 5 min: what EC2 sees does not depend on
        // how often an agent asks within the address TTL, and the simulation runs 5x faster.
        if wait == REFRESH && at + WARM_ASK < window_start {
            wait = WARM_ASK;
        }
        if at >= window_start {
            asks += 1;
        }
        if wait < REFRESH {
            waiting.entry(n).or_insert(at);
        } else if let Some(since) = waiting.remove(&n)
            && since >= window_start
        {
            slowest = slowest.max(at - since);
        }
        queue.push(std::cmp::Reverse((at + wait, n)));
    }
    reader.abort();
    let log = log.lock().unwrap();
    let mut times: BTreeMap<&'static str, Vec<f64>> =
        BTreeMap::from([(DNI, vec![]), (DSG, vec![])]);
    for (t, action) in log.iter().filter(|(t, _)| *t >= window_start && *t < end) {
        times
            .entry(action)
            .or_default()
            .push((*t - window_start).as_secs_f64());
    }
    HubRun {
        costs: times.into_iter().map(|(a, t)| (a, cost(&t))).collect(),
        asks_per_second: asks as f64 / WINDOW.as_secs_f64(),
        slowest_answer: slowest,
        queued_at_window,
    }
}

/// One row of the table: a fleet size and a scenario, both designs.
struct Row {
    nodes: u32,
    scenario: Scenario,
    per_node: BTreeMap<&'static str, Cost>,
    hub: HubRun,
}

fn rate(c: &Cost) -> String {
    format!("{} / {:.2}", c.peak, c.sustained)
}

/// The Markdown table BENCHMARKS.md holds.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| nodes | scenario | per-node: DNI peak / sustained | per-node: DSG peak / sustained | \
         per-node: throttled | hub: DNI peak / sustained | hub: DSG peak / sustained | \
         hub: throttled | hub: agents' asks/s | hub: slowest new answer |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let none = Cost::default();
        let p = |a| r.per_node.get(a).unwrap_or(&none);
        let h = |a| r.hub.costs.get(a).unwrap_or(&none);
        let slowest = if r.hub.slowest_answer.is_zero() {
            "-".to_owned()
        } else {
            format!("{:.1} s", r.hub.slowest_answer.as_secs_f64())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |\n",
            r.nodes,
            r.scenario.name(),
            rate(p(DNI)),
            rate(p(DSG)),
            p(DNI).throttled + p(DSG).throttled,
            rate(h(DNI)),
            rate(h(DSG)),
            h(DNI).throttled + h(DSG).throttled,
            r.hub.asks_per_second,
            slowest,
        ));
    }
    out
}

fn simulate(nodes: u32, scenario: Scenario) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    Row {
        nodes,
        scenario,
        per_node: per_node(scenario, nodes),
        hub: rt.block_on(hub_run(scenario, nodes)),
    }
}

const BEGIN: &str = "<!-- fleet-simulation: begin (agent/src/hub/sim.rs) -->\n";
const END: &str = "<!-- fleet-simulation: end -->\n";

#[test]
fn simulated_fleet_matches_benchmarks() {
    // The eight runs on two threads (the machine's cores), the largest first.
    let runs: Vec<(u32, Scenario)> = [5000, 1000]
        .into_iter()
        .flat_map(|n| Scenario::ALL.map(|s| (n, s)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(&(n, sc)) =
                    runs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let row = simulate(n, sc);
                    done.lock().unwrap().push(row);
                }
            });
        }
    });
    let mut rows = done.into_inner().unwrap();
    rows.sort_by_key(|r| (r.nodes, Scenario::ALL.iter().position(|s| *s == r.scenario)));
    for r in &rows {
        assert_eq!(
            r.hub.queued_at_window,
            Some(0),
            "{}: warm-up too short",
            r.nodes
        );
    }
    for r in rows.iter().filter(|r| r.nodes == 5000) {
        for (action, c) in &r.hub.costs {
            assert!(
                c.sustained < 1.0 && c.throttled == 0,
                "{}: the hub's {action}: {c:?}",
                r.scenario.name()
            );
        }
        // Today's design empties the bucket at this size in every scenario.
        assert!(
            r.per_node.values().map(|c| c.throttled).sum::<u64>() > 0,
            "{}: {:?}",
            r.scenario.name(),
            r.per_node
        );
    }
    let table = table(&rows);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, rest) = text
        .split_once(BEGIN)
        .expect("BENCHMARKS.md: fleet-simulation markers");
    let (held, after) = rest
        .split_once(END)
        .expect("BENCHMARKS.md: fleet-simulation end");
    if std::env::var_os("SGPATH_WRITE_BENCHMARKS").is_some() {
        std::fs::write(&path, format!("{before}{BEGIN}{table}{END}{after}")).unwrap();
        return;
    }
    assert_eq!(
        held, table,
        "BENCHMARKS.md's fleet table is not what the simulation gives \
         (SGPATH_WRITE_BENCHMARKS=1 cargo test -p sgpath --lib simulated_fleet rewrites it)"
    );
}
