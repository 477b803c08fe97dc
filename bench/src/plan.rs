//! What a bench run measures and in which order: the variants, the scale
//! axis, the workloads and the interleaved schedule. Pure: nothing here
//! touches the system, so the schedule is unit-tested.

use std::{fmt, time::Duration};

use serde::Serialize;

/// One way of getting the containers' traffic out: every variant runs the
/// same workloads on the same lab, interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// No NAT: the outside peer gets a route back to the pod network.
    Routed,
    /// The CNI bridge plugin's iptables rules, one chain per container.
    Iptables,
    /// The newer bridge plugin's nftables masquerade, one rule per container.
    Nftables,
    /// nftables plus a flowtable (needs CONFIG_NF_FLOW_TABLE).
    NftablesFlowtable,
    /// bpfmasq attached to the uplink (tcx or clsact, whatever `attach` picks),
    /// the host forwarding (`--fast-path off`).
    Bpfmasq,
    /// bpfmasq with its fast path: forwarding in eBPF, past the host stack.
    BpfmasqFast,
}

impl Variant {
    pub const ALL: [Self; 6] = [
        Self::Routed,
        Self::Iptables,
        Self::Nftables,
        Self::NftablesFlowtable,
        Self::Bpfmasq,
        Self::BpfmasqFast,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::NftablesFlowtable => "nftables-flowtable",
            Self::Bpfmasq => "bpfmasq",
            Self::BpfmasqFast => "bpfmasq-fast",
        }
    }

    /// bpfmasq, with or without the fast path.
    pub const fn is_bpfmasq(self) -> bool {
        matches!(self, Self::Bpfmasq | Self::BpfmasqFast)
    }

    /// Whether the variant's configuration depends on the number of
    /// containers. Routing has no per-container state: it is measured once
    /// per repetition, at the first scale, and compared against every scale.
    pub const fn scales(self) -> bool {
        !matches!(self, Self::Routed)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one sample measures. Its name (CLI, JSON, table) is [`Workload::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Workload {
    /// Time to add and to remove one container's NAT with N registered.
    ControlPlane,
    /// iperf3, one TCP stream (Gbit/s).
    #[value(name = "tcp-stream-1")]
    TcpStream1,
    /// iperf3, four parallel TCP streams (Gbit/s).
    #[value(name = "tcp-stream-4")]
    TcpStream4,
    /// iperf3 -u -l 64 -b 0: 64-byte UDP payloads, packets/s received by the peer.
    #[value(name = "udp-64")]
    Udp64,
    /// wrk with `Connection: close` against nginx: new connections/s.
    ConnRate,
    /// Sequential connect() durations from the container (p50/p99).
    ConnectTime,
    /// sockperf ping-pong over UDP (round trip p50/p99).
    RrUdp,
    /// sockperf ping-pong over TCP (round trip p50/p99).
    RrTcp,
    /// bpfmasq's programs' run time per run (bpf_stats, on only during this
    /// sample): once under UDP-64 (an established flow), once under the
    /// connection-rate load (flow creation included).
    #[value(name = "ebpf-cost")]
    EbpfCost,
}

impl Workload {
    pub const ALL: [Self; 9] = [
        Self::ControlPlane,
        Self::TcpStream1,
        Self::TcpStream4,
        Self::Udp64,
        Self::ConnRate,
        Self::ConnectTime,
        Self::RrUdp,
        Self::RrTcp,
        Self::EbpfCost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::TcpStream1 => "tcp-stream-1",
            Self::TcpStream4 => "tcp-stream-4",
            Self::Udp64 => "udp-64",
            Self::ConnRate => "conn-rate",
            Self::ConnectTime => "connect-time",
            Self::RrUdp => "rr-udp",
            Self::RrTcp => "rr-tcp",
            Self::EbpfCost => "ebpf-cost",
        }
    }

    /// Whether the result can depend on N. Netfilter walks its per-container
    /// rules only for a connection's first packet (later ones hit the
    /// conntrack entry), so single-flow workloads are run at the smallest and
    /// largest scale only; the per-connection ones at every scale. UDP-64
    /// (one flow) is kept at every scale for the chart the issue asks for.
    pub const fn scale_sensitive(self) -> bool {
        matches!(
            self,
            Self::ControlPlane | Self::Udp64 | Self::ConnRate | Self::ConnectTime | Self::EbpfCost
        )
    }

    /// The metrics this workload reports, the first one being the headline.
    pub const fn metrics(self) -> &'static [Metric] {
        match self {
            Self::ControlPlane => &[Metric::AddMs, Metric::RemoveMs],
            Self::TcpStream1 | Self::TcpStream4 => &[Metric::Gbps],
            Self::Udp64 => &[Metric::RxKpps],
            Self::ConnRate => &[Metric::ConnPerSec],
            Self::ConnectTime | Self::RrUdp | Self::RrTcp => &[Metric::P50Us, Metric::P99Us],
            Self::EbpfCost => &[Metric::BpfNsUdp, Metric::BpfNsConn],
        }
    }

    /// The unit of work CPU time is divided by, and its printed name.
    pub const fn work_unit(self) -> Option<(&'static str, f64)> {
        // (name, scale from the raw unit count): CPU µs per packet/connection/
        // round trip, CPU ms per GB for streams.
        match self {
            Self::ControlPlane | Self::EbpfCost => None,
            Self::TcpStream1 | Self::TcpStream4 => Some(("CPU ms/GB", 1e3 * 1e9)),
            Self::Udp64 => Some(("CPU µs/pkt", 1e6)),
            Self::ConnRate => Some(("CPU µs/conn", 1e6)),
            Self::ConnectTime => Some(("CPU µs/connect", 1e6)),
            Self::RrUdp | Self::RrTcp => Some(("CPU µs/round trip", 1e6)),
        }
    }

    /// Whether a variant has anything to measure for this workload (routing
    /// has no per-container NAT to add or remove; only bpfmasq runs eBPF).
    pub const fn applies_to(self, variant: Variant) -> bool {
        match self {
            Self::ControlPlane => !matches!(variant, Variant::Routed),
            Self::EbpfCost => variant.is_bpfmasq(),
            _ => true,
        }
    }
}

impl Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A measured quantity, with its unit and which direction is better.
/// Serialized (JSON keys) as [`Metric::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    Gbps,
    RxKpps,
    ConnPerSec,
    P50Us,
    P99Us,
    AddMs,
    RemoveMs,
    /// CPU time (all CPUs, /proc/stat) per unit of work.
    CpuPerUnit,
    /// eBPF run time per program run (bpf_stats) under UDP-64, bpfmasq only.
    BpfNsUdp,
    /// The same under the connection-rate load (flow creation included).
    BpfNsConn,
}

impl Metric {
    pub const fn key(self) -> &'static str {
        match self {
            Self::Gbps => "gbit_per_s",
            Self::RxKpps => "rx_kpps",
            Self::ConnPerSec => "conn_per_s",
            Self::P50Us => "p50_us",
            Self::P99Us => "p99_us",
            Self::AddMs => "add_ms",
            Self::RemoveMs => "remove_ms",
            Self::CpuPerUnit => "cpu_per_unit",
            Self::BpfNsUdp => "bpf_ns_per_run_udp",
            Self::BpfNsConn => "bpf_ns_per_run_conn",
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Gbps => "Gbit/s",
            Self::RxKpps => "kpps rx",
            Self::ConnPerSec => "conn/s",
            Self::P50Us => "p50 µs",
            Self::P99Us => "p99 µs",
            Self::AddMs => "add ms",
            Self::RemoveMs => "remove ms",
            Self::CpuPerUnit => "CPU/unit",
            Self::BpfNsUdp => "ns/run, UDP flow",
            Self::BpfNsConn => "ns/run, new conns",
        }
    }

    pub const fn higher_is_better(self) -> bool {
        matches!(self, Self::Gbps | Self::RxKpps | Self::ConnPerSec)
    }
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key())
    }
}

/// How long each kind of sample runs. The tools take whole seconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Durations {
    /// UDP-64 and connection rate: the headline workloads.
    pub long_s: u32,
    /// TCP streams, ping-pong and connect timing.
    pub short_s: u32,
}

impl Durations {
    pub fn from_base(base_s: u32) -> Self {
        let base_s = base_s.max(1);
        Self {
            long_s: base_s,
            short_s: (base_s / 2).max(1),
        }
    }

    pub fn of(&self, workload: Workload) -> Duration {
        let s = match workload {
            Workload::ControlPlane => 0,
            Workload::Udp64 | Workload::ConnRate => self.long_s,
            // Two loads of the short duration each.
            Workload::EbpfCost => 2 * self.short_s,
            _ => self.short_s,
        };
        Duration::from_secs(u64::from(s))
    }
}

/// Everything a run measures.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub scales: Vec<u32>,
    pub repetitions: u32,
    pub variants: Vec<Variant>,
    pub workloads: Vec<Workload>,
    pub durations: Durations,
}

/// One variant set up at one scale in one repetition: it is configured,
/// runs its workloads back to back, and is torn down again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub repetition: u32,
    pub scale: u32,
    pub variant: Variant,
    pub workloads: Vec<Workload>,
}

/// Seconds a sample costs beyond its measuring time (starting tools,
/// warm-up, reading results), for the estimate only.
const SAMPLE_OVERHEAD_S: f64 = 0.4;
/// Seconds setting up and tearing down a variant costs, per 1000 containers
/// and fixed, for the estimate only.
const SETUP_S_PER_1000: f64 = 0.25;
const SETUP_FIXED_S: f64 = 0.3;
/// Add/remove trials in one control-plane sample.
pub const CONTROL_TRIALS: usize = 3;

impl Plan {
    /// The workloads run at `scale`: all of them at the smallest and the
    /// largest scale, only the scale-sensitive ones in between.
    pub fn workloads_at(&self, scale: u32) -> Vec<Workload> {
        let edge = self.scales.first() == Some(&scale) || self.scales.last() == Some(&scale);
        self.workloads
            .iter()
            .copied()
            .filter(|w| edge || w.scale_sensitive())
            .collect()
    }

    /// The schedule: repetitions outermost, so each variant's samples spread
    /// over the whole run; within a repetition and scale every variant in
    /// turn (A B C A B C ...), the starting variant rotating so no variant
    /// always runs first. Routing runs once per repetition, at the first
    /// scale. `runnable` filters out variants this machine cannot run.
    pub fn blocks(&self, runnable: impl Fn(Variant) -> bool) -> Vec<Block> {
        let variants: Vec<Variant> = self
            .variants
            .iter()
            .copied()
            .filter(|&v| runnable(v))
            .collect();
        let mut blocks = Vec::new();
        for repetition in 0..self.repetitions {
            for (scale_index, &scale) in self.scales.iter().enumerate() {
                let here: Vec<Variant> = variants
                    .iter()
                    .copied()
                    .filter(|v| v.scales() || scale_index == 0)
                    .collect();
                if here.is_empty() {
                    continue;
                }
                let shift = (repetition as usize + scale_index) % here.len();
                for i in 0..here.len() {
                    let variant = here[(i + shift) % here.len()];
                    let workloads: Vec<Workload> = self
                        .workloads_at(scale)
                        .into_iter()
                        .filter(|w| w.applies_to(variant))
                        .collect();
                    if !workloads.is_empty() {
                        blocks.push(Block {
                            repetition,
                            scale,
                            variant,
                            workloads,
                        });
                    }
                }
            }
        }
        blocks
    }

    /// Rough wall-clock estimate of `blocks`, in seconds.
    pub fn estimate_s(&self, blocks: &[Block]) -> f64 {
        blocks
            .iter()
            .map(|block| {
                let setup = SETUP_FIXED_S + SETUP_S_PER_1000 * f64::from(block.scale) / 1000.0;
                let samples: f64 = block
                    .workloads
                    .iter()
                    .map(|&w| self.durations.of(w).as_secs_f64() + SAMPLE_OVERHEAD_S)
                    .sum();
                setup + samples
            })
            .sum()
    }
}

/// Parses `1,100,1000` into scales (each 1..=60000: the pod /16 must hold them).
pub fn parse_scales(text: &str) -> Result<Vec<u32>, String> {
    let mut scales = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u32 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a number of containers"))?;
        if !(1..=MAX_SCALE).contains(&n) {
            return Err(format!("{n} containers: use 1 to {MAX_SCALE}"));
        }
        scales.push(n);
    }
    scales.sort_unstable();
    scales.dedup();
    if scales.is_empty() {
        return Err("no scale given".to_owned());
    }
    Ok(scales)
}

/// Most containers a scale may register: synthetic pod addresses are
/// 10.85.0.2 upwards and must stay inside 10.85.0.0/16, below the few
/// addresses the control-plane trials use.
pub const MAX_SCALE: u32 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scales: &[u32], reps: u32) -> Plan {
        Plan {
            scales: scales.to_vec(),
            repetitions: reps,
            variants: Variant::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            durations: Durations::from_base(2),
        }
    }

    #[test]
    fn routed_runs_once_per_repetition_at_the_first_scale() {
        let p = plan(&[1, 100, 1000, 10000], 5);
        let blocks = p.blocks(|_| true);
        let routed: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.variant == Variant::Routed)
            .collect();
        assert_eq!(routed.len(), 5);
        assert!(routed.iter().all(|b| b.scale == 1));
        assert!(
            routed
                .iter()
                .all(|b| !b.workloads.contains(&Workload::ControlPlane))
        );
        let iptables = blocks
            .iter()
            .filter(|b| b.variant == Variant::Iptables)
            .count();
        assert_eq!(iptables, 5 * 4);
    }

    #[test]
    fn variants_interleave_and_rotate() {
        let p = plan(&[1], 3);
        let blocks = p.blocks(|v| v != Variant::NftablesFlowtable);
        let order: Vec<Vec<Variant>> = blocks
            .chunks(5)
            .map(|c| c.iter().map(|b| b.variant).collect())
            .collect();
        assert_eq!(order.len(), 3);
        for rep in &order {
            let mut sorted = rep.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                [
                    Variant::Routed,
                    Variant::Iptables,
                    Variant::Nftables,
                    Variant::Bpfmasq,
                    Variant::BpfmasqFast
                ]
            );
        }
        assert_ne!(order[0][0], order[1][0], "the first variant rotates");
    }

    #[test]
    fn middle_scales_run_only_scale_sensitive_workloads() {
        let p = plan(&[1, 100, 10000], 1);
        assert_eq!(p.workloads_at(1).len(), Workload::ALL.len());
        assert_eq!(p.workloads_at(10000).len(), Workload::ALL.len());
        let middle = p.workloads_at(100);
        assert!(middle.iter().all(|w| w.scale_sensitive()));
        assert!(middle.contains(&Workload::ConnRate) && middle.contains(&Workload::Udp64));
    }

    #[test]
    fn default_full_run_fits_in_twenty_minutes() {
        // Five variants here (no flowtable): about 16.5 min estimated.
        let p = plan(&[1, 100, 1000, 10000], 5);
        let blocks = p.blocks(|v| v != Variant::NftablesFlowtable);
        let estimate = p.estimate_s(&blocks);
        assert!(estimate < 18.0 * 60.0, "{estimate} s");
    }

    #[test]
    fn scales_parse() {
        assert_eq!(parse_scales("100,1, 1000").unwrap(), [1, 100, 1000]);
        assert!(parse_scales("0").is_err());
        assert!(parse_scales("x").is_err());
        assert!(parse_scales("").is_err());
        assert!(parse_scales("70000").is_err());
    }

    #[test]
    fn names_agree_between_cli_json_and_table() {
        use clap::ValueEnum as _;
        for w in Workload::ALL {
            let cli = w.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), w.name());
            assert_eq!(serde_json::to_value(w).unwrap(), w.name());
        }
        for v in Variant::ALL {
            assert_eq!(v.to_possible_value().unwrap().get_name(), v.name());
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
    }

    #[test]
    fn durations_are_whole_seconds() {
        let d = Durations::from_base(2);
        assert_eq!(d.of(Workload::ConnRate), Duration::from_secs(2));
        assert_eq!(d.of(Workload::RrTcp), Duration::from_secs(1));
        let q = Durations::from_base(1);
        assert_eq!(q.of(Workload::TcpStream1), Duration::from_secs(1));
    }
}
