//! Command-line interface: one verb per lifecycle step. Parsed here, in the
//! binary, and turned once into the library's own option types
//! (`From` impls at the end); the library knows nothing of clap.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use bpfmasq::{
    cni_config::CniPaths,
    daemon::RunOptions,
    datapath::options::{AttachOptions, LinkType as LibLinkType, PortRange, TimeoutOverride},
    inspect::{FlowFilter, Proto, Query, TraceFilter, TraceOptions},
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;

#[derive(Debug, Parser)]
#[command(
    name = "bpfmasq",
    version,
    about = "eBPF masquerade (SNAT) for container hosts, in place of iptables MASQUERADE",
    long_about = "bpfmasq masquerades traffic from a container bridge's pod network to the \
                  uplink's address with TC eBPF programs and a conntrack map, instead of \
                  per-container iptables chains.\n\n\
                  Try it on the built-in lab:\n  \
                  bpfmasq lab up\n  \
                  bpfmasq --netns lab-host attach --bridge cni0 --uplink eth0\n  \
                  bpfmasq lab exec c1 -- ping -c 3 192.168.61.12\n  \
                  bpfmasq --netns lab-host conntrack list\n  \
                  bpfmasq --netns lab-host detach --uplink eth0\n  \
                  bpfmasq lab down"
)]
pub struct Cli {
    /// Run the command inside this named network namespace (/run/netns/NAME).
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    /// Print more on failure: the kernel verifier's whole log when it rejects a program.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, inspect and remove the lab: a host, an outside peer and containers, all in namespaces.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Load the NAT programs, attach them to the uplink and pin them; returns once traffic flows.
    Attach(AttachArgs),
    /// Remove every program, link, qdisc and pin that `attach` created.
    Detach(DetachArgs),
    /// Show the conntrack (NAT) table.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Show the containers a runtime attached through the CNI plugin `bpfmasq-cni`: id,
    /// interface, addresses, host veth, and their flows and bytes.
    Containers(InstanceArgs),
    /// Show the datapath counters, summed over CPUs.
    Stats(StatsArgs),
    /// Show what is attached where, the configuration and how full the table is.
    Status(InstanceArgs),
    /// The foreground daemon: attach (or adopt the pinned datapath), expire flows, follow the uplink's address.
    Run(RunArgs),
    /// Run one garbage-collection sweep of the conntrack table now and report it.
    Gc(InstanceArgs),
    /// Follow packets through the datapath as it decides on them: one line per packet with its
    /// program, tuple before and after, verdict and the counter that says why.
    #[command(
        long_about = "Follow packets through the datapath as it decides on them, like \
        tcpdump for bpfmasq: one line per matching packet with the time, the program \
        (uplink_egress, uplink_ingress, bridge_ingress), the packet's tuple when the program \
        got it and, when it changed it, as it left (`=>`), the verdict (translated, passed, \
        dropped, fast path, fallback, held) and the counter of `bpfmasq stats` that says why.\n\n\
        --src and --dst work as in `conntrack list`: the pod's side and the peer's side of a \
        flow, whichever way the packet goes (a reply matches --src POD too). Up to 4 traces can \
        run at once; while none runs the datapath pays one check per packet. Events the trace \
        could not keep up with are counted and reported as lost.\n\n\
        Example: bpfmasq --netns lab-host trace --src 10.85.0.2/32 --proto icmp --count 4"
    )]
    Trace(TraceArgs),
    /// Show what this kernel offers bpfmasq: features, attach mode, fast path, and each program's
    /// verifier budget (the programs are loaded for real, nothing is attached).
    Probe(JsonArgs),
    /// Put the bpfmasq-cni plugin on this node (or take it off): for the DaemonSet's init
    /// container, see deploy/kubernetes.
    #[command(subcommand)]
    CniConfig(CniConfigCommand),
    /// Mount the BPF filesystem at /sys/fs/bpf unless one is there. attach and run do this
    /// themselves; this is for an init container whose /sys/fs/bpf is the host's (mounted
    /// Bidirectional), so the pins outlive the daemon's container.
    MountBpffs,
}

#[derive(Debug, Subcommand)]
pub enum CniConfigCommand {
    /// Copy the plugin into the CNI bin folder; in the first *.conflist with a `bridge` plugin
    /// set the bridge's ipMasq to false and add {"type": "bpfmasq-cni"} right after it.
    /// Idempotent; files are replaced atomically.
    Install(CniInstallArgs),
    /// Take the plugin out of that conflist (the bridge's ipMasq back to true, so the
    /// runtime's iptables masquerade returns for new pods) and its binary away.
    Remove(CniPathArgs),
}

#[derive(Debug, Args)]
pub struct CniPathArgs {
    /// The node's CNI configuration folder.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The node's CNI plugin folder.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CniInstallArgs {
    #[command(flatten)]
    pub paths: CniPathArgs,
    /// The plugin binary to copy (in the image: /bpfmasq-cni).
    #[arg(long, value_name = "FILE", default_value = "/bpfmasq-cni")]
    pub plugin: PathBuf,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create the lab: NAME-host (bridge cni0, uplink eth0), NAME-out (outside peer), NAME-c1..cN; NAME-far with --far-peer.
    Up(LabUpArgs),
    /// Remove the lab's namespaces, interfaces and any datapath pinned in it.
    Down(LabNameArgs),
    /// Show the lab's namespaces, interfaces and addresses.
    Status(LabStatusArgs),
    /// Run a command in a lab node: `host`, `out`, `far` (with --far-peer) or `c1`..`cN`.
    Exec(LabExecArgs),
}

#[derive(Debug, Args)]
pub struct LabNameArgs {
    /// Lab name; namespaces are called NAME-host, NAME-out, NAME-c1...
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub lab: LabNameArgs,
    /// Number of containers (namespaces NAME-c1..NAME-cN, 10.85.0.2 upwards).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub containers: u16,
    /// Also build NAME-far (198.51.100.2), one routed hop beyond NAME-out over a 1280-byte MTU
    /// link: traceroute from a container shows the hop past the uplink, and TCP to NAME-far needs
    /// path MTU discovery (NAME-far announces MSS 1460). Both rely on NAME-out's ICMP errors,
    /// sent to the NAT address, being translated back to the container.
    #[arg(long)]
    pub far_peer: bool,
}

#[derive(Debug, Args)]
pub struct LabStatusArgs {
    #[command(flatten)]
    pub lab: LabNameArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabExecArgs {
    #[command(flatten)]
    pub lab: LabNameArgs,
    /// Node to run in: host, out, far, c1, c2, ...
    pub node: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// Which TC attachment to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LinkType {
    /// tcx when the kernel has it, else clsact.
    #[default]
    Auto,
    /// tcx links (kernel >= 6.6).
    Tcx,
    /// clsact qdisc + cls_bpf filters (any kernel with BPF).
    Clsact,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The container bridge; its IPv4 subnet is the default pod CIDR.
    #[arg(long, value_name = "IFACE")]
    pub bridge: String,
    /// The interface traffic leaves through; its primary IPv4 address is the NAT address.
    #[arg(long, value_name = "IFACE")]
    pub uplink: String,
    /// Pod network to masquerade (default: the bridge's subnet).
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<Ipv4Net>,
    /// Destination never masqueraded (repeatable); the pod CIDR, 224.0.0.0/4 and 255.255.255.255 always are.
    #[arg(long = "no-masq", value_name = "CIDR")]
    pub no_masq: Vec<Ipv4Net>,
    /// Ports (and ICMP identifiers) translated flows may use, e.g. 32768-60999.
    #[arg(long, value_name = "LO-HI")]
    pub port_range: Option<PortRange>,
    /// Address to masquerade to (default: the uplink's primary IPv4 address).
    #[arg(long, value_name = "ADDR")]
    pub nat_address: Option<Ipv4Addr>,
    /// Maximum number of tracked flows (like nf_conntrack_max).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub ct_max: u32,
    /// Most flows one pod address may hold, so that one pod opening flows to everywhere cannot
    /// lock the others out (0: no limit but --ct-max). New flows past it are dropped and counted
    /// (drop_pod_flow_limit); `bpfmasq run` recounts every pod's flows each sweep.
    #[arg(long, default_value_t = 0, value_name = "FLOWS")]
    pub ct_max_per_pod: u32,
    /// Idle timeout override, NAME=SECONDS (repeatable); names: tcp-syn-sent, tcp-syn-recv,
    /// tcp-established, tcp-fin-wait, tcp-close-wait, tcp-time-wait, tcp-close, udp-unreplied,
    /// udp-replied, udp-stream, icmp. Defaults are nf_conntrack's (e.g. tcp-established=432000,
    /// udp-unreplied=30, udp-replied=30 for a lone answer, udp-stream=120 once traffic follows it).
    #[arg(long = "timeout", value_name = "NAME=SECONDS")]
    pub timeouts: Vec<TimeoutOverride>,
    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t)]
    pub link_type: LinkType,
    /// Forward masqueraded traffic between bridge and uplink in eBPF, past the host's IP stack
    /// (and so past its netfilter FORWARD/POSTROUTING rules); what it cannot handle takes the
    /// normal path. `run` switches it on an adopted datapath too.
    #[arg(long, value_enum, default_value = "on", value_name = "on|off")]
    pub fast_path: Switch,
    /// Take over from the CNI plugin's masquerade without dropping a connection: import
    /// nf_conntrack's source-NAT connections of the pod network (same NAT ports), attach, then
    /// remove the plugin's iptables CNI-* chains / nftables table `inet cni_plugins_masquerade`
    /// (saved for `detach --handback`).
    #[arg(long)]
    pub takeover: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The uplink given to `attach` (default: the only datapath attached in this namespace).
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Hand the live connections back to netfilter first: create an nf_conntrack entry with
    /// each flow's NAT binding, restore the masquerade rules `attach --takeover` removed (or
    /// the CNI plugin's iptables shape for the pod network), then detach.
    #[arg(long)]
    pub handback: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Detach the datapath when the daemon stops (default: leave it working, pinned).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Seconds between garbage-collection sweeps.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gc_interval: u64,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9781): every datapath
    /// counter, flows by protocol and state, table and map fill, NAT port usage of the busiest
    /// destinations, garbage collection. Off by default; README shows a scrape config and alerts.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_address: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum ConntrackCommand {
    /// List tracked flows: original and translated tuple, state, expiry, packets and bytes each way.
    List(ConntrackListArgs),
    /// Count tracked flows (matching the filters).
    Count(ConntrackListArgs),
    /// Remove tracked flows matching the filters (all without filters), both directions together.
    Flush(ConntrackListArgs),
}

/// Which flows a conntrack verb applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoFilter {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Args)]
pub struct FlowFilterArgs {
    /// Only flows of this protocol.
    #[arg(long)]
    pub proto: Option<ProtoFilter>,
    /// Only flows whose pod (original source) address is in CIDR.
    #[arg(long, value_name = "CIDR")]
    pub src: Option<Ipv4Net>,
    /// Only flows whose peer (original destination) address is in CIDR.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<Ipv4Net>,
    /// Only flows of this container (id or unique prefix, as `bpfmasq containers` lists).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// The uplink of the datapath to read (default: the only one attached in this namespace).
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConntrackListArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub filter: FlowFilterArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Refresh in place every second, with rates per second, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Only packets of this protocol.
    #[arg(long)]
    pub proto: Option<ProtoFilter>,
    /// Only packets of flows whose pod side (the source going out, the destination coming
    /// back) is in CIDR, before or after translation.
    #[arg(long, value_name = "CIDR")]
    pub src: Option<Ipv4Net>,
    /// Only packets of flows whose peer side (the destination going out, the source coming
    /// back) is in CIDR.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<Ipv4Net>,
    /// Only TCP/UDP packets with this port on either side, before or after translation.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Stop after N matching packets.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

impl From<LinkType> for LibLinkType {
    fn from(link_type: LinkType) -> Self {
        match link_type {
            LinkType::Auto => LibLinkType::Auto,
            LinkType::Tcx => LibLinkType::Tcx,
            LinkType::Clsact => LibLinkType::Clsact,
        }
    }
}

impl From<AttachArgs> for AttachOptions {
    fn from(args: AttachArgs) -> Self {
        Self {
            bridge: args.bridge,
            uplink: args.uplink,
            pod_cidr: args.pod_cidr,
            no_masq: args.no_masq,
            port_range: args.port_range,
            nat_address: args.nat_address,
            ct_max: args.ct_max,
            ct_max_per_pod: args.ct_max_per_pod,
            timeouts: args.timeouts,
            link_type: args.link_type.into(),
            fast_path: args.fast_path == Switch::On,
            takeover: args.takeover,
            known_containers: Vec::new(),
        }
    }
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> Self {
        Self {
            attach: args.attach.into(),
            detach_on_exit: args.detach_on_exit,
            gc_interval: Duration::from_secs(args.gc_interval),
            metrics_address: args.metrics_address,
        }
    }
}

impl From<InstanceArgs> for Query {
    fn from(args: InstanceArgs) -> Self {
        Self {
            uplink: args.uplink,
            json: args.json,
        }
    }
}

impl From<ProtoFilter> for Proto {
    fn from(proto: ProtoFilter) -> Self {
        match proto {
            ProtoFilter::Tcp => Proto::Tcp,
            ProtoFilter::Udp => Proto::Udp,
            ProtoFilter::Icmp => Proto::Icmp,
        }
    }
}

impl From<FlowFilterArgs> for FlowFilter {
    fn from(args: FlowFilterArgs) -> Self {
        Self {
            proto: args.proto.map(Proto::from),
            src: args.src,
            dst: args.dst,
            container: args.container,
        }
    }
}

impl From<&TraceArgs> for TraceOptions {
    fn from(args: &TraceArgs) -> Self {
        Self {
            filter: TraceFilter {
                proto: args.proto.map(Proto::from),
                src: args.src,
                dst: args.dst,
                port: args.port,
            },
            count: args.count,
        }
    }
}

impl From<CniPathArgs> for CniPaths {
    fn from(args: CniPathArgs) -> Self {
        Self {
            conf_dir: args.conf_dir,
            bin_dir: args.bin_dir,
        }
    }
}
