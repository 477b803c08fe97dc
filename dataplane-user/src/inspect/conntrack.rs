//! `bpfmasq conntrack list|count|flush`: the NAT table as flows, like
//! `conntrack -L`, read from the pinned maps so it works from any process.

use std::net::Ipv4Addr;

use anyhow::Result;
use dataplane_common::{
    conntrack::Timeouts,
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::{
    datapath::{
        flows::{FlowView, monotonic_ns, snapshot},
        gc,
        instance::{Instance, netns_label},
        pinned, pods,
    },
    privileges::require_root,
};

use super::Query;

/// A protocol to keep flows of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// Which flows a conntrack verb applies to (all, when empty).
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub proto: Option<Proto>,
    /// Flows whose pod (original source) address is in this network.
    pub src: Option<ipnet::Ipv4Net>,
    /// Flows whose peer (original destination) address is in this network.
    pub dst: Option<ipnet::Ipv4Net>,
    /// Flows of the container with this id (or unique id prefix), recorded
    /// by the CNI plugin: those whose original source is one of its addresses.
    pub container: Option<String>,
}

/// A [`FlowFilter`] with its container turned into addresses.
struct Selection<'a> {
    filter: &'a FlowFilter,
    container_ips: Option<Vec<Ipv4Addr>>,
}

impl<'a> Selection<'a> {
    fn new(instance: &Instance, filter: &'a FlowFilter) -> Result<Self> {
        let container_ips = match &filter.container {
            None => None,
            Some(id) => {
                let map = pods::open(instance)?;
                let containers = pods::containers(&map)?;
                Some(pods::find(&containers, id)?.ips.clone())
            }
        };
        Ok(Self {
            filter,
            container_ips,
        })
    }

    fn matches(&self, flow: &Flow) -> bool {
        matches(self.filter, flow)
            && self
                .container_ips
                .as_ref()
                .is_none_or(|ips| ips.contains(&flow.src.addr))
    }
}

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
    /// Imported from nf_conntrack by `attach --takeover`.
    pub imported: bool,
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
        state: view.state().name(),
        original_dir: Traffic {
            packets: out.packets,
            bytes: out.bytes,
        },
        reply_dir: Traffic {
            packets: back.packets,
            bytes: back.bytes,
        },
        age_seconds: now.saturating_sub(out.created_ns) / NS_PER_SEC,
        idle_seconds: now.saturating_sub(view.last_seen_ns()) / NS_PER_SEC,
        expires_in_seconds: view.remaining_ns(timeouts, now) / NS_PER_SEC,
        imported: view.imported(),
    }
}

/// Every flow of the instance, sorted by protocol and original tuple.
pub fn flows(instance: &Instance) -> Result<Vec<Flow>> {
    let record = pinned::read_record(instance)?;
    let snapshot = snapshot(&pinned::conntrack(instance)?)?;
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = snapshot
        .flows
        .iter()
        .map(|v| flow(v, &record.timeouts, now))
        .collect();
    flows.sort_by_key(|f| (f.proto, f.src.addr, f.src.port, f.dst.addr, f.dst.port));
    Ok(flows)
}

/// Whether `flow` passes the `--proto/--src/--dst` filters.
fn matches(filter: &FlowFilter, flow: &Flow) -> bool {
    let proto_ok = filter.proto.is_none_or(|p| match p {
        Proto::Tcp => flow.proto == "tcp",
        Proto::Udp => flow.proto == "udp",
        Proto::Icmp => flow.proto == "icmp",
    });
    proto_ok
        && filter.src.is_none_or(|net| net.contains(&flow.src.addr))
        && filter.dst.is_none_or(|net| net.contains(&flow.dst.addr))
}

fn instance(netns: Option<&str>, query: &Query) -> Result<Instance> {
    Instance::find(&netns_label(netns)?, query.uplink.as_deref())
}

pub fn conntrack_list(netns: Option<&str>, query: &Query, filter: &FlowFilter) -> Result<()> {
    let instance = instance(netns, query)?;
    let selection = Selection::new(&instance, filter)?;
    let flows: Vec<Flow> = flows(&instance)?
        .into_iter()
        .filter(|f| selection.matches(f))
        .collect();
    if query.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<44} {:<22} {:<11} {:>18} {:>18} {:>8}",
        "PROTO",
        "ORIGINAL (POD -> PEER)",
        "TRANSLATED SOURCE",
        "STATE",
        "OUT PKTS/BYTES",
        "IN PKTS/BYTES",
        "EXPIRES"
    );
    for f in &flows {
        let original = format!(
            "{}:{} -> {}:{}",
            f.src.addr, f.src.port, f.dst.addr, f.dst.port
        );
        let translated = format!("{}:{}", f.translated.addr, f.translated.port);
        let out = format!("{}/{}", f.original_dir.packets, f.original_dir.bytes);
        let back = format!("{}/{}", f.reply_dir.packets, f.reply_dir.bytes);
        println!(
            "{:<5} {original:<44} {translated:<22} {:<11} {out:>18} {back:>18} {:>7}s{}",
            f.proto,
            f.state,
            f.expires_in_seconds,
            if f.imported { " [IMPORTED]" } else { "" }
        );
    }
    println!("{} flow(s)", flows.len());
    Ok(())
}

pub fn conntrack_count(netns: Option<&str>, query: &Query, filter: &FlowFilter) -> Result<()> {
    let instance = instance(netns, query)?;
    let selection = Selection::new(&instance, filter)?;
    let count = flows(&instance)?
        .iter()
        .filter(|f| selection.matches(f))
        .count();
    if query.json {
        println!("{}", serde_json::json!({ "flows": count }));
    } else {
        println!("{count}");
    }
    Ok(())
}

/// Removes matching flows, both halves (see `gc::remove_flows`).
pub fn conntrack_flush(netns: Option<&str>, query: &Query, filter: &FlowFilter) -> Result<()> {
    require_root("bpfmasq conntrack flush")?;
    let instance = instance(netns, query)?;
    let selection = Selection::new(&instance, filter)?;
    let record = pinned::read_record(&instance)?;
    let table = pinned::conntrack(&instance)?;
    let snapshot = snapshot(&table)?;
    let now = monotonic_ns();
    let doomed: Vec<&FlowView> = snapshot
        .flows
        .iter()
        .filter(|view| selection.matches(&flow(view, &record.timeouts, now)))
        .collect();
    gc::remove_flows(&table, &doomed)?;
    let removed = doomed.len();
    if query.json {
        println!("{}", serde_json::json!({ "flushed": removed }));
    } else {
        println!("flushed {removed} flow(s)");
    }
    Ok(())
}
