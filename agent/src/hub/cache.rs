//! What the hub knows of EC2, and what it still has to read: the answers for addresses
//! (the ENI owning each, or that none does), the groups' rules with their prefix lists
//! resolved, the VPCs' CIDR blocks, and the queue of addresses agents asked about that
//! have no answer yet. No I/O: [`Cache::ask`] answers an agent, [`Cache::due`] says what the
//! reader should read next, and the `apply_*` methods record what it read.
//!
//! Why agents' questions cost EC2 nothing per agent: every agent asking about an address
//! is answered from the same entry, and an address is read once per TTL (batched with
//! every other address queued at that moment), however many agents asked.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::time::Instant;

use crate::{
    collect::ec2::{self, NetworkInterface},
    model::sg::{Catalog, Rules, SecurityGroup},
};

/// Addresses asked about in one request, at most (a node has at most a few hundred pods,
/// and 32 unanswered far ends per path).
pub const MAX_ASKED: usize = 4096;

/// Addresses read in one round, at most (ten calls, the default burst): answers reach
/// the agents a round at a time, and a hub starting cold amid a large fleet reads at its
/// budget's pace instead of holding everything until the last batch.
pub const ROUND_ADDRESSES: usize = 1000;

/// The answer for one address.
#[derive(Debug)]
struct Answer {
    read: Instant,
    /// The ENI owning it, `None` when EC2 named none.
    eni: Option<Arc<NetworkInterface>>,
}

/// The hub's knowledge of EC2.
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    group_refresh: Duration,
    answers: BTreeMap<IpAddr, Answer>,
    /// The ENIs owning delegated prefixes, by prefix (rebuilt from `answers` each round).
    prefixes: BTreeMap<IpNet, Arc<NetworkInterface>>,
    /// The prefix lengths in `prefixes` (a /28 and an /80 under the VPC CNI).
    prefix_lengths: BTreeSet<u8>,
    /// When an agent last asked about each address: an expired answer is read again only
    /// when someone asked within the TTL; otherwise it is forgotten.
    asked: BTreeMap<IpAddr, Instant>,
    /// Asked, not answered yet: the next read's addresses.
    queue: BTreeSet<IpAddr>,
    groups: BTreeMap<String, SecurityGroup>,
    /// When the groups' rules were last read in full.
    groups_read: Option<Instant>,
    /// Groups an ENI carries that the last read of them did not return (deleted since):
    /// not asked again until the next full refresh.
    missing_groups: BTreeSet<String>,
    /// Prefix lists' CIDRs; `None` when EC2 refused to give them.
    prefix_lists: BTreeMap<String, Option<Vec<IpNet>>>,
    vpcs: BTreeMap<String, Vec<IpNet>>,
    /// Why the last read failed, until one succeeds.
    failure: Option<String>,
}

/// What the reader should read next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Addresses to look up (`DescribeNetworkInterfaces`).
    pub addresses: Vec<IpAddr>,
    /// Groups to read (`DescribeSecurityGroups`): never read, or all of them at a refresh.
    pub groups: Vec<String>,
    /// Whether this is the periodic refresh of every group (prefix lists and VPCs too).
    pub refresh: bool,
    /// VPCs whose CIDR blocks are unknown (`DescribeVpcs`).
    pub vpcs: Vec<String>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.groups.is_empty() && self.vpcs.is_empty()
    }
}

impl Cache {
    pub fn new(ttl: Duration, group_refresh: Duration) -> Cache {
        Cache {
            ttl,
            group_refresh,
            answers: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            prefix_lengths: BTreeSet::new(),
            asked: BTreeMap::new(),
            queue: BTreeSet::new(),
            groups: BTreeMap::new(),
            groups_read: None,
            missing_groups: BTreeSet::new(),
            prefix_lists: BTreeMap::new(),
            vpcs: BTreeMap::new(),
            failure: None,
        }
    }

    /// The VPCs' CIDR blocks known so far.
    fn vpc_cidrs(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.vpcs.values().flatten().copied().collect();
        v.sort();
        v.dedup();
        v
    }

    /// The ENI owning `addr` by a prefix delegated to it (prefix delegation: pods' addresses
    /// are not ENI private addresses EC2 can be asked about).
    /// An index lookup: one probe per prefix length in use (a /28 for IPv4, a /80 for IPv6
    /// under the VPC CNI), not a walk over every answer.
    fn by_prefix(&self, addr: IpAddr) -> Option<&Arc<NetworkInterface>> {
        // A length beyond the address's family fails to make a network and is skipped.
        self.prefix_lengths.iter().find_map(|&len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            self.prefixes.get(&net)
        })
    }

    fn index_prefixes(&mut self, eni: &Arc<NetworkInterface>) {
        for p in &eni.prefixes {
            self.prefixes.insert(p.trunc(), eni.clone());
            self.prefix_lengths.insert(p.prefix_len());
        }
    }

    /// Whether every group of `eni` has been read: until then its address is answered as
    /// unknown (a verdict over half its groups could call a flow denied that another of
    /// its groups admits).
    fn complete(&self, eni: &NetworkInterface) -> bool {
        eni.groups
            .iter()
            .all(|g| self.groups.contains_key(g) || self.missing_groups.contains(g))
    }

    /// Answers an agent asking about `addresses`: the catalog of those already read (their
    /// ENIs and every group those carry, the VPCs' CIDR blocks, the prefix lists' entries),
    /// and queues the others for the next read. An address not read yet is left out of the
    /// catalog, so [`Catalog::locate`] calls it unknown and no verdict about it is
    /// confirmed. While the last read failed, the answer is [`Rules::Unavailable`] with why.
    pub fn ask(&mut self, addresses: &BTreeSet<IpAddr>, now: Instant) -> Rules {
        let cidrs = self.vpc_cidrs();
        let mut catalog = Catalog {
            vpc_cidrs: cidrs.clone(),
            ..Catalog::default()
        };
        let mut enis: BTreeMap<String, Arc<NetworkInterface>> = BTreeMap::new();
        for &a in addresses.iter().take(MAX_ASKED) {
            // Outside every block of a known VPC: no ENI of the VPC has it.
            if !cidrs.is_empty() && !cidrs.iter().any(|c| c.contains(&a)) {
                continue;
            }
            self.asked.insert(a, now);
            let found = match self.answers.get(&a) {
                Some(Answer { eni: Some(e), .. }) => Some(e.clone()),
                Some(Answer { eni: None, .. }) => self.by_prefix(a).cloned(),
                None => match self.by_prefix(a) {
                    Some(e) => Some(e.clone()),
                    None => {
                        self.queue.insert(a);
                        continue;
                    }
                },
            };
            match found {
                Some(e) if self.complete(&e) => {
                    catalog.looked_up.insert(a);
                    enis.insert(e.id.clone(), e);
                }
                // Its groups are read next: unknown until then.
                Some(_) => {}
                None => {
                    catalog.looked_up.insert(a);
                }
            }
        }
        if let Some(reason) = &self.failure {
            return Rules::Unavailable {
                reason: reason.clone(),
            };
        }
        for e in enis.values() {
            let groups: Vec<&str> = e.groups.iter().map(String::as_str).collect();
            for a in &e.addresses {
                catalog.insert_eni(*a, e.id.clone(), &groups);
            }
            for p in &e.prefixes {
                catalog.insert_prefix(*p, e.id.clone(), &groups);
            }
            for g in &e.groups {
                if let Some(group) = self.groups.get(g) {
                    catalog.insert_group(group.clone());
                }
            }
        }
        let mut named = ec2::prefix_list_ids(&catalog.groups.values().cloned().collect::<Vec<_>>());
        named.retain(|id| !matches!(self.prefix_lists.get(id), Some(Some(_))));
        catalog.unread_prefix_lists.extend(named);
        Rules::Fresh { catalog }
    }

    /// What to read now, at most [`ROUND_ADDRESSES`] addresses: the queued ones first, then
    /// the expired answers someone still asks about (one address per ENI: reading it
    /// refreshes every address of that ENI), forgetting the others; the groups never read
    /// (or all at a refresh), the VPCs whose blocks are unknown.
    pub fn due(&mut self, now: Instant) -> Work {
        let ttl = self.ttl;
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < ttl);
        let asked = &self.asked;
        let mut expired = Vec::new();
        let mut refreshed_enis = BTreeSet::new();
        self.answers.retain(|a, ans| {
            if now.saturating_duration_since(ans.read) < ttl {
                return true;
            }
            if !asked.contains_key(a) {
                return false;
            }
            let first_of_eni = ans
                .eni
                .as_ref()
                .is_none_or(|e| refreshed_enis.insert(Arc::as_ptr(e)));
            if first_of_eni {
                expired.push(*a);
            }
            true
        });
        // One pass over the answers (a node's ENI appears once per address it holds):
        // the prefix index, the groups carried, the VPCs.
        let mut prefixes = BTreeMap::new();
        let mut carried: BTreeSet<&str> = BTreeSet::new();
        let mut vpcs: BTreeSet<&str> = BTreeSet::new();
        for e in self.answers.values().filter_map(|a| a.eni.as_ref()) {
            for p in &e.prefixes {
                prefixes.insert(p.trunc(), e.clone());
            }
            carried.extend(e.groups.iter().map(String::as_str));
            vpcs.extend(e.vpc_id.as_deref());
        }
        let carried: Vec<String> = carried.into_iter().map(str::to_owned).collect();
        let vpcs: Vec<String> = vpcs
            .into_iter()
            .filter(|v| !self.vpcs.contains_key(*v))
            .map(str::to_owned)
            .collect();
        self.prefix_lengths = prefixes.keys().map(IpNet::prefix_len).collect();
        self.prefixes = prefixes;
        let mut addresses: Vec<IpAddr> = Vec::new();
        while addresses.len() < ROUND_ADDRESSES {
            let Some(a) = self.queue.pop_first() else {
                break;
            };
            // Answered since it was queued (its ENI was read for another address).
            if self
                .answers
                .get(&a)
                .is_some_and(|ans| now.saturating_duration_since(ans.read) < ttl)
            {
                continue;
            }
            addresses.push(a);
        }
        let room = ROUND_ADDRESSES - addresses.len();
        let taken: BTreeSet<IpAddr> = addresses.iter().copied().collect();
        addresses.extend(
            expired
                .into_iter()
                .filter(|a| !taken.contains(a))
                .take(room),
        );
        let refresh = self
            .groups_read
            .is_none_or(|at| now.saturating_duration_since(at) >= self.group_refresh);
        let groups: Vec<String> = if refresh && !carried.is_empty() {
            carried
        } else {
            carried
                .into_iter()
                .filter(|g| !self.groups.contains_key(g) && !self.missing_groups.contains(g))
                .collect()
        };
        Work {
            addresses,
            refresh: refresh && !groups.is_empty(),
            groups,
            vpcs,
        }
    }

    /// Puts addresses whose read failed back in the queue.
    pub fn requeue(&mut self, addresses: &[IpAddr]) {
        self.queue.extend(addresses);
    }

    /// Records `DescribeNetworkInterfaces`' answer for `asked`: each asked address gets
    /// the ENI holding it, or none; so does every other address of each ENI read (a node's
    /// ENI answers for all its pods at once).
    pub fn apply_enis(&mut self, asked: &[IpAddr], enis: Vec<NetworkInterface>, now: Instant) {
        for a in asked {
            self.answers.insert(
                *a,
                Answer {
                    read: now,
                    eni: None,
                },
            );
        }
        for e in enis {
            let e = Arc::new(e);
            for a in &e.addresses {
                self.answers.insert(
                    *a,
                    Answer {
                        read: now,
                        eni: Some(e.clone()),
                    },
                );
            }
            self.index_prefixes(&e);
        }
    }

    /// Records the groups read for `asked` (their prefix lists' CIDRs already resolved
    /// where known); an asked group EC2 did not return no longer exists.
    pub fn apply_groups(
        &mut self,
        asked: &[String],
        groups: Vec<SecurityGroup>,
        now: Instant,
        refresh: bool,
    ) {
        let got: BTreeSet<String> = groups.iter().map(|g| g.id.clone()).collect();
        for id in asked {
            if !got.contains(id) {
                self.groups.remove(id);
                self.missing_groups.insert(id.clone());
            }
        }
        for g in groups {
            self.missing_groups.remove(&g.id);
            self.groups.insert(g.id.clone(), g);
        }
        if refresh || self.groups_read.is_none() {
            self.groups_read = Some(now);
        }
    }

    /// The prefix lists named by `groups` whose entries are not known (or all of them at a
    /// refresh).
    pub fn prefix_lists_due(&self, groups: &[SecurityGroup], refresh: bool) -> Vec<String> {
        ec2::prefix_list_ids(groups)
            .into_iter()
            .filter(|id| refresh || !self.prefix_lists.contains_key(id))
            .collect()
    }

    /// Records a prefix list's entries, or `None` when EC2 refused them.
    pub fn apply_prefix_list(&mut self, id: String, cidrs: Option<Vec<IpNet>>) {
        self.prefix_lists.insert(id, cidrs);
    }

    /// The known entries of every prefix list (for [`ec2::resolve_prefix_lists`]).
    pub fn prefix_list_entries(&self) -> BTreeMap<String, Vec<IpNet>> {
        self.prefix_lists
            .iter()
            .filter_map(|(id, c)| Some((id.clone(), c.clone()?)))
            .collect()
    }

    pub fn apply_vpcs(&mut self, vpcs: Vec<ec2::Vpc>) {
        for v in vpcs {
            self.vpcs.insert(v.id, v.cidrs);
        }
    }

    /// A read failed: agents are told why until one succeeds.
    pub fn fail(&mut self, reason: String) {
        self.failure = Some(reason);
    }

    /// A read succeeded; `true` when it ends a failure.
    pub fn succeed(&mut self) -> bool {
        self.failure.take().is_some()
    }

    /// (answers cached, addresses queued, groups known) for the metrics.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.answers.len(), self.queue.len(), self.groups.len())
    }

    /// Whether anything waits to be read.
    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sg::{Flow, Locus, Peer, Ports, Protocol, SgRule, Verdict};

    const TTL: Duration = Duration::from_secs(300);
    const REFRESH: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn eni(id: &str, addr: &str, groups: &[&str]) -> NetworkInterface {
        NetworkInterface {
            id: id.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            addresses: vec![ip(addr)],
            prefixes: Vec::new(),
            vpc_id: Some("vpc-1".into()),
        }
    }

    fn pod_group() -> SecurityGroup {
        let mut g = SecurityGroup::new("sg-pod");
        g.ingress.push(SgRule::new(
            Protocol::Tcp,
            Ports::port(80),
            Peer::Cidr {
                cidr: "0.0.0.0/0".parse().unwrap(),
            },
        ));
        g
    }

    fn fresh(r: Rules) -> Catalog {
        match r {
            Rules::Fresh { catalog } => catalog,
            r => panic!("not fresh: {r:?}"),
        }
    }

    /// The first ask queues and answers unknown (never a confirmed verdict); one read
    /// answers it; every later ask, from any number of agents, is served from the cache
    /// and queues nothing.
    #[tokio::test(start_paused = true)]
    async fn unknown_addresses_are_queued_once_and_answered_from_the_cache() {
        let mut c = Cache::new(TTL, REFRESH);
        let (pod, node, bastion) = (ip("192.168.3.219"), ip("192.168.1.10"), ip("10.0.1.10"));
        let asked: BTreeSet<IpAddr> = [pod, node, bastion].into();
        let now = Instant::now();
        let cat = fresh(c.ask(&asked, now));
        assert_eq!(cat.locate(pod), Locus::Unknown);
        let v = cat.judge(&Flow::tcp(bastion, pod, 8080));
        assert!(
            !matches!(&v, Verdict::Denied(m) if m.is_confirmed()),
            "an address not read yet gave a confirmed denial: {v:?}"
        );
        // A thousand agents asking the same before the read: still one queue entry each.
        for _ in 0..1000 {
            c.ask(&asked, now);
        }
        let work = c.due(now);
        assert_eq!(work.addresses, [ip("10.0.1.10"), node, pod]);
        assert!(work.groups.is_empty() && work.vpcs.is_empty());
        c.apply_enis(
            &work.addresses,
            vec![
                eni("eni-b", "192.168.3.219", &["sg-pod"]),
                eni("eni-n", "192.168.1.10", &["sg-node"]),
            ],
            now,
        );
        // The ENIs' groups and VPC are due next; until their groups are read, unknown.
        assert_eq!(fresh(c.ask(&asked, now)).locate(pod), Locus::Unknown);
        let work = c.due(now);
        assert!(work.addresses.is_empty());
        assert_eq!(work.groups, ["sg-node", "sg-pod"]);
        assert_eq!(work.vpcs, ["vpc-1"]);
        c.apply_groups(
            &work.groups,
            vec![pod_group(), SecurityGroup::new("sg-node")],
            now,
            work.refresh,
        );
        c.apply_vpcs(vec![ec2::Vpc {
            id: "vpc-1".into(),
            cidrs: vec!["192.168.0.0/16".parse().unwrap()],
        }]);
        let cat = fresh(c.ask(&asked, now));
        assert!(matches!(cat.locate(pod), Locus::Eni(e) if e.groups == ["sg-pod"]));
        assert_eq!(cat.locate(bastion), Locus::OutsideVpc);
        assert!(cat.judge(&Flow::tcp(bastion, pod, 80)).is_allowed());
        let Verdict::Denied(m) = cat.judge(&Flow::tcp(bastion, pod, 8080)) else {
            panic!("8080 admitted")
        };
        assert!(m.is_confirmed());
        assert_eq!(cat.groups.keys().collect::<Vec<_>>(), ["sg-node", "sg-pod"]);
        // Nothing left to read, however often asked, until the group refresh.
        for _ in 0..1000 {
            c.ask(&asked, now);
        }
        assert!(c.due(now + Duration::from_secs(1)).is_empty());
    }

    /// Expired answers are read again only while agents still ask about them; the groups
    /// are refreshed every `group_refresh`; an address nobody asked about for a TTL goes.
    #[tokio::test(start_paused = true)]
    async fn answers_expire_and_refresh_only_while_asked() {
        let mut c = Cache::new(TTL, REFRESH);
        let (a, b) = (ip("192.168.3.219"), ip("192.168.9.9"));
        let t0 = Instant::now();
        c.ask(&[a, b].into(), t0);
        let w = c.due(t0);
        c.apply_enis(
            &w.addresses,
            vec![eni("eni-b", "192.168.3.219", &["sg-pod"])],
            t0,
        );
        let w = c.due(t0);
        c.apply_groups(&w.groups, vec![pod_group()], t0, w.refresh);
        assert_eq!(
            fresh(c.ask(&[b].into(), t0)).locate(b),
            Locus::Unknown,
            "VPC unknown yet"
        );
        // At the group refresh: every group again, no address.
        let w = c.due(t0 + REFRESH);
        assert!(
            w.refresh && w.groups == ["sg-pod"] && w.addresses.is_empty(),
            "{w:?}"
        );
        c.apply_groups(&w.groups, vec![pod_group()], t0 + REFRESH, true);
        // Past the TTL: `a` was asked within it (at t0 + 200 s), `b` was not.
        c.ask(&[a].into(), t0 + Duration::from_secs(200));
        let w = c.due(t0 + TTL);
        assert_eq!(w.addresses, [a]);
        assert_eq!(c.sizes().0, 1, "b forgotten");
    }

    /// A group deleted behind an ENI's back costs that group: the ENI is answered with the
    /// groups that exist, and the missing one is not asked again until the next refresh.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_group_is_not_asked_again_until_the_refresh() {
        let mut c = Cache::new(TTL, REFRESH);
        let a = ip("192.168.3.219");
        let t0 = Instant::now();
        c.ask(&[a].into(), t0);
        let w = c.due(t0);
        c.apply_enis(
            &w.addresses,
            vec![eni("eni-b", "192.168.3.219", &["sg-gone", "sg-pod"])],
            t0,
        );
        let w = c.due(t0);
        c.apply_groups(&w.groups, vec![pod_group()], t0, w.refresh);
        assert!(c.due(t0 + Duration::from_secs(1)).groups.is_empty());
        let cat = fresh(c.ask(&[a].into(), t0));
        assert!(matches!(cat.locate(a), Locus::Eni(_)));
        assert_eq!(c.due(t0 + REFRESH).groups, ["sg-gone", "sg-pod"]);
    }

    /// A failed read is every agent's `ec2-unavailable` until a read succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_failed_read_is_unavailable_until_one_succeeds() {
        let mut c = Cache::new(TTL, REFRESH);
        c.fail("EC2 DescribeNetworkInterfaces: UnauthorizedOperation: no".into());
        let r = c.ask(&[ip("192.168.3.219")].into(), Instant::now());
        assert!(
            matches!(&r, Rules::Unavailable { reason } if reason.contains("UnauthorizedOperation"))
        );
        assert!(c.succeed());
        assert!(
            fresh(c.ask(&BTreeSet::new(), Instant::now()))
                .groups
                .is_empty()
        );
    }

    /// A node's ENI answers for every address it holds, and its answers expire together:
    /// one address of the ENI is read again, not each. A round reads at most
    /// [`ROUND_ADDRESSES`]; the rest stay queued.
    #[tokio::test(start_paused = true)]
    async fn an_eni_is_read_once_for_all_its_addresses_and_rounds_are_bounded() {
        let mut c = Cache::new(TTL, REFRESH);
        let pods: Vec<IpAddr> = (10..13).map(|i| ip(&format!("192.168.1.{i}"))).collect();
        let now = Instant::now();
        c.ask(&pods.iter().copied().collect(), now);
        let work = c.due(now);
        assert_eq!(work.addresses, pods);
        let mut node = eni("eni-node", "192.168.1.10", &["sg-node"]);
        node.addresses.clone_from(&pods);
        c.apply_enis(&pods[..1], vec![node], now);
        assert!(c.due(now).addresses.is_empty());
        let later = now + TTL;
        c.ask(
            &pods.iter().copied().collect(),
            later - Duration::from_secs(1),
        );
        assert_eq!(c.due(later).addresses.len(), 1, "one address per ENI");

        let many: BTreeSet<IpAddr> = (0..2500u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        c.ask(&many, later);
        assert_eq!(c.due(later).addresses.len(), ROUND_ADDRESSES);
        assert!(c.has_queue());
    }

    /// Prefix delegation: a pod's address inside a /28 (or /80) delegated to a known ENI is
    /// answered by that ENI without a read, in either family, and not by a prefix of the
    /// other family.
    #[tokio::test(start_paused = true)]
    async fn addresses_in_a_delegated_prefix_are_answered_by_its_eni() {
        let mut c = Cache::new(TTL, REFRESH);
        let now = Instant::now();
        let node = ip("192.168.1.10");
        c.ask(&[node].into(), now);
        c.due(now);
        let mut e = eni("eni-node", "192.168.1.10", &["sg-node"]);
        e.prefixes = vec![
            "192.168.5.16/28".parse().unwrap(),
            "2600:1f14::1:0:0:0/80".parse().unwrap(),
        ];
        c.apply_enis(&[node], vec![e], now);
        c.apply_groups(
            &["sg-node".into()],
            vec![SecurityGroup::new("sg-node")],
            now,
            true,
        );
        let (pod4, pod6, outside) = (
            ip("192.168.5.20"),
            ip("2600:1f14::1:0:0:7"),
            ip("192.168.5.40"),
        );
        let cat = fresh(c.ask(&[pod4, pod6, outside].into(), now));
        assert_ne!(cat.locate(pod4), Locus::Unknown);
        assert_ne!(cat.locate(pod6), Locus::Unknown);
        assert_eq!(cat.locate(outside), Locus::Unknown);
        assert_eq!(
            c.due(now).addresses,
            vec![outside],
            "only the outsider is read"
        );
    }
}
