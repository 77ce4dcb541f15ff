//! Fuzzing of everything sgpath parses from outside: the CNI config, the `pod-eni`
//! annotation, SecurityGroupPolicies, IPAMD's `/v1/enis`, netlink messages (and
//! the classification, checks and report built from them), HTTP requests to the agent, and
//! lab specs. Each target mutates the seeds of its corpus (`tests/corpus/<target>/`, real
//! inputs kept in the repo) with random byte edits and splices (proptest, which shrinks a
//! failure to a minimal edit list and records its seed under `proptest-regressions/`), and
//! asserts that nothing panics and that every error names what was wrong.
//!
//! `FUZZ_CASES` sets the cases per target (default [`DEFAULT_CASES`]; CI runs the default).
//! `capture_netlink_corpus` (ignored) rewrites the netlink corpus from a lab node.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use netlink_packet_core::{Emitable, Parseable};
use netlink_packet_route::{
    address::AddressMessage, link::LinkMessage, route::RouteMessage, rule::RuleMessage,
};
use proptest::{prelude::*, test_runner::TestRunner};
use sgpath::{
    checks,
    collect::{addresses, cni_config, links, routes, rules},
    model::{Node, Topology},
    report::Report,
};

/// Cases per in-process target (a few seconds each here); the netlink target runs a tenth
/// (each case classifies and checks a whole node), the HTTP one a twentieth (a connection).
const DEFAULT_CASES: u32 = 100_000;

fn cases(scale: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
        / scale
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The seeds of `target`, sorted by file name, with their names.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "empty corpus {}", dir.display());
    seeds
}

/// One random edit of a byte string; positions are taken modulo its length.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Overwrite from `at` with `len` bytes of seed `seed` from `from`.
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        Just(0u8),
        Just(0xff),
        Just(0x7f),
        Just(0x80),
        Just(b'"'),
        Just(b'{'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, 1 << b)),
        (any::<usize>(), byte.clone()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), byte).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..64).prop_map(
            |(at, seed, from, len)| Edit::Splice {
                at,
                seed,
                from,
                len
            }
        ),
    ]
}

fn apply(seeds: &[Vec<u8>], base: usize, edits: &[Edit]) -> Vec<u8> {
    let mut b = seeds[base % seeds.len()].clone();
    for e in edits {
        let at = |p: usize, extra: usize| p % (b.len() + extra).max(1);
        match *e {
            Edit::Flip(p, mask) if !b.is_empty() => {
                let i = at(p, 0);
                b[i] ^= mask;
            }
            Edit::Set(p, v) if !b.is_empty() => {
                let i = at(p, 0);
                b[i] = v;
            }
            Edit::Insert(p, v) => {
                let i = at(p, 1);
                b.insert(i, v);
            }
            Edit::Remove(p) if !b.is_empty() => {
                let i = at(p, 0);
                b.remove(i);
            }
            Edit::Truncate(p) => {
                let i = at(p, 1);
                b.truncate(i);
            }
            Edit::Splice {
                at: p,
                seed,
                from,
                len,
            } => {
                let src = &seeds[seed % seeds.len()];
                let from = from % src.len().max(1);
                let chunk = &src[from..(from + len).min(src.len())];
                let i = at(p, 1);
                let end = (i + chunk.len()).min(b.len());
                b.splice(i..end, chunk.iter().copied());
            }
            _ => {}
        }
    }
    b
}

/// A seed with up to `max_edits` edits.
fn mutated(seeds: Vec<Vec<u8>>, max_edits: usize) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    (0..n, prop::collection::vec(edit(), 0..=max_edits))
        .prop_map(move |(base, edits)| apply(&seeds, base, &edits))
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/corpus/proptest-regressions.txt"
            )),
        )),
        ..ProptestConfig::default()
    })
}

/// The CNI config: never a panic; every error names the file, and a parse that succeeds
/// gives values within their types' ranges (an MTU the kernel accepts, a known mode).
#[test]
fn fuzz_cni_config() {
    let seeds: Vec<Vec<u8>> = corpus("cni").into_iter().map(|(_, s)| s).collect();
    for s in &seeds {
        let text = std::str::from_utf8(s).unwrap();
        cni_config::parse("seed", text).expect("every seed parses");
    }
    runner(cases(1))
        .run(&mutated(seeds, 6), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = cni_config::parse("/etc/cni/net.d/10-aws.conflist", &text) {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("10-aws.conflist"),
                    "error without the path: {msg}"
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Message kinds of the netlink corpus, by file-name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Link,
    Address,
    Route,
    Rule,
}

impl Kind {
    fn of(name: &str) -> Kind {
        match name.split('-').next() {
            Some("link") => Kind::Link,
            Some("addr") => Kind::Address,
            Some("route") => Kind::Route,
            Some("rule") => Kind::Rule,
            _ => panic!("netlink corpus file {name}: link-, addr-, route- or rule-"),
        }
    }
}

/// A whole node's dump with some of its messages mutated: each message parsed as the
/// kernel's would be (netlink-packet-route), converted by the collectors, classified,
/// checked and reported as JSON, as `inspect` does. Nothing may panic.
#[test]
fn fuzz_netlink_classification() {
    let seeds = corpus("netlink");
    let kinds: Vec<Kind> = seeds.iter().map(|(n, _)| Kind::of(n)).collect();
    let bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    // Every seed parses (else the corpus is stale against netlink-packet-route).
    let node = node_of(&kinds, &bytes);
    assert!(node.links.len() >= 4, "corpus too small: {:?}", node.links);
    let n = bytes.len();
    let strategy = prop::collection::vec((0..n, prop::collection::vec(edit(), 1..4)), 1..8);
    runner(cases(10))
        .run(&strategy, |mutations| {
            let mut msgs = bytes.clone();
            for (i, edits) in &mutations {
                msgs[*i] = apply(&bytes, *i, edits);
            }
            let node = node_of(&kinds, &msgs);
            let topo = Topology::from_node(&node);
            let findings = checks::run(&node, &topo);
            let json = Report::new(&node, &topo, findings).to_json();
            prop_assert!(
                json.starts_with('{'),
                "report JSON: {}",
                &json[..json.len().min(80)]
            );
            Ok(())
        })
        .unwrap();
}

/// The node the collectors make of `msgs` (those that parse).
fn node_of(kinds: &[Kind], msgs: &[Vec<u8>]) -> Node {
    let mut node = Node::default();
    let mut addrs: BTreeMap<u32, Vec<ipnet::IpNet>> = BTreeMap::new();
    let mut route_msgs = Vec::new();
    for (kind, b) in kinds.iter().zip(msgs) {
        match kind {
            Kind::Link => {
                if let Ok(m) = LinkMessage::parse(b.as_slice()) {
                    node.links.push(links::from_message(&m));
                }
            }
            Kind::Address => {
                if let Ok(m) = AddressMessage::parse(b.as_slice())
                    && let Some((i, a)) = addresses::from_message(&m)
                {
                    addrs.entry(i).or_default().push(a);
                }
            }
            Kind::Route => {
                if let Ok(m) = RouteMessage::parse(b.as_slice()) {
                    route_msgs.push(m);
                }
            }
            Kind::Rule => {
                if let Ok(m) = RuleMessage::parse(b.as_slice())
                    && let Some(r) = rules::from_message(&m)
                {
                    node.rules.push(r);
                }
            }
        }
    }
    for l in &mut node.links {
        l.addresses = addrs.remove(&l.ifindex).unwrap_or_default();
    }
    let names = node
        .links
        .iter()
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    node.routes = route_msgs
        .iter()
        .filter_map(|m| routes::from_message(m, &names))
        .collect();
    node
}

/// Lab specs (`cargo xtask lab --spec`): never a panic; errors are messages.
#[test]
fn fuzz_lab_spec() {
    let mut seeds: Vec<Vec<u8>> = corpus("lab").into_iter().map(|(_, s)| s).collect();
    let labs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/labs");
    for e in std::fs::read_dir(&labs).unwrap() {
        seeds.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    for s in &seeds {
        xtask::lab::spec::Spec::parse(std::str::from_utf8(s).unwrap()).expect("seeds parse");
    }
    runner(cases(4))
        .run(&mutated(seeds, 6), |bytes| {
            if let Err(e) = xtask::lab::spec::Spec::parse(&String::from_utf8_lossy(&bytes)) {
                let msg = format!("{e:#}");
                prop_assert!(!msg.is_empty(), "an empty error");
            }
            Ok(())
        })
        .unwrap();
}

/// HTTP requests to a running agent (its real hyper server, in a throwaway namespace):
/// every answer is a well-formed status line or a closed connection, and the agent still
/// answers `/healthz` at the end.
#[test]
fn fuzz_agent_http() {
    let seeds: Vec<Vec<u8>> = corpus("http").into_iter().map(|(_, s)| s).collect();
    let ns = sgpath_tests::NetNs::new("sgt-fuzzhttp");
    sgpath_tests::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    let agent = sgpath_tests::agent::Agent::start(&ns.0, &[]);
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, agent.port).into();
    runner(cases(20))
        .run(&mutated(seeds, 8), |bytes| {
            let mut s = sgpath_tests::observe::in_netns(&ns.0, || TcpStream::connect(to))
                .expect("the agent accepts");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The server may close first (a 400 after the first bad line): a reset is an
            // answer too.
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut raw = Vec::new();
            let read = s.read_to_end(&mut raw);
            prop_assert!(
                !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "no answer and not closed within 5 s"
            );
            if !raw.is_empty() {
                let head = String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned();
                let status = head
                    .strip_prefix("HTTP/1.1 ")
                    .or_else(|| head.strip_prefix("HTTP/1.0 "))
                    .and_then(|s| s.get(..3))
                    .and_then(|s| s.parse::<u16>().ok());
                prop_assert!(
                    status.is_some_and(|s| (200..600).contains(&s)),
                    "not a status line: {head:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(agent.request("GET", "/healthz", &[]).0, 200);
    assert!(agent.terminate().success());
}

/// Rewrites `tests/corpus/netlink/` (or `$SGPATH_CORPUS_OUT`) with the messages of a lab
/// node's dump (`$SGPATH_CAPTURE_SPEC`, default `mixed`: trunk, VLANs, strict and standard
/// branch pods, ordinary pods; needs 802.1Q, so run it in a VM).
#[test]
#[ignore = "rewrites the corpus: run by hand"]
fn capture_netlink_corpus() {
    use futures::TryStreamExt;
    let name = std::env::var("SGPATH_CAPTURE_SPEC").unwrap_or_else(|_| "mixed".into());
    let lab = sgpath_tests::lab(sgpath_tests::spec(&name), "sgt-cap");
    let out = std::env::var("SGPATH_CORPUS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| corpus_dir("netlink"));
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(&out).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    fn bytes<M: Emitable>(m: &M) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }
    let files: Vec<(String, Vec<u8>)> = sgpath_tests::observe::in_netns(&lab.layout.node(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let mut files = Vec::new();
            let links: Vec<LinkMessage> =
                handle.link().get().execute().try_collect().await.unwrap();
            files.extend(links.iter().map(|m| ("link", bytes(m))));
            let addrs: Vec<AddressMessage> = handle
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .unwrap();
            files.extend(addrs.iter().map(|m| ("addr", bytes(m))));
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(RouteMessage::default())
                .execute()
                .try_collect()
                .await
                .unwrap();
            files.extend(routes.iter().map(|m| ("route", bytes(m))));
            let rules: Vec<RuleMessage> = handle
                .rule()
                .get(rtnetlink::IpVersion::V4)
                .execute()
                .try_collect()
                .await
                .unwrap();
            files.extend(rules.iter().map(|m| ("rule", bytes(m))));
            files
                .into_iter()
                .enumerate()
                .map(|(i, (kind, b))| (format!("{kind}-{i:03}.bin"), b))
                .collect()
        })
    });
    for (name, b) in &files {
        std::fs::write(out.join(name), b).unwrap();
    }
    eprintln!("{} messages written to {}", files.len(), out.display());
}

/// Runs `parse` on mutated seeds of corpus `target` (each seed must parse), `cases(scale)`
/// times; nothing may panic and every error must say something.
fn fuzz_text<E: std::fmt::Display>(
    target: &str,
    scale: u32,
    parse: impl Fn(&str) -> Result<(), E>,
) {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, s)| s).collect();
    for s in &seeds {
        if let Err(e) = parse(std::str::from_utf8(s).unwrap()) {
            panic!("seed of {target} does not parse: {e}");
        }
    }
    runner(cases(scale))
        .run(&mutated(seeds, 6), |bytes| {
            if let Err(e) = parse(&String::from_utf8_lossy(&bytes)) {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty(), "an empty error");
            }
            Ok(())
        })
        .unwrap();
}

/// The `vpc.amazonaws.com/pod-eni` annotation.
#[test]
fn fuzz_pod_eni_annotation() {
    fuzz_text("pod-eni", 1, |raw| {
        sgpath::model::k8s::parse_pod_eni(raw).map(|_| ())
    });
}

/// A SecurityGroupPolicy's spec (selectors, group ids), from its JSON.
#[test]
fn fuzz_security_group_policy() {
    fuzz_text("sgp", 1, |raw| {
        let spec: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
        sgpath::model::k8s::PolicySpec::parse(&spec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// IPAMD's `/v1/enis` answer, both shapes.
#[test]
fn fuzz_ipamd_enis() {
    fuzz_text("ipamd", 1, |raw| {
        sgpath::model::ipamd::parse_enis(raw).map(|_| ())
    });
}
