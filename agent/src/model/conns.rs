//! Unanswered connections: what the sweep of the probes' connection map makes of it. The
//! probes record each SYN and DNS query that leaves a path and mark it when its answer
//! comes; [`ConnTracker::sweep`] turns entries into counts, once per connection, and says
//! which entries the map can forget. Pure logic over the raw entries, unit-tested.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use serde::Serialize;
use sgpath_ebpf::{
    ConnState, NO_PATH,
    packet::{Answer, ConnKey, ConnKind, Direction, PodAddr},
};

use super::{DirectionCounters, PathCounters, Port, add_port};

/// How many unanswered (source, destination, port) a direction tracks: the evidence of
/// findings, which the security groups' rules confirm flow by flow. They are the flows of
/// the window: one not seen within it drops out, and when more than these are seen the
/// most frequent stay, then the most recent, so a week-old agent has as current evidence
/// as a new one. All flows still count by port: a port scan leaves memory flat.
pub const TOP_UNANSWERED: usize = 32;

/// A flow's unanswered connections are counted in buckets of this fraction of the window,
/// the cadence of the agent's snapshots and re-checks.
const BUCKETS_PER_WINDOW: u64 = 10;

/// How long an unanswered entry stays after its latest retransmit, so that the next one
/// (Linux backs off 1, 2, 4, 8, 16 s) finds it and is not a new connection.
pub const UNANSWERED_LINGER: Duration = Duration::from_secs(35);

/// A kind of tracked connection, as reports name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conn {
    /// A TCP connection (SYN), any port but 53.
    Syn,
    /// A DNS query over UDP or TCP.
    Dns,
}

/// Unanswered connections between two addresses to one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unanswered {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
    pub kind: Conn,
    pub count: u64,
}

impl Unanswered {
    /// Whether `other` is the same flow (any count).
    pub fn same_flow(&self, other: &Unanswered) -> bool {
        (self.source, self.destination, self.port, self.kind)
            == (other.source, other.destination, other.port, other.kind)
    }
}

/// What one direction of a path counted of its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tally {
    syn_answered: BTreeMap<Port, u64>,
    syn_refused: BTreeMap<Port, u64>,
    syn_unanswered: BTreeMap<Port, u64>,
    syn_in: BTreeMap<Port, u64>,
    dns_answered: u64,
    dns_refused: u64,
    dns_unanswered: u64,
    /// At most [`TOP_UNANSWERED`] flows, those of the window.
    unanswered: BTreeMap<Flow, FlowCounts>,
}

/// (source, destination, port, kind) of an unanswered connection.
type Flow = (IpAddr, IpAddr, u16, Conn);

/// One flow's unanswered connections: (bucket, connections) oldest first, the buckets of
/// the window only (see [`ConnTracker::bucket`]); and when it was last counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FlowCounts {
    buckets: VecDeque<(u64, u64)>,
    last: Duration,
}

impl FlowCounts {
    fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }
}

impl Tally {
    /// Counts one unanswered connection of `flow` at `now` (in `bucket`); a new flow takes
    /// the place of the least frequent, least recent one when [`TOP_UNANSWERED`] are held.
    fn unanswered(&mut self, flow: Flow, bucket: u64, now: Duration) {
        if !self.unanswered.contains_key(&flow) && self.unanswered.len() >= TOP_UNANSWERED {
            let least = self
                .unanswered
                .iter()
                .min_by_key(|(_, c)| (c.count(), c.last))
                .map(|(f, _)| *f);
            if let Some(least) = least {
                self.unanswered.remove(&least);
            }
        }
        let c = self.unanswered.entry(flow).or_default();
        c.last = now;
        match c.buckets.back_mut() {
            Some((b, n)) if *b == bucket => *n += 1,
            _ => c.buckets.push_back((bucket, 1)),
        }
    }

    /// Forgets the buckets before `oldest`, and the flows left with none.
    fn expire(&mut self, oldest: u64) {
        self.unanswered.retain(|_, c| {
            while c.buckets.front().is_some_and(|&(b, _)| b < oldest) {
                c.buckets.pop_front();
            }
            !c.buckets.is_empty()
        });
    }
}

/// What has been counted of one entry.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    request: bool,
    syn_in: bool,
}

/// Counts connections from the probes' map, each once, across sweeps.
#[derive(Debug)]
pub struct ConnTracker {
    timeout: Duration,
    /// The span the unanswered flows are kept for (`--window`); `None`: all along.
    window: Option<Duration>,
    counted: HashMap<ConnKey, Counted>,
    /// (path id, to the pod?) -> tally.
    tallies: BTreeMap<(u32, bool), Tally>,
}

impl ConnTracker {
    /// `timeout`: how long a request waits for its answer (`--syn-timeout`).
    pub fn new(timeout: Duration) -> ConnTracker {
        ConnTracker {
            timeout,
            window: None,
            counted: HashMap::new(),
            tallies: BTreeMap::new(),
        }
    }

    /// Keeps the unanswered flows of the last `window` only (the agent's `--window`): a
    /// flow drops out once not seen for a window, at most a tenth of one later.
    pub fn within(mut self, window: Duration) -> ConnTracker {
        self.window = Some(window);
        self
    }

    /// The bucket of the unanswered flows `now` counts in: a tenth of the window; one
    /// bucket for all without a window.
    fn bucket(&self, now: Duration) -> u64 {
        let width = self
            .window
            .map_or(0, |w| w.as_nanos() / u128::from(BUCKETS_PER_WINDOW));
        match now.as_nanos().checked_div(width) {
            Some(b) => b as u64,
            None => 0,
        }
    }

    /// Counts what `entries` (the map's content at `now`, same clock as
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC) newly say, and returns the keys to delete:
    /// answered or unknown entries once idle for the timeout, unanswered ones once idle for
    /// [`UNANSWERED_LINGER`].
    pub fn sweep(&mut self, entries: &[(ConnKey, ConnState)], now: Duration) -> Vec<ConnKey> {
        let mut forget = Vec::new();
        let bucket = self.bucket(now);
        for (key, st) in entries {
            let c = self.counted.entry(*key).or_default();
            let first = Duration::from_nanos(st.first_ns);
            let last = Duration::from_nanos(st.last_ns);
            let kind = match ConnKind::try_from(st.kind) {
                Ok(ConnKind::Dns) => Conn::Dns,
                _ => Conn::Syn,
            };
            if st.in_path != NO_PATH && !c.syn_in {
                c.syn_in = true;
                let t = self.tallies.entry((st.in_path, true)).or_default();
                add_port(&mut t.syn_in, key.server_port, 1);
            }
            let answer = Answer::from(st.answered);
            let waited = now.saturating_sub(first) >= self.timeout;
            if st.path != NO_PATH && !c.request && (answer != Answer::None || waited) {
                c.request = true;
                let to_pod = Direction::try_from(st.direction) == Ok(Direction::ToPod);
                let t = self.tallies.entry((st.path, to_pod)).or_default();
                let port = key.server_port;
                match (kind, answer) {
                    (Conn::Syn, Answer::Accepted) => add_port(&mut t.syn_answered, port, 1),
                    (Conn::Syn, Answer::Refused) => add_port(&mut t.syn_refused, port, 1),
                    (Conn::Syn, Answer::None) => add_port(&mut t.syn_unanswered, port, 1),
                    (Conn::Dns, Answer::Accepted) => t.dns_answered += 1,
                    (Conn::Dns, Answer::Refused) => t.dns_refused += 1,
                    (Conn::Dns, Answer::None) => t.dns_unanswered += 1,
                }
                if answer == Answer::None {
                    t.unanswered((ip(&key.client), ip(&key.server), port, kind), bucket, now);
                }
            }
            let pending = st.path != NO_PATH && !c.request;
            let linger = if st.path != NO_PATH && answer == Answer::None {
                UNANSWERED_LINGER.max(self.timeout)
            } else {
                self.timeout
            };
            if !pending && now.saturating_sub(last) >= linger {
                forget.push(*key);
            }
        }
        for k in &forget {
            self.counted.remove(k);
        }
        // The window's buckets: this one and the tenths before it, so a flow stays at
        // least one window after it was last seen.
        if self.window.is_some() {
            let oldest = bucket.saturating_sub(BUCKETS_PER_WINDOW);
            for t in self.tallies.values_mut() {
                t.expire(oldest);
            }
        }
        forget
    }

    /// Adds what was counted for path `id` to its counters.
    pub fn apply(&self, id: u32, counters: &mut PathCounters) {
        for (to_pod, dir) in [
            (true, &mut counters.to_pod),
            (false, &mut counters.from_pod),
        ] {
            if let Some(t) = self.tallies.get(&(id, to_pod)) {
                fill(dir, t);
            }
        }
    }

    /// Forgets what was counted for path `id` (its id goes to another path), and the
    /// connections `keys` of its pod, which the caller deleted from the map.
    pub fn forget_path(&mut self, id: u32, keys: &[ConnKey]) {
        self.tallies.retain(|&(path, _), _| path != id);
        for k in keys {
            self.counted.remove(k);
        }
    }

    /// Entries waiting for an answer or lingering.
    pub fn tracked(&self) -> usize {
        self.counted.len()
    }
}

fn fill(dir: &mut DirectionCounters, t: &Tally) {
    dir.syn_answered = t.syn_answered.clone();
    dir.syn_refused = t.syn_refused.clone();
    dir.syn_unanswered = t.syn_unanswered.clone();
    dir.syn_in = t.syn_in.clone();
    dir.dns_answered = t.dns_answered;
    dir.dns_refused = t.dns_refused;
    dir.dns_unanswered = t.dns_unanswered;
    // The most frequent first, then the most recent.
    let mut top: Vec<_> = t
        .unanswered
        .iter()
        .map(|(f, c)| (c.count(), c.last, f))
        .collect();
    top.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(b.2)));
    dir.unanswered = top
        .into_iter()
        .map(
            |(count, _, &(source, destination, port, kind))| Unanswered {
                source,
                destination,
                port,
                kind,
                count,
            },
        )
        .collect();
}

/// The probes' address form back to an `IpAddr` (IPv4-mapped to IPv4).
pub fn ip(a: &PodAddr) -> IpAddr {
    let v6 = Ipv6Addr::from(a.octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The probes' address form of an `IpAddr`.
pub fn pod_addr(ip: IpAddr) -> PodAddr {
    match ip {
        IpAddr::V4(v4) => PodAddr::v4(v4.octets()),
        IpAddr::V6(v6) => PodAddr {
            octets: v6.octets(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(client: [u8; 4], server: [u8; 4], port: u16) -> ConnKey {
        ConnKey {
            client: PodAddr::v4(client),
            server: PodAddr::v4(server),
            client_port: 40000,
            server_port: port,
            proto: 6,
            _pad: [0; 3],
        }
    }

    fn state(path: u32, dir: Direction, kind: ConnKind, first: u64, last: u64) -> ConnState {
        ConnState {
            path,
            in_path: NO_PATH,
            kind: kind as u8,
            direction: dir as u8,
            answered: 0,
            _pad: [0; 5],
            first_ns: first * S,
            last_ns: last * S,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_unanswered_syn_counts_once_after_the_timeout_whatever_its_retransmits() {
        let mut t = ConnTracker::new(secs(3));
        let k = key([192, 168, 3, 219], [10, 0, 1, 10], 8080);
        let mut st = state(0, Direction::FromPod, ConnKind::Syn, 100, 100);
        // Before the timeout: pending, nothing counted, nothing forgotten.
        assert!(t.sweep(&[(k, st)], secs(102)).is_empty());
        // After it: one unanswered; the entry stays for the retransmits.
        assert!(t.sweep(&[(k, st)], secs(103)).is_empty());
        st.last_ns = 107 * S; // retransmits at 101, 103, 107
        assert!(t.sweep(&[(k, st)], secs(110)).is_empty());
        let mut c = PathCounters::default();
        t.apply(0, &mut c);
        assert_eq!(
            c.from_pod.syn_unanswered,
            BTreeMap::from([(8080.into(), 1)])
        );
        assert_eq!(c.from_pod.syn_answered, BTreeMap::new());
        assert_eq!(
            c.from_pod.unanswered,
            [Unanswered {
                source: "192.168.3.219".parse().unwrap(),
                destination: "10.0.1.10".parse().unwrap(),
                port: 8080,
                kind: Conn::Syn,
                count: 1
            }]
        );
        // Forgotten once idle for the linger time, and then not counted again.
        assert_eq!(t.sweep(&[(k, st)], secs(107 + 35)), [k]);
        t.apply(0, &mut c);
        assert_eq!(c.from_pod.syn_unanswered[&8080.into()], 1);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn answered_requests_count_at_once_per_kind_and_direction() {
        let mut t = ConnTracker::new(secs(3));
        let pod = [192, 168, 3, 219];
        let node = [192, 168, 1, 10];
        let mut probe = state(4, Direction::ToPod, ConnKind::Syn, 10, 10);
        probe.answered = Answer::Accepted as u8;
        probe.in_path = 4;
        let mut dns = state(4, Direction::FromPod, ConnKind::Dns, 10, 10);
        let lost_dns = state(4, Direction::FromPod, ConnKind::Dns, 10, 10);
        dns.answered = Answer::Accepted as u8;
        let entries = [
            (key(node, pod, 80), probe),
            (key(pod, [192, 168, 7, 31], 53), dns),
            (key(pod, [192, 168, 7, 32], 53), lost_dns),
        ];
        assert!(t.sweep(&entries, secs(11)).is_empty());
        // Answered entries go once idle for the timeout; the lost query waits longer.
        let gone = t.sweep(&entries, secs(13));
        assert_eq!(gone.len(), 2);
        let mut c = PathCounters::default();
        t.apply(4, &mut c);
        assert_eq!(c.to_pod.syn_answered, BTreeMap::from([(80.into(), 1)]));
        assert_eq!(c.to_pod.syn_in, BTreeMap::from([(80.into(), 1)]));
        assert_eq!((c.from_pod.dns_answered, c.from_pod.dns_unanswered), (1, 1));
        assert!(c.from_pod.syn_unanswered.is_empty());
        // Another path's counters are untouched.
        let mut other = PathCounters::default();
        t.apply(5, &mut other);
        assert_eq!(other, PathCounters::default());
    }

    #[test]
    fn a_syn_handed_in_counts_once_with_no_request_path() {
        let mut t = ConnTracker::new(secs(3));
        let mut st = state(NO_PATH, Direction::ToPod, ConnKind::Syn, 10, 10);
        st.in_path = 2;
        let k = key([10, 0, 1, 10], [192, 168, 7, 31], 80);
        t.sweep(&[(k, st)], secs(10));
        st.last_ns = 11 * S; // a retransmit
        t.sweep(&[(k, st)], secs(12));
        assert_eq!(t.sweep(&[(k, st)], secs(14)), [k]);
        let mut c = PathCounters::default();
        t.apply(2, &mut c);
        assert_eq!(c.to_pod.syn_in, BTreeMap::from([(80.into(), 1)]));
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["192.168.3.219", "2001:db8::1"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(super::ip(&pod_addr(ip)), ip);
        }
    }

    #[test]
    fn a_refused_syn_is_neither_answered_nor_unanswered() {
        let mut t = ConnTracker::new(secs(3));
        let mut st = state(1, Direction::FromPod, ConnKind::Syn, 10, 10);
        st.answered = Answer::Refused as u8;
        let mut dns = state(1, Direction::FromPod, ConnKind::Dns, 10, 10);
        dns.answered = Answer::Refused as u8;
        let entries = [
            (key([192, 168, 3, 219], [10, 0, 1, 10], 8081), st),
            (key([192, 168, 3, 219], [10, 0, 1, 10], 53), dns),
        ];
        t.sweep(&entries, secs(10));
        let mut c = PathCounters::default();
        t.apply(1, &mut c);
        assert_eq!(c.from_pod.syn_refused, BTreeMap::from([(8081.into(), 1)]));
        assert!(c.from_pod.syn_unanswered.is_empty() && c.from_pod.syn_answered.is_empty());
        assert!(c.from_pod.unanswered.is_empty());
        assert_eq!((c.from_pod.dns_refused, c.from_pod.dns_unanswered), (1, 0));
    }

    #[test]
    fn a_port_scan_keeps_the_tallies_bounded() {
        let mut t = ConnTracker::new(secs(3));
        let entries: Vec<_> = (1..=1000u16)
            .map(|port| {
                let st = state(2, Direction::FromPod, ConnKind::Syn, 10, 10);
                (key([192, 168, 3, 219], [10, 0, 1, 10], port), st)
            })
            .collect();
        t.sweep(&entries, secs(20));
        let mut c = PathCounters::default();
        t.apply(2, &mut c);
        assert_eq!(c.from_pod.syn_unanswered.len(), crate::model::MAX_PORTS + 1);
        assert_eq!(c.from_pod.syn_unanswered.values().sum::<u64>(), 1000);
        assert_eq!(c.from_pod.unanswered.len(), TOP_UNANSWERED);
        // Forgotten with the path: nothing lingers for the id's next owner.
        let keys: Vec<ConnKey> = entries.iter().map(|(k, _)| *k).collect();
        t.forget_path(2, &keys);
        assert_eq!(t.tracked(), 0);
        let mut fresh = PathCounters::default();
        t.apply(2, &mut fresh);
        assert_eq!(fresh, PathCounters::default());
    }

    /// One unanswered SYN from 192.168.3.219 (client port `client_port`) to `server`:8080
    /// on path 1, started at `at` s: counted by a sweep `timeout` later.
    fn lost(server: [u8; 4], client_port: u16, at: u64) -> (ConnKey, ConnState) {
        let k = ConnKey {
            client_port,
            ..key([192, 168, 3, 219], server, 8080)
        };
        (k, state(1, Direction::FromPod, ConnKind::Syn, at, at))
    }

    fn flows(t: &ConnTracker) -> Vec<(IpAddr, u64)> {
        let mut c = PathCounters::default();
        t.apply(1, &mut c);
        c.from_pod
            .unanswered
            .iter()
            .map(|u| (u.destination, u.count))
            .collect()
    }

    #[test]
    fn past_32_flows_the_most_frequent_then_the_most_recent_stay() {
        let mut t = ConnTracker::new(secs(3)).within(secs(600));
        // 10.0.0.1 three times, 10.0.0.2 twice, then 40 flows once each, one a second.
        let repeated = [
            lost([10, 0, 0, 1], 40001, 10),
            lost([10, 0, 0, 1], 40002, 10),
            lost([10, 0, 0, 1], 40003, 10),
            lost([10, 0, 0, 2], 40004, 10),
            lost([10, 0, 0, 2], 40005, 10),
        ];
        t.sweep(&repeated, secs(13));
        for i in 0..40u8 {
            let at = 20 + u64::from(i);
            t.sweep(&[lost([10, 0, 1, i], 41000, at)], secs(at + 3));
        }
        let top = flows(&t);
        assert_eq!(top.len(), TOP_UNANSWERED);
        assert_eq!(top[0], ("10.0.0.1".parse().unwrap(), 3));
        assert_eq!(top[1], ("10.0.0.2".parse().unwrap(), 2));
        // Of the flows seen once, the 30 latest, the latest first: 10.0.1.39 down to .10.
        assert_eq!(top[2], ("10.0.1.39".parse().unwrap(), 1));
        assert_eq!(top[31], ("10.0.1.10".parse().unwrap(), 1));
        assert!(
            !top.iter()
                .any(|(d, _)| *d == "10.0.1.9".parse::<IpAddr>().unwrap())
        );
        // Every connection still counts by port.
        let mut c = PathCounters::default();
        t.apply(1, &mut c);
        assert_eq!(
            c.from_pod.syn_unanswered,
            BTreeMap::from([(8080.into(), 45)])
        );
    }

    #[test]
    fn a_flow_unseen_for_a_window_drops_out_and_comes_back_counted_anew() {
        let mut t = ConnTracker::new(secs(3)).within(secs(100));
        t.sweep(
            &[
                lost([10, 0, 0, 1], 40001, 10),
                lost([10, 0, 0, 1], 40002, 10),
            ],
            secs(13),
        );
        assert_eq!(flows(&t), [("10.0.0.1".parse().unwrap(), 2)]);
        // Kept at least a window after it was last counted (at 13 s), at most a tenth more.
        t.sweep(&[], secs(113));
        assert_eq!(flows(&t), [("10.0.0.1".parse().unwrap(), 2)]);
        t.sweep(&[], secs(120));
        assert_eq!(flows(&t), []);
        // Back: its count is the new window's, not added to the old one.
        t.sweep(&[lost([10, 0, 0, 1], 40003, 200)], secs(203));
        assert_eq!(flows(&t), [("10.0.0.1".parse().unwrap(), 1)]);
    }

    #[test]
    fn a_week_old_tracker_records_new_flows_as_in_its_first_minute() {
        // The bug: the first 32 flows were kept for the agent's lifetime, later ones never.
        const WEEK: u64 = 7 * 24 * 3600;
        let mut t = ConnTracker::new(secs(3)).within(secs(300));
        let first: Vec<_> = (0..40u8).map(|i| lost([10, 0, 1, i], 41000, 10)).collect();
        t.sweep(&first, secs(13));
        assert_eq!(flows(&t).len(), TOP_UNANSWERED);
        t.sweep(&[lost([10, 0, 9, 9], 42000, WEEK)], secs(WEEK + 3));
        assert_eq!(flows(&t), [("10.0.9.9".parse().unwrap(), 1)]);
        // Without a window (`observe`), flows stay however old.
        let mut all = ConnTracker::new(secs(3));
        all.sweep(&[lost([10, 0, 0, 1], 40001, 10)], secs(13));
        all.sweep(&[lost([10, 0, 9, 9], 42000, WEEK)], secs(WEEK + 3));
        assert_eq!(
            flows(&all),
            [
                ("10.0.9.9".parse().unwrap(), 1),
                ("10.0.0.1".parse().unwrap(), 1)
            ]
        );
    }
}
