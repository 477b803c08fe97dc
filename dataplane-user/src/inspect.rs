//! Operators' view of a datapath: the conntrack (NAT) table and counters,
//! read from the pinned maps, so it works from any process.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use dataplane_common::{
    conntrack::Timeouts,
    counters::Counter,
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::{
    cli::InstanceArgs,
    datapath::{
        flows::{FlowView, monotonic_ns, snapshot},
        instance::{Instance, netns_label},
        pinned,
    },
};

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    /// Port, or ICMP echo identifier.
    pub port: u16,
}

#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// One flow, both directions joined, as `conntrack list` shows it.
#[derive(Debug, Serialize)]
pub struct Flow {
    pub proto: &'static str,
    /// The pod's side as it sent the packet.
    pub src: Endpoint,
    pub dst: Endpoint,
    /// What the source became on the wire.
    pub translated: Endpoint,
    pub state: &'static str,
    pub original_dir: Traffic,
    pub reply_dir: Traffic,
    pub age_seconds: u64,
    pub idle_seconds: u64,
    pub expires_in_seconds: u64,
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

const NS_PER_SEC: u64 = 1_000_000_000;

fn flow(view: &FlowView, timeouts: &Timeouts, now: u64) -> Flow {
    let (key, out) = (&view.key, &view.original);
    let back = view.reply.unwrap_or_default();
    Flow {
        proto: proto_name(key.proto),
        src: Endpoint { addr: addr(key.src_addr), port: u16::from_be(key.src_port) },
        dst: Endpoint { addr: addr(key.dst_addr), port: u16::from_be(key.dst_port) },
        translated: Endpoint { addr: addr(out.rewrite_addr), port: u16::from_be(out.rewrite_port) },
        state: view.state().name(),
        original_dir: Traffic { packets: out.packets, bytes: out.bytes },
        reply_dir: Traffic { packets: back.packets, bytes: back.bytes },
        age_seconds: now.saturating_sub(out.created_ns) / NS_PER_SEC,
        idle_seconds: now.saturating_sub(view.last_seen_ns()) / NS_PER_SEC,
        expires_in_seconds: view.remaining_ns(timeouts, now) / NS_PER_SEC,
    }
}

/// Every flow of the instance, sorted by protocol and original tuple.
pub fn flows(instance: &Instance) -> Result<Vec<Flow>> {
    let config = pinned::read_config(instance)?;
    let snapshot = snapshot(&pinned::conntrack(instance)?)?;
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = snapshot.flows.iter().map(|v| flow(v, &config.timeouts, now)).collect();
    flows.sort_by_key(|f| (f.proto, f.src.addr, f.src.port, f.dst.addr, f.dst.port));
    Ok(flows)
}

pub fn conntrack_list(netns: Option<&str>, args: &InstanceArgs) -> Result<()> {
    let instance = Instance::find(&netns_label(netns)?, args.uplink.as_deref())?;
    let flows = flows(&instance)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<44} {:<22} {:<11} {:>18} {:>18} {:>8}",
        "PROTO", "ORIGINAL (POD -> PEER)", "TRANSLATED SOURCE", "STATE", "OUT PKTS/BYTES", "IN PKTS/BYTES", "EXPIRES"
    );
    for f in &flows {
        let original = format!("{}:{} -> {}:{}", f.src.addr, f.src.port, f.dst.addr, f.dst.port);
        let translated = format!("{}:{}", f.translated.addr, f.translated.port);
        let out = format!("{}/{}", f.original_dir.packets, f.original_dir.bytes);
        let back = format!("{}/{}", f.reply_dir.packets, f.reply_dir.bytes);
        println!(
            "{:<5} {original:<44} {translated:<22} {:<11} {out:>18} {back:>18} {:>7}s",
            f.proto, f.state, f.expires_in_seconds
        );
    }
    println!("{} flow(s)", flows.len());
    Ok(())
}

/// Every counter, summed over CPUs, in [`Counter::ALL`] order.
pub fn counter_totals(instance: &Instance) -> Result<Vec<(Counter, u64)>> {
    let counters = pinned::counters(instance)?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = counters
                .get(&(c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}

pub fn stats(netns: Option<&str>, args: &InstanceArgs) -> Result<()> {
    let instance = Instance::find(&netns_label(netns)?, args.uplink.as_deref())?;
    let totals = counter_totals(&instance)?;
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = totals
            .iter()
            .map(|(c, v)| (c.name().to_owned(), (*v).into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    for (counter, value) in totals {
        println!("{:<20} {value:>12}", counter.name());
    }
    Ok(())
}
