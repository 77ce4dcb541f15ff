//! `sgpath observe`: snapshot the node, attach the path and drop probes, count for a while,
//! detach, and print the inspect report with `counters` on each path.
//!
//! Side effects: loads and attaches eBPF programs for `--duration` (a [`Session`]); they are
//! detached before the report prints (also on Ctrl-C and SIGTERM), so nothing outlives the
//! process.

use std::process::ExitCode;

use sgpath::{checks, collect, ebpf::paths::DropSource, report};

use crate::{
    cli::{ObserveArgs, Output},
    session::{self, Session},
};

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let rt = crate::runtime()?;
    let opts = session::Options {
        sources: collect::Sources {
            cni_config: args.cni_config,
            ..Default::default()
        },
        drop_source: args.drop_source,
        header_read: args.header_read,
        syn_timeout: args.syn_timeout,
        map_sizes: args.maps.sizes(),
        window: None,
    };
    let (node, topo) = rt.block_on(collect::node_with_topology(&opts.sources))?;
    for w in &node.read_warnings {
        eprintln!("sgpath: warning: {w}");
    }
    let mut session = rt.block_on(Session::attach(node, topo, &opts))?;
    let cluster = rt.block_on(crate::agent::watch_cluster(
        args.kubeconfig.as_deref(),
        args.node_name.clone(),
    ))?;
    // Signal handlers before "observing" is printed: a SIGTERM right after it must end the
    // count, not the process (the default action would leave no report).
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    eprintln!(
        "sgpath: observing {} paths ({} pod namespaces) for {:?}; drops named by {}",
        session.topology().paths.len(),
        session.pod_namespaces(),
        args.duration,
        match session.drop_source() {
            DropSource::Reason => "reason",
            DropSource::Location => "location",
        }
    );
    // Pods that come and go while counting: re-read the node on every netlink change.
    // Connections are swept on their own timer.
    rt.block_on(async {
        let mut watch = collect::watch::Watch::new()?;
        let stop = wait(args.duration, &mut term, &mut interrupt);
        tokio::pin!(stop);
        let mut sweep = tokio::time::interval(session::SWEEP_INTERVAL);
        let mut watching = true;
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = sweep.tick() => session.sweep()?,
                tick = watch.changed(), if watching => {
                    if tick.is_none() { watching = false; continue; }
                    session.resync().await?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    session.sweep()?;
    if let Some(rx) = &cluster {
        // What the watches had by the end; nothing when the API server never answered.
        session.set_cluster(rx.borrow().clone());
    }
    let report = session.report()?;
    drop(session);

    let text = match args.output {
        Output::Json => report.to_json() + "\n",
        Output::Text => report::text::render(&report),
    };
    crate::write_stdout(&text)?;
    Ok(match report.worst() {
        Some(checks::Severity::Warning | checks::Severity::Error) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// Sleeps for `duration`, or until Ctrl-C or SIGTERM.
async fn wait(
    duration: std::time::Duration,
    term: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = interrupt.recv() => eprintln!("sgpath: interrupted; reporting what was counted"),
        _ = term.recv() => eprintln!("sgpath: SIGTERM; reporting what was counted"),
    }
}
