//! `bpfmasq status`: what is attached where, with which configuration, and
//! how full the conntrack table is.

use std::net::Ipv4Addr;

use anyhow::Result;
use dataplane_common::config::AttachMode;
use serde::Serialize;

use super::Query;
use crate::{
    daemon::lock,
    datapath::{
        instance::{Instance, netns_label},
        kernel::Kernel,
        pinned, ports,
    },
};

#[derive(Debug, Serialize)]
struct Hook {
    hook: &'static str,
    program_id: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Status {
    netns: String,
    uplink: String,
    uplink_ifindex: u32,
    bridge_ifindex: u32,
    link_type: &'static str,
    hooks: Vec<Hook>,
    /// `--fast-path`: pod traffic forwarded between bridge and uplink in eBPF.
    fast_path: bool,
    /// The running kernel.
    kernel: String,
    /// What the kernel lacks and what bpfmasq does without it (e.g. clsact
    /// instead of tcx, the fast path off).
    features_off: Vec<String>,
    /// The pid of the `bpfmasq run` maintaining this datapath (expiring
    /// flows, following the uplink's address); `None`: nothing does.
    daemon_pid: Option<u32>,
    pod_cidr: String,
    nat_address: Ipv4Addr,
    port_range: String,
    timeouts: serde_json::Map<String, serde_json::Value>,
    ct_max: u32,
    /// `--ct-max-per-pod` (0: no limit but the table's).
    ct_max_per_pod: u32,
    flows: usize,
    table_entries: usize,
    table_capacity: u32,
    /// `bpfmasq trace`s the datapath reports to.
    traces: u32,
    /// Bridge ports whose pod may send only with its own recorded
    /// addresses (0: source checking is off).
    source_checked_ports: usize,
    pin_dir: String,
}

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

pub fn status(netns: Option<&str>, query: &Query) -> Result<()> {
    let instance = Instance::find(&netns_label(netns)?, query.uplink.as_deref())?;
    let config = pinned::read_config(&instance)?;
    let record = pinned::read_record(&instance)?;
    let table = pinned::conntrack(&instance)?;
    let snapshot = crate::datapath::flows::snapshot(&table)?;
    let mode = record.attach_mode();
    let hooks = pinned::hook_programs(&instance, mode)
        .into_iter()
        .map(|(hook, program_id)| Hook { hook, program_id })
        .collect();
    let kernel = Kernel::probe();
    let prefix = u32::from_be(config.pod_mask).count_ones();
    let status = Status {
        netns: instance.netns.clone(),
        uplink: instance.uplink.clone(),
        uplink_ifindex: config.uplink_ifindex,
        bridge_ifindex: config.bridge_ifindex,
        link_type: match mode {
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
            AttachMode::None => "none",
        },
        hooks,
        fast_path: config.fast_path(),
        features_off: kernel
            .features
            .iter()
            .filter(|f| !f.available)
            .map(|f| format!("{}: {}", f.name, f.without.describe()))
            .collect(),
        kernel: kernel.release,
        daemon_pid: lock::holder(&instance),
        pod_cidr: format!("{}/{prefix}", addr(config.pod_net)),
        nat_address: addr(config.nat_addr),
        port_range: format!("{}-{}", config.port_min, config.port_max),
        timeouts: record
            .timeouts
            .named()
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).into()))
            .collect(),
        ct_max: record.ct_max,
        ct_max_per_pod: config.ct_max_per_pod,
        flows: snapshot.flows.len(),
        table_entries: snapshot.entries,
        table_capacity: record.ct_max.saturating_mul(2),
        traces: super::trace::listening(&instance)?,
        source_checked_ports: ports::live_ports(&instance)?.len(),
        pin_dir: instance.dir().display().to_string(),
    };
    if query.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "datapath     {} in network namespace `{}` ({})",
        status.uplink, status.netns, status.pin_dir
    );
    println!("link type    {}", status.link_type);
    println!("kernel       {}", status.kernel);
    for off in &status.features_off {
        println!("  lacks {off}");
    }
    for hook in &status.hooks {
        let id = hook
            .program_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        println!("  {:<14} program id {id}", hook.hook);
    }
    match status.daemon_pid {
        Some(pid) => println!("daemon       bpfmasq run, pid {pid}"),
        None => println!(
            "daemon       none: flows never expire and a new uplink address is not followed \
             (start `bpfmasq run`)"
        ),
    }
    println!(
        "fast path    {}",
        if status.fast_path { "on" } else { "off" }
    );
    println!("pod CIDR     {}", status.pod_cidr);
    println!("NAT address  {}", status.nat_address);
    println!("ports        {}", status.port_range);
    println!(
        "table        {} flows, {} of {} entries ({} flows max)",
        status.flows, status.table_entries, status.table_capacity, status.ct_max
    );
    if status.ct_max_per_pod != 0 {
        println!("per pod      {} flows max", status.ct_max_per_pod);
    }
    let timeouts: Vec<String> = status
        .timeouts
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!("timeouts     {}", timeouts.join(" "));
    match status.source_checked_ports {
        0 => println!(
            "sources      not checked: no container is recorded, so a pod could send with \
             another's address (the CNI plugin, or a lab's attach, records them)"
        ),
        n => println!("sources      checked on {n} container ports"),
    }
    println!("traces       {} running", status.traces);
    Ok(())
}
