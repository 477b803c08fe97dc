//! Operators' view of a datapath: the conntrack (NAT) table and counters,
//! read from the pinned maps, so it works from any process.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use dataplane_common::{
    counters::Counter,
    flow::{Direction, FlowEntry, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::{
    cli::InstanceArgs,
    datapath::{
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

/// One flow, both directions joined.
#[derive(Debug, Serialize)]
pub struct Flow {
    pub proto: &'static str,
    /// The pod's side as it sent the packet.
    pub src: Endpoint,
    pub dst: Endpoint,
    /// What the source became on the wire.
    pub translated: Endpoint,
    pub original_dir: Traffic,
    pub reply_dir: Traffic,
    pub age_seconds: u64,
    pub idle_seconds: u64,
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

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}

fn seconds_since(now_ns: u64, then_ns: u64) -> u64 {
    now_ns.saturating_sub(then_ns) / 1_000_000_000
}

/// Every flow of the instance, sorted by protocol and original tuple.
pub fn flows(instance: &Instance) -> Result<Vec<Flow>> {
    let table = pinned::conntrack(instance)?;
    let entries: Vec<(FlowKey, FlowEntry)> = table
        .iter()
        .collect::<Result<_, _>>()
        .context("reading the conntrack map")?;
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = entries
        .iter()
        .filter(|(_, entry)| entry.direction == Direction::Original as u8)
        .map(|(key, out)| {
            let reply_key = key.reply_after_snat(out.rewrite_addr, out.rewrite_port);
            let back = table.get(&reply_key, 0).ok();
            Flow {
                proto: proto_name(key.proto),
                src: Endpoint {
                    addr: addr(key.src_addr),
                    port: u16::from_be(key.src_port),
                },
                dst: Endpoint {
                    addr: addr(key.dst_addr),
                    port: u16::from_be(key.dst_port),
                },
                translated: Endpoint {
                    addr: addr(out.rewrite_addr),
                    port: u16::from_be(out.rewrite_port),
                },
                original_dir: Traffic {
                    packets: out.packets,
                    bytes: out.bytes,
                },
                reply_dir: back
                    .map(|b| Traffic {
                        packets: b.packets,
                        bytes: b.bytes,
                    })
                    .unwrap_or_default(),
                age_seconds: seconds_since(now, out.created_ns),
                idle_seconds: seconds_since(
                    now,
                    back.map_or(out.last_seen_ns, |b| b.last_seen_ns.max(out.last_seen_ns)),
                ),
            }
        })
        .collect();
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
        "{:<5} {:<44} {:<22} {:>16} {:>16} {:>6}",
        "PROTO",
        "ORIGINAL (POD -> PEER)",
        "TRANSLATED SOURCE",
        "OUT PKTS/BYTES",
        "IN PKTS/BYTES",
        "IDLE"
    );
    for f in &flows {
        println!(
            "{:<5} {:<44} {:<22} {:>16} {:>16} {:>5}s",
            f.proto,
            format!(
                "{}:{} -> {}:{}",
                f.src.addr, f.src.port, f.dst.addr, f.dst.port
            ),
            format!("{}:{}", f.translated.addr, f.translated.port),
            format!("{}/{}", f.original_dir.packets, f.original_dir.bytes),
            format!("{}/{}", f.reply_dir.packets, f.reply_dir.bytes),
            f.idle_seconds
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
