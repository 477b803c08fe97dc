//! The TC programs run on hand-built frames with BPF_PROG_TEST_RUN (aya's
//! `TestRun`), without a network: [`Programs`] is a loaded, configured,
//! unattached copy of them with its maps pinned in a folder of its own,
//! removed when it drops. The test run's device is the loopback (MAC all
//! zeroes), so [`frame_to_this_host`] builds what a routed frame looks like
//! to the bridge program; [`frame`] is anything else. Needs root.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use bpfmasq::{
    datapath::{
        bpffs,
        instance::Instance,
        kernel::Kernel,
        loader,
        options::{PortRange, Resolved, builtin_no_masq},
    },
    lab::topology::POD_SUBNET,
};
use dataplane_common::{counters::Counter, maps};

use crate::{
    frame::{Ipv4View, Mac, Packet},
    topology::{BRIDGE, HOST_UPLINK_ADDR},
};

/// What a program returns for a packet that goes on: TC_ACT_UNSPEC (tcx's
/// TCX_NEXT, -1), so programs after bpfmasq on the hook still see it.
pub const GOES_ON: u32 = u32::MAX;
/// What a program returns for a packet it drops.
pub const TC_ACT_SHOT: u32 = 2;
/// The address the programs masquerade to.
pub const NAT: Ipv4Addr = HOST_UPLINK_ADDR;
/// Every port above the privileged ones.
pub const FULL_RANGE: PortRange = PortRange {
    min: 1024,
    max: 65535,
};

/// The MAC of the test run's device (the loopback).
const THIS_HOST: Mac = [0; 6];
/// A neighbour sending to another neighbour, not to this host.
const NEIGHBOUR: Mac = [0x02, 0, 0, 0, 0, 2];
const OTHER_NEIGHBOUR: Mac = [0x02, 0, 0, 0, 0, 1];

/// `packet` in a frame between two neighbours: the uplink programs do not
/// look at MACs.
pub fn frame(packet: &Packet) -> Vec<u8> {
    packet.frame(NEIGHBOUR, OTHER_NEIGHBOUR)
}

/// `packet` in a frame addressed to this host, as a frame it routes is:
/// only those are the fast path's.
pub fn frame_to_this_host(packet: &Packet) -> Vec<u8> {
    packet.frame(NEIGHBOUR, THIS_HOST)
}

/// The IPv4 packet of a frame a program let through, asserting that its
/// header and transport checksums hold.
pub fn checked(frame: &[u8]) -> Ipv4View<'_> {
    checksums_hold(ipv4(frame))
}

/// `ip`, asserting that its header and transport checksums hold.
pub fn checksums_hold(ip: Ipv4View<'_>) -> Ipv4View<'_> {
    assert!(ip.header_checksum_holds(), "IPv4 header checksum invalid");
    assert_eq!(
        ip.transport_checksum_holds(),
        Some(true),
        "transport checksum invalid (protocol {})",
        ip.proto()
    );
    ip
}

/// The IPv4 packet of a frame a program let through, asserting that its
/// header checksum holds (a later fragment has no transport header).
pub fn header_checked(frame: &[u8]) -> Ipv4View<'_> {
    let ip = ipv4(frame);
    assert!(ip.header_checksum_holds(), "IPv4 header checksum invalid");
    ip
}

fn ipv4(frame: &[u8]) -> Ipv4View<'_> {
    Ipv4View::of_frame(frame).expect("an IPv4 frame")
}

/// A loaded, configured, unattached copy of the programs. Fields drop in
/// order: the programs and maps go, then their pins.
pub struct Programs {
    ebpf: Ebpf,
    _pins: Pins,
}

/// A test instance's pin folder, removed when dropped: also when loading
/// the programs panicked half-way.
struct Pins(Instance);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove_pins();
    }
}

impl Programs {
    /// The programs for pod network 10.85.0.0/16 masquerading to [`NAT`]
    /// with source ports from `ports`, the fast path off; `name` (unique
    /// among concurrent tests) names their pin folder.
    pub fn load(name: &str, ports: PortRange) -> Self {
        Self::load_with(name, ports, false)
    }

    /// [`Programs::load`], the fast path on when `fast_path`.
    pub fn load_with(name: &str, ports: PortRange, fast_path: bool) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "BPF_PROG_TEST_RUN tests need root"
        );
        bpffs::ensure_mounted().expect("bpffs");
        let pins = Pins(Instance::new(
            &format!("test-run-{}", std::process::id()),
            name,
        ));
        let instance = &pins.0;
        let _ = instance.remove_pins();
        std::fs::create_dir_all(instance.dir()).expect("pin dir");
        let mut no_masq = vec![POD_SUBNET];
        no_masq.extend(builtin_no_masq());
        let resolved = Resolved {
            bridge: BRIDGE.into(),
            bridge_ifindex: 0,
            uplink: name.into(),
            uplink_ifindex: 0,
            pod_cidr: POD_SUBNET,
            nat_addr: NAT,
            no_masq,
            ports,
            ct_max: 1024,
            ct_max_per_pod: 0,
            timeouts: Default::default(),
            fast_path,
            kernel: Kernel::probe(),
            known_containers: Vec::new(),
        };
        let mut ebpf = loader::load(instance, &resolved).expect("load");
        loader::configure(&mut ebpf, &resolved.nat_config(), &resolved).expect("configure");
        Self { ebpf, _pins: pins }
    }

    /// Runs `program` (a `maps::PROG_*` name) on `frame`; returns the
    /// verdict and the frame after it.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = loader::classifier(&mut self.ebpf, program).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program} failed: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs `program` on `packet` in a [`frame`], asserting that it goes
    /// on; returns the frame after it.
    pub fn let_through(&mut self, program: &str, packet: &Packet) -> Vec<u8> {
        let (verdict, out) = self.run(program, &frame(packet));
        assert_eq!(verdict, GOES_ON, "{program} stopped {packet:?}");
        out
    }

    /// Runs `program` on `packet` in a [`frame`]; returns the verdict.
    pub fn verdict(&mut self, program: &str, packet: &Packet) -> u32 {
        self.run(program, &frame(packet)).0
    }

    /// `counter` summed over every CPU.
    pub fn counter(&self, counter: Counter) -> u64 {
        let map: PerCpuArray<&MapData, u64> =
            self.ebpf.map(maps::COUNTERS).unwrap().try_into().unwrap();
        map.get(&(counter as u32), 0).unwrap().iter().sum()
    }
}
