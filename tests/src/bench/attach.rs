//! Attach speed: how long `sgpath agent` takes to start with 250 pod veths present (spawn
//! to `/readyz` 200, and to every path in `/v1/report`), then how long after a new pod's
//! host veth is created the agent logs its `path-appeared` event, for 50 pods laid out one
//! by one as the CNI does.
//!
//! Side effects: the agent started and stopped; 50 more pods (namespaces `<prefix>-p1000`
//! up) left in the node, deleted with it.

use std::time::{Duration, Instant};

use super::{
    RUNS, paths_reported,
    pod_node::{PodNode, veth},
    spawn_agent,
    stats::{Goal, Summary, Table, percentile},
};

const NEW_PODS: usize = 50;
/// The first new pod's index (their addresses start at 10.98.5.2).
const FIRST_NEW: usize = 1000;
const GIVE_UP: Duration = Duration::from_secs(30);

pub fn run(node: &mut PodNode) -> String {
    let pods = node.pods.len();
    let (mut ready, mut all) = (Vec::new(), Vec::new());
    let mut agent = None;
    for run in 0..RUNS {
        let start = Instant::now();
        let a = spawn_agent(node);
        while !matches!(a.try_request("GET", "/readyz", &[]), Ok((200, _))) {
            assert!(start.elapsed() < GIVE_UP, "not ready:\n{}", a.log_text());
            std::thread::sleep(Duration::from_millis(2));
        }
        ready.push(start.elapsed().as_secs_f64() * 1e3);
        while paths_reported(&a) < pods {
            assert!(
                start.elapsed() < GIVE_UP,
                "paths missing:\n{}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        all.push(start.elapsed().as_secs_f64() * 1e3);
        if run + 1 < RUNS {
            let _ = a.terminate();
        } else {
            agent = Some(a);
        }
    }
    let agent = agent.unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut seen = agent.log.lock().unwrap().len();
    let mut latency = Vec::new();
    let mut missing = 0;
    for j in 0..NEW_PODS {
        let i = FIRST_NEW + j;
        let v = veth(i);
        let created = node.add_pod(i);
        let appeared = loop {
            let log = agent.log.lock().unwrap();
            let hit = log[seen..]
                .iter()
                .any(|l| l.contains("path-appeared") && l.contains(&v));
            seen = log.len();
            drop(log);
            if hit {
                break Some(Instant::now());
            }
            if created.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        match appeared {
            Some(t) => latency.push(t.duration_since(created).as_secs_f64() * 1e3),
            None => missing += 1,
        }
    }
    let total_paths = paths_reported(&agent);
    let _ = agent.terminate();
    let (r, a) = (Summary::of(&ready).unwrap(), Summary::of(&all).unwrap());
    let mut t = Table::new(&["figure", "ms"]);
    t.row(
        &[
            format!("start with {pods} pods: spawn to `/readyz` 200"),
            r.show(0),
        ],
        "",
        Goal::None,
    );
    t.row(
        &[
            format!("start with {pods} pods: spawn to all {pods} paths in `/v1/report`"),
            a.show(0),
        ],
        "<= 1000 ms",
        Goal::check(a.median <= 1000.0),
    );
    let (p50, p99) = (percentile(&latency, 50.0), percentile(&latency, 99.0));
    t.row(
        &[
            format!("new pod: veth created to `path-appeared`, p50 of {NEW_PODS}"),
            format!("{p50:.0}"),
        ],
        "",
        Goal::None,
    );
    t.row(
        &[
            format!("new pod: veth created to `path-appeared`, p99 of {NEW_PODS}"),
            format!("{p99:.0}"),
        ],
        "p99 <= 200 ms",
        Goal::check(missing == 0 && p99 <= 200.0),
    );
    format!(
        "Start-up: {RUNS} starts of `sgpath agent` in a node with {pods} pods (CNI layout, \
         each pod in its own namespace); the clock runs from spawning `ip netns exec ... \
         sgpath agent` to `/readyz` answering 200 and to `/v1/report` listing every path \
         (polled every 2 ms; a report of {pods} paths itself takes some ms). New pods: with \
         the last agent running, {NEW_PODS} pods added one by one as the CNI's ADD does (veth \
         pair, /32 route, 512 rule; then the pod's address and routes, two `ip -batch` runs); \
         the clock runs from the start of the node-side commands (the veth's creation) to the \
         agent's `path-appeared` JSON log line for that veth on its stdout (polled every \
         1 ms). {missing} of {NEW_PODS} never appeared within 5 s; the agent reported \
         {total_paths} paths at the end. With {NEW_PODS} samples the (nearest-rank) p99 is \
         the largest.\n\n{}",
        t.markdown()
    )
}
