//! Parsing and resolving `attach` options.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{Result, anyhow, bail};
use dataplane_common::{
    config::{DatapathRecord, FLAG_FAST_PATH, LAYOUT_VERSION, NatConfig},
    conntrack::Timeouts,
    maps::NO_MASQ_ENTRIES,
    ports::{DEFAULT_PORT_MAX, DEFAULT_PORT_MIN},
};
use ipnet::Ipv4Net;

use super::kernel::Kernel;
use crate::netlink::Netlink;

/// What `attach` and `run` are asked to do, as the library takes it (the
/// binary turns its command line into this once); [`Resolved::resolve`]
/// fills in the rest from the interfaces and the kernel.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// The container bridge; its IPv4 subnet is the default pod CIDR.
    pub bridge: String,
    /// The interface traffic leaves through; its primary IPv4 address is the
    /// default NAT address.
    pub uplink: String,
    pub pod_cidr: Option<Ipv4Net>,
    /// Destinations never masqueraded, besides the built-in ones.
    pub no_masq: Vec<Ipv4Net>,
    pub port_range: Option<PortRange>,
    pub nat_address: Option<Ipv4Addr>,
    /// Maximum number of flows.
    pub ct_max: u32,
    /// Maximum number of flows per pod address (0: none).
    pub ct_max_per_pod: u32,
    pub timeouts: Vec<TimeoutOverride>,
    pub link_type: LinkType,
    /// Asked for the fast path (the kernel may not have what it needs).
    pub fast_path: bool,
    /// Take the pod network's connections and masquerade over from netfilter.
    pub takeover: bool,
    /// Containers the caller knows (a lab's): recorded, and their bridge
    /// ports' sources checked, as the CNI plugin's ADD does for its own.
    pub known_containers: Vec<KnownContainer>,
}

/// A container on the bridge, as whoever created it knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownContainer {
    pub id: String,
    /// Its interface inside the container.
    pub ifname: String,
    /// The host-side veth: its bridge port.
    pub host_veth: String,
    pub ips: Vec<Ipv4Addr>,
}

/// How to attach the TC programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkType {
    /// tcx links where the kernel has them, else clsact.
    #[default]
    Auto,
    /// tcx links (kernel 6.6 and later).
    Tcx,
    /// A clsact qdisc with cls_bpf filters (any kernel with BPF).
    Clsact,
}

/// `--port-range LO-HI`, inclusive, 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s.split_once('-').ok_or_else(|| {
            format!("`{s}` is not a port range; expected LO-HI, e.g. 32768-60999")
        })?;
        let parse = |p: &str| -> Result<u16, String> {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&v| v != 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
        };
        let (min, max) = (parse(lo)?, parse(hi)?);
        if min > max {
            return Err(format!("port range `{s}` is empty: {min} > {max}"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// `--timeout NAME=SECONDS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutOverride {
    pub name: String,
    pub seconds: u32,
}

impl FromStr for TimeoutOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, seconds) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not NAME=SECONDS, e.g. udp-unreplied=30"))?;
        let seconds: u32 = seconds
            .trim()
            .parse()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("`{seconds}` is not a number of seconds (1 or more)"))?;
        if !Timeouts::default().set(name, seconds) {
            let names: Vec<&str> = Timeouts::default()
                .named()
                .iter()
                .map(|(n, _)| *n)
                .collect();
            return Err(format!(
                "unknown timeout `{name}`; one of: {}",
                names.join(", ")
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            seconds,
        })
    }
}

/// nf_conntrack's defaults with the overrides applied.
pub fn timeouts(overrides: &[TimeoutOverride]) -> Timeouts {
    let mut timeouts = Timeouts::default();
    for o in overrides {
        timeouts.set(&o.name, o.seconds);
    }
    timeouts
}

/// Everything `attach` needs, resolved against the interfaces.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub bridge: String,
    pub bridge_ifindex: u32,
    pub uplink: String,
    pub uplink_ifindex: u32,
    pub pod_cidr: Ipv4Net,
    pub nat_addr: Ipv4Addr,
    /// Destinations never masqueraded, including the built-in ones.
    pub no_masq: Vec<Ipv4Net>,
    pub ports: PortRange,
    pub ct_max: u32,
    pub ct_max_per_pod: u32,
    pub timeouts: Timeouts,
    /// `--fast-path on`, and the kernel can run it.
    pub fast_path: bool,
    /// What the running kernel offers.
    pub kernel: Kernel,
    /// [`AttachOptions::known_containers`].
    pub known_containers: Vec<KnownContainer>,
}

/// Multicast and limited broadcast: never masqueraded (the CNI chain's
/// `! -d 224.0.0.0/4`; broadcasts never leave a link).
pub fn builtin_no_masq() -> [Ipv4Net; 2] {
    [
        Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix"),
        Ipv4Net::new(Ipv4Addr::BROADCAST, 32).expect("valid prefix"),
    ]
}

impl Resolved {
    /// Looks the interfaces up and fills in the defaults: the pod CIDR from
    /// the bridge's address, the NAT address from the uplink's primary one.
    /// Probes the kernel too, refusing one that lacks what bpfmasq needs.
    pub async fn resolve(netlink: &Netlink, args: &AttachOptions) -> Result<Self> {
        let kernel = Kernel::probe();
        kernel.check_required()?;
        if args.bridge == args.uplink {
            bail!(
                "--bridge and --uplink are the same interface `{}`",
                args.bridge
            );
        }
        let bridge_ifindex = netlink.ethernet_link_index(&args.bridge).await?;
        let uplink_ifindex = netlink.ethernet_link_index(&args.uplink).await?;
        let pod_cidr = match args.pod_cidr {
            Some(cidr) => cidr.trunc(),
            None => netlink
                .ipv4_addrs(bridge_ifindex)
                .await?
                .first()
                .map(Ipv4Net::trunc)
                .ok_or_else(|| {
                    anyhow!(
                        "bridge `{}` has no IPv4 address; give the pod network with --pod-cidr",
                        args.bridge
                    )
                })?,
        };
        let nat_addr = match args.nat_address {
            Some(addr) => addr,
            None => netlink
                .ipv4_addrs(uplink_ifindex)
                .await?
                .first()
                .map(Ipv4Net::addr)
                .ok_or_else(|| {
                    anyhow!(
                        "uplink `{}` has no IPv4 address to masquerade to",
                        args.uplink
                    )
                })?,
        };
        if pod_cidr.contains(&nat_addr) {
            bail!("the NAT address {nat_addr} lies inside the pod network {pod_cidr}");
        }
        let mut no_masq = vec![pod_cidr];
        no_masq.extend(builtin_no_masq());
        no_masq.extend(args.no_masq.iter().map(Ipv4Net::trunc));
        if no_masq.len() > NO_MASQ_ENTRIES as usize {
            bail!(
                "too many --no-masq entries (at most {})",
                NO_MASQ_ENTRIES as usize - 3
            );
        }
        Ok(Self {
            bridge: args.bridge.clone(),
            bridge_ifindex,
            uplink: args.uplink.clone(),
            uplink_ifindex,
            pod_cidr,
            nat_addr,
            no_masq,
            ports: args.port_range.unwrap_or(PortRange {
                min: DEFAULT_PORT_MIN,
                max: DEFAULT_PORT_MAX,
            }),
            ct_max: args.ct_max,
            ct_max_per_pod: args.ct_max_per_pod,
            timeouts: timeouts(&args.timeouts),
            fast_path: args.fast_path && kernel.fast_path_unavailable().is_none(),
            kernel,
            known_containers: args.known_containers.clone(),
        })
    }

    /// The CONFIG map's value.
    pub fn nat_config(&self) -> NatConfig {
        NatConfig {
            pod_net: u32::from_ne_bytes(self.pod_cidr.network().octets()),
            pod_mask: u32::from_ne_bytes(self.pod_cidr.netmask().octets()),
            nat_addr: u32::from_ne_bytes(self.nat_addr.octets()),
            port_min: self.ports.min,
            port_max: self.ports.max,
            uplink_ifindex: self.uplink_ifindex,
            bridge_ifindex: self.bridge_ifindex,
            flags: if self.fast_path { FLAG_FAST_PATH } else { 0 },
            ct_max_per_pod: self.ct_max_per_pod,
        }
    }

    /// The RECORD map's value (the attachment is filled in after attaching).
    pub fn record(&self) -> DatapathRecord {
        DatapathRecord {
            layout_version: LAYOUT_VERSION,
            timeouts: self.timeouts,
            ct_max: self.ct_max,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts() {
        let o: TimeoutOverride = "udp-unreplied=5".parse().unwrap();
        assert_eq!(timeouts(&[o]).udp_unreplied, 5);
        for bad in ["udp=5", "udp-unreplied", "udp-unreplied=0", "icmp=x"] {
            assert!(bad.parse::<TimeoutOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            "32768-60999".parse(),
            Ok(PortRange {
                min: 32768,
                max: 60999
            })
        );
        assert_eq!("5-5".parse(), Ok(PortRange { min: 5, max: 5 }));
        for bad in ["", "1", "0-10", "10-1", "a-b", "1-70000", "1--2"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
