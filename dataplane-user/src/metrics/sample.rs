//! One reading of the datapath for a scrape: every counter, the flows by
//! protocol and state, the conntrack table's fill, every bounded map's fill,
//! the most-used destinations' share of the port range, and the flows and
//! bytes of each container the CNI plugin recorded. Read from the
//! pinned maps, like `stats`, `conntrack` and `status`, then encoded as
//! Prometheus families.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use aya::maps::IterableMap as _;
use dataplane_common::{
    conntrack::FlowState,
    counters::{Counter, Family},
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::{
    datapath::{
        flows::{FlowView, snapshot},
        instance::Instance,
        map_fill::{self, MapFill},
        pinned, pods,
    },
    inspect::counter_totals,
};

/// How many destinations `nat_port_usage_ratio` shows: the most-used ones,
/// so the label set stays bounded however many peers there are.
pub const TOP_DESTINATIONS: usize = 10;

/// The datapath as one scrape sees it.
#[derive(Debug)]
pub struct Sample {
    counters: Vec<(Counter, u64)>,
    /// Flows by (protocol, state), every combination the datapath can
    /// produce present (at 0 when none).
    flows: BTreeMap<(&'static str, &'static str), u64>,
    conntrack_entries: u64,
    conntrack_capacity: u64,
    maps: Vec<MapFill>,
    /// (protocol, destination, ratio), most used first.
    port_usage: Vec<(&'static str, String, f64)>,
    /// Per container the CNI plugin recorded: (short id, interface, flows,
    /// bytes out, bytes in). One series set per container: bounded by the
    /// containers on the host, gone with the container's DEL.
    containers: Vec<ContainerUsage>,
}

#[derive(Debug)]
struct ContainerUsage {
    id: String,
    ifname: String,
    flows: u64,
    bytes_out: u64,
    bytes_in: u64,
}

/// Container ids in labels: Docker's and podman's short form.
const SHORT_ID: usize = 12;

/// The states a flow of each protocol can be in (`flow_state`).
const STATES: [(&str, &[FlowState]); 3] = [
    (
        "tcp",
        &[
            FlowState::TcpSynSent,
            FlowState::TcpSynRecv,
            FlowState::TcpEstablished,
            FlowState::TcpFinWait,
            FlowState::TcpCloseWait,
            FlowState::TcpTimeWait,
            FlowState::TcpClose,
        ],
    ),
    (
        "udp",
        &[FlowState::Unreplied, FlowState::Replied, FlowState::Stream],
    ),
    ("icmp", &[FlowState::Unreplied, FlowState::Replied]),
];

fn protocol(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

impl Sample {
    /// Reads the datapath of `instance` now.
    pub fn read(instance: &Instance) -> Result<Self> {
        let counters = counter_totals(instance)?;
        let config = pinned::read_config(instance)?;
        let record = pinned::read_record(instance)?;
        let table = pinned::conntrack(instance)?;
        let snapshot = snapshot(&table)?;
        let mut flows: BTreeMap<_, u64> = STATES
            .iter()
            .flat_map(|(proto, states)| states.iter().map(|s| ((*proto, s.name()), 0)))
            .collect();
        for view in &snapshot.flows {
            *flows
                .entry((protocol(view.key.proto), view.state().name()))
                .or_default() += 1;
        }
        let maps = map_fill::bounded_maps(instance, record.attach_mode(), snapshot.entries)?;
        let containers = container_usage(instance, &snapshot.flows)?;
        Ok(Self {
            counters,
            flows,
            conntrack_entries: snapshot.entries as u64,
            conntrack_capacity: u64::from(table.map().info()?.max_entries()),
            maps,
            port_usage: port_usage(&snapshot.flows, config.port_min, config.port_max),
            containers,
        })
    }
}

/// Flows and bytes of each container the CNI plugin recorded (none when
/// the datapath was attached without it).
fn container_usage(instance: &Instance, flows: &[FlowView]) -> Result<Vec<ContainerUsage>> {
    let recorded = match pods::open(instance) {
        Ok(map) => pods::containers(&map)?,
        Err(_) => return Ok(Vec::new()),
    };
    Ok(recorded
        .iter()
        .map(|container| {
            let own = pods::flows_of(flows, &container.raw_ips());
            ContainerUsage {
                id: container.container_id.chars().take(SHORT_ID).collect(),
                ifname: container.ifname.clone(),
                flows: own.len() as u64,
                bytes_out: own.iter().map(|f| f.original.bytes).sum(),
                bytes_in: own.iter().map(|f| f.reply.map_or(0, |r| r.bytes)).sum(),
            }
        })
        .collect())
}

/// The [`TOP_DESTINATIONS`] destinations with the most ports of the range
/// in use, and which share of the range that is. A NAT tuple is unique per
/// (protocol, destination address, destination port): that is the space a
/// busy destination exhausts. A flow whose port lies outside the range
/// (made before an adopting `run` changed `--port-range`) uses none of it.
pub fn port_usage(
    flows: &[FlowView],
    port_min: u16,
    port_max: u16,
) -> Vec<(&'static str, String, f64)> {
    let range = f64::from(port_max.saturating_sub(port_min)) + 1.0;
    let mut in_use: BTreeMap<(&'static str, Ipv4Addr, Option<u16>), u64> = BTreeMap::new();
    for view in flows {
        let port = u16::from_be(view.original.rewrite_port);
        if !(port_min..=port_max).contains(&port) {
            continue;
        }
        let key = &view.key;
        // An echo request's destination has no port: the identifier is the
        // source's, and the whole identifier space is per peer address.
        let dst_port = (key.proto != IPPROTO_ICMP).then(|| u16::from_be(key.dst_port));
        let dst = Ipv4Addr::from(key.dst_addr.to_ne_bytes());
        *in_use
            .entry((protocol(key.proto), dst, dst_port))
            .or_default() += 1;
    }
    let mut busiest: Vec<_> = in_use.into_iter().collect();
    // Most used first; ties in address order, so the set is stable.
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    busiest
        .into_iter()
        .take(TOP_DESTINATIONS)
        .map(|((proto, addr, port), used)| {
            let destination = match port {
                Some(port) => format!("{addr}:{port}"),
                None => addr.to_string(),
            };
            (proto, destination, used as f64 / range)
        })
        .collect()
}

/// Name (without the `bpfmasq_` prefix and the `_total` the encoder adds)
/// and help of the family each datapath counter is exported in.
pub fn family_metric(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::TranslatedPackets => (
            "translated_packets",
            "Packets translated by the NAT (whole packets and first fragments), by direction: out = source rewritten to the NAT address, in = reply's destination rewritten back to its pod",
        ),
        Family::TranslatedIcmpErrors => (
            "translated_icmp_errors",
            "ICMP errors quoting a masqueraded packet, translated back to its pod",
        ),
        Family::TranslatedFragments => (
            "translated_fragments",
            "IP fragments after the first of a tracked datagram, translated (either direction)",
        ),
        Family::PassedPackets => (
            "passed_packets",
            "Packets left to the host stack untouched, by reason",
        ),
        Family::Drops => (
            "drops",
            "Packets the datapath dropped, by reason (no_port and table_full: new flows refused)",
        ),
        Family::FastPathPackets => (
            "fast_path_packets",
            "Packets the fast path forwarded between bridge and uplink past the host's IP stack, by direction",
        ),
        Family::Fallbacks => (
            "fallbacks",
            "Packets the fast path declined and left to the host stack, by reason",
        ),
        Family::FragmentEvents => (
            "fragment_events",
            "Incoming fragments held until their first fragment (parked), sent on (released), and re-entered as clones (reentered)",
        ),
        Family::FlowsCreated => ("flows_created", "Flows created (a NAT port was claimed)"),
        Family::PortsSkippedForHostSockets => (
            "ports_skipped_for_host_sockets",
            "Candidate NAT ports skipped because a socket of the host uses them",
        ),
        Family::FlowsYieldedToHost => (
            "flows_yielded_to_host",
            "Flows removed because a connection of the host itself took their tuple on the NAT address",
        ),
        Family::TranslatedIcmpErrorsOut => (
            "translated_icmp_errors_out",
            "ICMP errors about a pod's flow leaving through the uplink (the host's or the pod's), translated to the NAT address",
        ),
        Family::TcpOutOfWindow => (
            "tcp_out_of_window_segments",
            "TCP RST or FIN from outside whose sequence number lies outside the pod's window: passed on, the flow's state kept",
        ),
        Family::FlowsEarlyDropped => (
            "flows_early_dropped",
            "Unreplied flows removed to make room in a full conntrack table",
        ),
    }
}

impl Sample {
    fn encode_counters(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &family in Family::ALL {
            let (name, help) = family_metric(family);
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (counter, value) in self.counters.iter().filter(|(c, _)| c.family() == family) {
                match counter.label() {
                    Some(label) => metric
                        .encode_family(&[label])?
                        .encode_counter::<NoLabelSet, _, u64>(value, None)?,
                    None => metric.encode_counter::<NoLabelSet, _, u64>(value, None)?,
                }
            }
        }
        Ok(())
    }

    fn encode_tables(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut flows = encoder.encode_descriptor(
            "flows",
            "Tracked flows (one per connection, both directions), by protocol and state as `bpfmasq conntrack list` shows them",
            None,
            MetricType::Gauge,
        )?;
        for ((protocol, state), count) in &self.flows {
            flows
                .encode_family(&[("protocol", *protocol), ("state", *state)])?
                .encode_gauge(count)?;
        }
        gauge(
            encoder,
            "conntrack_entries",
            "Entries in the conntrack map (two per flow, one per direction)",
            self.conntrack_entries,
        )?;
        gauge(
            encoder,
            "conntrack_capacity",
            "Entries the conntrack map holds at most (two per flow: 2 x --ct-max)",
            self.conntrack_capacity,
        )?;
        let mut pressure = encoder.encode_descriptor(
            "map_pressure",
            "Fill ratio (0 to 1) of each bounded map of the datapath: conntrack full means new flows dropped (drops_total{reason=\"table_full\"}); the LRU fragment tables forget the oldest datagrams",
            None,
            MetricType::Gauge,
        )?;
        for map in &self.maps {
            pressure
                .encode_family(&[("map", map.name.as_str())])?
                .encode_gauge(&map.ratio())?;
        }
        let mut ports = encoder.encode_descriptor(
            "nat_port_usage_ratio",
            "Share (0 to 1) of the NAT port range in use towards a destination (protocol, address:port; address for ICMP), for the 10 most-used destinations: at 1 new flows to it are dropped (drops_total{reason=\"no_port\"})",
            None,
            MetricType::Gauge,
        )?;
        for (protocol, destination, ratio) in &self.port_usage {
            ports
                .encode_family(&[
                    ("protocol", *protocol),
                    ("destination", destination.as_str()),
                ])?
                .encode_gauge(ratio)?;
        }
        self.encode_containers(encoder)
    }

    fn encode_containers(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut flows = encoder.encode_descriptor(
            "container_flows",
            "Flows of each container the CNI plugin attached (by its 12-character id and interface)",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.containers {
            flows
                .encode_family(&[("container", c.id.as_str()), ("ifname", c.ifname.as_str())])?
                .encode_gauge(&c.flows)?;
        }
        // A gauge, not a counter: the bytes of the container's flows now in
        // the table, which drop when flows expire.
        let mut bytes = encoder.encode_descriptor(
            "container_flow_bytes",
            "Bytes of the flows of each container now in the table, by direction (out: from the container)",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.containers {
            for (direction, value) in [("out", c.bytes_out), ("in", c.bytes_in)] {
                bytes
                    .encode_family(&[
                        ("container", c.id.as_str()),
                        ("ifname", c.ifname.as_str()),
                        ("direction", direction),
                    ])?
                    .encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for Sample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_counters(&mut encoder)?;
        self.encode_tables(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::flow::{FlowEntry, FlowKey};

    use super::*;

    fn flow(proto: u8, dst: [u8; 4], dst_port: u16, nat_port: u16) -> FlowView {
        let key = FlowKey::new(
            u32::from_ne_bytes([10, 85, 0, 2]),
            u32::from_ne_bytes(dst),
            1000u16.to_be(),
            dst_port.to_be(),
            proto,
        );
        FlowView {
            key,
            original: FlowEntry {
                rewrite_port: nat_port.to_be(),
                ..Default::default()
            },
            reply_key: key,
            reply: None,
        }
    }

    #[test]
    fn port_usage_ranks_destinations_by_ports_of_the_range_in_use() {
        let mut flows = Vec::new();
        for port in 100..104 {
            flows.push(flow(IPPROTO_TCP, [192, 0, 2, 1], 80, port));
        }
        flows.push(flow(IPPROTO_UDP, [192, 0, 2, 1], 53, 100));
        // Outside the range (made under an earlier --port-range): uses none of it.
        flows.push(flow(IPPROTO_UDP, [192, 0, 2, 1], 53, 5000));
        flows.push(flow(IPPROTO_ICMP, [192, 0, 2, 9], 0, 101));
        let usage = port_usage(&flows, 100, 109);
        assert_eq!(
            usage,
            vec![
                ("tcp", "192.0.2.1:80".to_owned(), 0.4),
                ("icmp", "192.0.2.9".to_owned(), 0.1),
                ("udp", "192.0.2.1:53".to_owned(), 0.1),
            ]
        );
    }

    #[test]
    fn port_usage_keeps_the_top_destinations_only() {
        let flows: Vec<FlowView> = (0..30u8)
            .flat_map(|i| {
                (0..u16::from(i) + 1).map(move |p| flow(IPPROTO_TCP, [192, 0, 2, i], 443, 1000 + p))
            })
            .collect();
        let usage = port_usage(&flows, 1000, 1999);
        assert_eq!(usage.len(), TOP_DESTINATIONS);
        assert_eq!(usage[0].1, "192.0.2.29:443");
        assert!(usage.windows(2).all(|w| w[0].2 >= w[1].2));
    }

    #[test]
    fn every_counter_and_every_container_is_exported() {
        let sample = Sample {
            counters: Counter::ALL.iter().map(|&c| (c, 0)).collect(),
            flows: BTreeMap::new(),
            conntrack_entries: 0,
            conntrack_capacity: 0,
            maps: Vec::new(),
            port_usage: Vec::new(),
            containers: vec![ContainerUsage {
                id: "3f2a9c1b7d4e".to_owned(),
                ifname: "eth0".to_owned(),
                flows: 2,
                bytes_out: 10,
                bytes_in: 20,
            }],
        };
        let mut registry = prometheus_client::registry::Registry::with_prefix("bpfmasq");
        registry.register_collector(Box::new(sample));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for &counter in Counter::ALL {
            let (name, _) = family_metric(counter.family());
            let series = match counter.label() {
                Some((key, value)) => format!("bpfmasq_{name}_total{{{key}=\"{value}\"}} 0\n"),
                None => format!("bpfmasq_{name}_total 0\n"),
            };
            assert!(
                text.contains(&series),
                "{} missing: no `{series}` in\n{text}",
                counter.name()
            );
        }
        for series in [
            "bpfmasq_container_flows{container=\"3f2a9c1b7d4e\",ifname=\"eth0\"} 2\n",
            "bpfmasq_container_flow_bytes{container=\"3f2a9c1b7d4e\",ifname=\"eth0\",direction=\"in\"} 20\n",
        ] {
            assert!(text.contains(series), "no `{series}` in\n{text}");
        }
    }
}
