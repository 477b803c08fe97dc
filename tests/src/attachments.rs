//! What a datapath has in a lab's host, as the kernel, tc and bpfmasq
//! itself show it: pins, tcx programs, tc filters and clsact qdiscs on the
//! uplink and the bridge, tcx programs and tc filters on the containers'
//! ports (their host-side veths), and whether `status` still finds a
//! datapath. A detach must leave none of it.

use std::{fmt, path::PathBuf};

use aya::programs::{SchedClassifier, TcAttachType};

use crate::{
    kernel,
    lab::{Lab, PIN_ROOT, files_under},
    product::bpfmasq,
    topology::{BRIDGE, HOST, UPLINK},
};
use bpfmasq::lab::container_veth;

/// Every hook the datapath could use: interface and direction.
const HOOKS: [(&str, TcAttachType); 4] = [
    (UPLINK, TcAttachType::Ingress),
    (UPLINK, TcAttachType::Egress),
    (BRIDGE, TcAttachType::Ingress),
    (BRIDGE, TcAttachType::Egress),
];

/// Everything of a datapath found in a lab's host, one entry per thing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Files and folders under the host's pin folder (`/sys/fs/bpf/bpfmasq/<netns>`).
    pub pins: Vec<PathBuf>,
    /// tcx programs by hook, `eth0 Ingress: uplink_ingress` (looked for only
    /// on kernels with tcx: older ones cannot have any).
    pub tcx_programs: Vec<String>,
    /// `tc filter show` of each hook that has filters, `eth0 ingress: <listing>`.
    pub filters: Vec<String>,
    /// Interfaces with a clsact qdisc.
    pub clsact_qdiscs: Vec<String>,
    /// `bpfmasq status` still finds a datapath in the host.
    pub status_finds_one: bool,
}

impl Attachments {
    /// Looks at everything in `lab`'s host now.
    pub fn of(lab: &Lab) -> Self {
        let host_pins = PathBuf::from(PIN_ROOT).join(lab.host_ns());
        let mut pins = files_under(&host_pins);
        if lab.pins_dir().exists() {
            pins.push(lab.pins_dir());
        }
        // A container's port keeps an empty clsact qdisc (it goes with the
        // container): only its filter must go.
        let ports: Vec<(String, TcAttachType)> = (1..=lab.containers())
            .map(|i| (container_veth(i), TcAttachType::Ingress))
            .collect();
        let hooks: Vec<(&str, TcAttachType)> = HOOKS
            .iter()
            .copied()
            .chain(ports.iter().map(|(iface, hook)| (iface.as_str(), *hook)))
            .collect();
        let tcx_programs = if kernel::has_tcx() {
            hooks
                .iter()
                .flat_map(|&hook| tcx_programs(lab, hook))
                .collect()
        } else {
            Vec::new()
        };
        let filters = hooks
            .iter()
            .filter_map(|&(iface, attach_type)| {
                let dir = tc_direction(attach_type);
                let listing = lab.exec_ok(HOST, &["tc", "filter", "show", "dev", iface, dir]);
                let listing = listing.trim();
                (!listing.is_empty()).then(|| format!("{iface} {dir}: {listing}"))
            })
            .collect();
        let clsact_qdiscs = [UPLINK, BRIDGE]
            .into_iter()
            .filter(|iface| qdiscs(lab, iface).contains("clsact"))
            .map(str::to_owned)
            .collect();
        let status = bpfmasq(["--netns", &lab.host_ns(), "status"]);
        Self {
            pins,
            tcx_programs,
            filters,
            clsact_qdiscs,
            status_finds_one: status.status.success(),
        }
    }

    /// Whether nothing at all was found.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pins: {:?}", self.pins)?;
        writeln!(f, "tcx programs: {:?}", self.tcx_programs)?;
        writeln!(f, "tc filters: {:?}", self.filters)?;
        writeln!(f, "clsact qdiscs on: {:?}", self.clsact_qdiscs)?;
        write!(
            f,
            "`bpfmasq status` finds a datapath: {}",
            self.status_finds_one
        )
    }
}

/// The tcx programs attached at one hook of the lab's host.
fn tcx_programs(lab: &Lab, (iface, attach_type): (&str, TcAttachType)) -> Vec<String> {
    let programs = lab
        .run_in(HOST, || SchedClassifier::query_tcx(iface, attach_type))
        .unwrap_or_else(|e| panic!("querying tcx programs on {iface} ({attach_type:?}): {e}"))
        .1;
    programs
        .iter()
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?");
            format!("{iface} {attach_type:?}: {name}")
        })
        .collect()
}

fn tc_direction(attach_type: TcAttachType) -> &'static str {
    match attach_type {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => unreachable!("only ingress and egress hooks"),
    }
}

/// `tc qdisc show dev IFACE` in the lab's host.
pub fn qdiscs(lab: &Lab, iface: &str) -> String {
    lab.exec_ok(HOST, &["tc", "qdisc", "show", "dev", iface])
}
