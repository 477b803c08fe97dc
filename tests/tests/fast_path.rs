//! The fast path: with `--fast-path on`, masqueraded traffic crosses the lab
//! host without its IP stack (an nft counter on the host's forward hook never
//! sees it), flows the fast path declines still work through the host, and
//! with `--fast-path off` the host forwards everything again. Each test
//! chooses the mode itself, whatever the suite's BPFMASQ_E2E_FAST_PATH says.

use std::net::SocketAddrV4;

use bpfmasq_e2e::{
    Datapath, Lab, attachments,
    daemon_support::{Daemon, host_json},
    icmp::{self, ping},
    process::describe,
    tcp,
    topology::{BRIDGE, HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container},
};

const TCP_PORT: u16 = 5202;
/// Enough for many (GSO) packets and several windows, not a multiple of a
/// buffer. Counters count packets as the host sees them: GSO/GRO batches.
const TRANSFER_BYTES: u64 = 8 * 1024 * 1024 + 77;
/// The nft table counting what the lab host's forward hook sees.
const FORWARD_TABLE: &str = "bpfmasq_e2e_forward";
/// Smaller than the lab's 1500: the route MTU that forces the slow path.
const SMALL_MTU: &str = "1000";

/// Runs `args` in the lab host, asserting success.
fn host(lab: &Lab, args: &[&str]) -> String {
    lab.exec_ok(HOST, args)
}

/// Counts every packet the lab host's netfilter forward hook sees, in a
/// table of the lab host namespace only (it goes with the namespace).
fn count_forwarded(lab: &Lab) {
    host(lab, &["nft", "add", "table", "inet", FORWARD_TABLE]);
    host(
        lab,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            FORWARD_TABLE,
            "forward_count",
            "{ type filter hook forward priority 0; policy accept; }",
        ],
    );
    host(
        lab,
        &[
            "nft",
            "add",
            "rule",
            "inet",
            FORWARD_TABLE,
            "forward_count",
            "counter",
        ],
    );
}

/// Packets the forward hook counted so far.
fn forwarded(lab: &Lab) -> u64 {
    let listing = host(lab, &["nft", "list", "table", "inet", FORWARD_TABLE]);
    listing
        .split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in:\n{listing}"))
}

fn fast_path_status(lab: &Lab) -> bool {
    let status = host_json(lab, &["status", "--json"]);
    status["fast_path"]
        .as_bool()
        .unwrap_or_else(|| panic!("no fast_path in status: {status:#}"))
}

/// A TCP transfer from c1 to the outside peer, checked byte for byte and
/// seen by the peer from the NAT address.
fn transfer(lab: &Lab, dp: &Datapath<'_>) {
    let addr = SocketAddrV4::new(OUTSIDE_ADDR, TCP_PORT);
    let seen = tcp::transfer_checked(
        lab,
        dp,
        &container(1),
        (OUT, addr),
        0x6661_7374,
        TRANSFER_BYTES,
    );
    assert!(
        *seen.seen_by_server.ip() == HOST_UPLINK_ADDR,
        "the outside peer saw {:?}",
        seen.seen_by_server
    );
}

#[test]
fn fast_path_flows_skip_the_host_stack() {
    let lab = Lab::up("fpon", 1);
    let dp = Datapath::attach_with(&lab, &["--fast-path", "on"]);
    assert!(fast_path_status(&lab), "status says the fast path is off");
    count_forwarded(&lab);

    transfer(&lab, &dp);
    assert_eq!(
        forwarded(&lab),
        0,
        "the host's forward hook saw fast-path packets\n{}",
        dp.diagnostics()
    );
    // Both directions took the fast path, and the uplink still masqueraded.
    for name in ["fast_path_out", "fast_path_in", "translated_out"] {
        assert!(
            dp.counter(name) >= 10,
            "{name} did not count the transfer\n{}",
            dp.diagnostics()
        );
    }
}

#[test]
fn flows_the_fast_path_declines_still_work_through_the_host() {
    let lab = Lab::up("fpslow", 1);
    let dp = Datapath::attach_with(&lab, &["--fast-path", "on"]);

    // TTL 1 expires at the host, which must answer as a router does.
    let text = icmp::ping_expiring_at_first_hop(&lab, &container(1), OUTSIDE_ADDR);
    assert!(
        text.contains("Time to live exceeded") && text.contains("10.85.0.1"),
        "c1 did not get the host's time-exceeded: {text}\n{}",
        dp.diagnostics()
    );
    assert!(dp.counter("fallback_ttl") >= 1, "{}", dp.diagnostics());

    // Beyond a smaller route MTU the host must send "fragmentation needed"
    // (the fast path cannot): the container's TCP then sends smaller segments.
    // (The host drops the too-big packet before its forward hook: only the
    // datapath's counter shows the fallback.)
    host(
        &lab,
        &[
            "ip",
            "route",
            "add",
            &format!("{OUTSIDE_ADDR}/32"),
            "dev",
            UPLINK,
            "mtu",
            // Locked: forwarding ignores an unlocked route MTU (as the
            // route lookup of the fast path does).
            "lock",
            SMALL_MTU,
        ],
    );
    transfer(&lab, &dp);
    assert!(
        dp.counter("fallback_frag_needed") >= 1,
        "no packet fell back for its size\n{}",
        dp.diagnostics()
    );
    // Segments that fit went the fast way again.
    assert!(dp.counter("fast_path_out") >= 10, "{}", dp.diagnostics());
}

#[test]
fn with_the_fast_path_off_the_host_forwards_everything_and_detach_leaves_nothing() {
    let lab = Lab::up("fpoff", 1);
    let dp = Datapath::attach_with(&lab, &["--fast-path", "off", "--link-type", "clsact"]);
    assert!(!fast_path_status(&lab), "status says the fast path is on");
    count_forwarded(&lab);

    transfer(&lab, &dp);
    assert!(
        forwarded(&lab) >= 10,
        "the host's forward hook did not see the transfer\n{}",
        dp.diagnostics()
    );
    for name in ["fast_path_out", "fast_path_in"] {
        assert_eq!(dp.counter(name), 0, "{name} moved\n{}", dp.diagnostics());
    }

    dp.detach();
    for iface in [BRIDGE, UPLINK] {
        let qdiscs = attachments::qdiscs(&lab, iface);
        assert!(
            !qdiscs.contains("clsact"),
            "detach left a clsact qdisc on {iface}: {qdiscs}"
        );
    }
}

#[test]
fn run_switches_the_fast_path_of_an_adopted_datapath() {
    let lab = Lab::up("fprun", 1);
    let dp = Datapath::attach_with(&lab, &["--fast-path", "on"]);
    let (daemon, line) = Daemon::start(&lab, &["--fast-path", "off"]);
    assert!(
        line.contains("adopted") && line.contains("fast path off"),
        "{line}"
    );
    assert!(
        !fast_path_status(&lab),
        "run did not switch the fast path off"
    );
    let before = dp.counter("fast_path_out");
    let out = ping(&lab, &container(1), OUTSIDE_ADDR, 2, 2);
    assert!(out.status.success(), "ping: {}", describe(&out));
    assert_eq!(
        dp.counter("fast_path_out"),
        before,
        "packets took the fast path after it was switched off\n{}",
        dp.diagnostics()
    );
    drop(daemon);

    let (_daemon, line) = Daemon::start(&lab, &["--fast-path", "on"]);
    assert!(line.contains("fast path on"), "{line}");
    let out = ping(&lab, &container(1), OUTSIDE_ADDR, 2, 2);
    assert!(out.status.success(), "ping: {}", describe(&out));
    assert!(
        dp.counter("fast_path_out") >= before + 2,
        "the fast path did not come back on\n{}",
        dp.diagnostics()
    );
}
