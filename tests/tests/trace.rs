//! `bpfmasq trace`: a trace filtered on one container shows its ping
//! translated on the way out and back on the way in, with the NAT address,
//! and nothing of the other container; a hostile packet shows its drop
//! reason; `--count` ends the trace by itself; several traces run at once,
//! and once they end (even killed: the next trace, or `bpfmasq run`'s next
//! sweep, notices) the datapath stops reporting.

use std::{net::Ipv4Addr, time::Duration};

use bpfmasq_e2e::{
    Datapath, Lab,
    daemon_support::{Daemon, eventually, host_json},
    frame::Packet,
    icmp::ping,
    inject::{Injector, mac_of},
    process::describe,
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    tracer::{Traced, Tracer},
};
use serde_json::Value;

fn addr(tuple: &Value, side: &str) -> Option<Ipv4Addr> {
    tuple[side].as_str()?.parse().ok()
}

/// Pings the outside peer from container `i`; asserts every echo was answered.
fn ping_peer(lab: &Lab, i: u16, count: u32) {
    let out = ping(lab, &container(i), OUTSIDE_ADDR, count, 2);
    assert!(
        out.status.success(),
        "ping from c{i} through the NAT: {}",
        describe(&out)
    );
}

/// `status --json`'s count of traces the datapath reports to.
fn traces_listening(lab: &Lab) -> u64 {
    host_json(lab, &["status", "--json"])["traces"]
        .as_u64()
        .expect("status --json has `traces`")
}

fn assert_clean_end(traced: &Traced) {
    assert!(
        traced.status.success(),
        "the trace ended with {}: {}",
        traced.status,
        traced.stderr
    );
    assert!(
        traced.stderr.contains("packets shown") && traced.stderr.contains("0 events lost"),
        "the trace should end with its summary: {}",
        traced.stderr
    );
}

#[test]
fn a_trace_of_one_container_shows_its_ping_translated_out_and_back_and_nothing_of_the_other() {
    let lab = Lab::up("trace", 2);
    let _datapath = Datapath::attach(&lab);
    let c1 = container_addr(1);
    let tracer = Tracer::start(&lab, &["--src", &format!("{c1}/32"), "--proto", "icmp"]);
    ping_peer(&lab, 2, 2);
    ping_peer(&lab, 1, 3);
    let traced = tracer.interrupt();
    assert_clean_end(&traced);
    let events = &traced.events;
    let shown = || format!("{events:#?}");

    let c2 = container_addr(2).to_string();
    assert!(
        events.iter().all(|e| !e.to_string().contains(&c2)),
        "the trace of c1 shows c2's packets: {}",
        shown()
    );
    let out: Vec<&Value> = events
        .iter()
        .filter(|e| e["program"] == "uplink_egress")
        .collect();
    assert_eq!(out.len(), 3, "three echo requests leave: {}", shown());
    for e in &out {
        assert_eq!(e["verdict"], "translated", "{e}");
        assert_eq!(e["counter"], "translated_out", "{e}");
        assert_eq!(addr(&e["before"], "src"), Some(c1), "{e}");
        assert_eq!(addr(&e["after"], "src"), Some(HOST_UPLINK_ADDR), "{e}");
        assert_eq!(addr(&e["after"], "dst"), Some(OUTSIDE_ADDR), "{e}");
        assert_eq!(e["before"]["icmp_type"], 8, "{e}");
    }
    let back: Vec<&Value> = events
        .iter()
        .filter(|e| e["program"] == "uplink_ingress")
        .collect();
    assert_eq!(back.len(), 3, "three echo replies come back: {}", shown());
    for e in &back {
        // Through the fast path or the host's forwarding: translated either way.
        assert!(
            e["counter"] == "fast_path_in" || e["counter"] == "translated_in",
            "{e}"
        );
        assert_eq!(addr(&e["before"], "dst"), Some(HOST_UPLINK_ADDR), "{e}");
        assert_eq!(addr(&e["after"], "dst"), Some(c1), "{e}");
        assert_eq!(addr(&e["after"], "src"), Some(OUTSIDE_ADDR), "{e}");
        assert_eq!(e["after"]["icmp_type"], 0, "{e}");
        assert_eq!(
            e["after"]["echo_id"],
            out[0]["before"]["echo_id"],
            "the reply goes back to the request's identifier: {}",
            shown()
        );
    }
}

#[test]
fn a_hostile_packet_shows_its_drop_reason_and_count_ends_the_trace() {
    let lab = Lab::up("tracedrop", 2);
    let _datapath = Datapath::attach(&lab);
    let tracer = Tracer::start(&lab, &["--proto", "udp", "--port", "9999", "--count", "1"]);
    // From outside, a source inside the pod network: spoofed.
    let from_outside = Injector::open(&lab, OUT, UPLINK);
    let spoofed = Packet::udp(container_addr(2), HOST_UPLINK_ADDR, 4242, 9999);
    from_outside.send(&spoofed.frame(from_outside.mac, mac_of(&lab, HOST, UPLINK)));

    let traced = tracer.finish();
    assert_clean_end(&traced);
    assert!(
        traced.stderr.contains("--count reached"),
        "{}",
        traced.stderr
    );
    let [event] = traced.events.as_slice() else {
        panic!("--count 1 shows one packet: {:#?}", traced.events);
    };
    assert_eq!(event["program"], "uplink_ingress", "{event}");
    assert_eq!(event["verdict"], "dropped", "{event}");
    assert_eq!(event["counter"], "drop_spoofed_pod_source", "{event}");
    assert_eq!(event["action"], "shot", "{event}");
    assert_eq!(
        addr(&event["before"], "src"),
        Some(container_addr(2)),
        "{event}"
    );
    assert_eq!(
        event["before"], event["after"],
        "a dropped packet is not rewritten"
    );
}

#[test]
fn several_traces_run_at_once_and_the_datapath_stops_reporting_once_they_end() {
    let lab = Lab::up("traces", 1);
    let _datapath = Datapath::attach(&lab);
    assert_eq!(traces_listening(&lab), 0);
    let filter = ["--src", "10.85.0.2/32", "--proto", "icmp"];
    let first = Tracer::start(&lab, &filter);
    let second = Tracer::start(&lab, &filter);
    assert_eq!(traces_listening(&lab), 2);
    ping_peer(&lab, 1, 1);
    for traced in [first.interrupt(), second.interrupt()] {
        assert_clean_end(&traced);
        assert!(
            traced
                .events
                .iter()
                .any(|e| e["counter"] == "translated_out"
                    && addr(&e["before"], "src") == Some(container_addr(1))),
            "each trace sees the echo request: {:#?}",
            traced.events
        );
    }
    assert_eq!(traces_listening(&lab), 0, "ended traces still listened to");

    // A trace killed outright cannot say it stopped: the next trace that
    // starts or ends notices.
    let killed = Tracer::start(&lab, &filter);
    killed.signal(libc::SIGKILL);
    let _ = killed.finish();
    assert_eq!(
        traces_listening(&lab),
        1,
        "the killed trace's slot is still marked"
    );
    let next = Tracer::start(&lab, &filter);
    assert_eq!(traces_listening(&lab), 1, "only the running trace listens");
    assert_clean_end(&next.interrupt());
    assert_eq!(traces_listening(&lab), 0);
}

#[test]
fn bpfmasq_run_clears_a_killed_traces_slot_at_its_next_sweep() {
    let lab = Lab::up("tracekill", 1);
    let (_daemon, _) = Daemon::start(&lab, &["--gc-interval", "1"]);
    let killed = Tracer::start(&lab, &["--proto", "icmp"]);
    assert_eq!(traces_listening(&lab), 1);
    killed.signal(libc::SIGKILL);
    let _ = killed.finish();
    eventually(
        "the daemon notices the killed trace",
        Duration::from_secs(30),
        || (traces_listening(&lab) == 0).then_some(()),
        || format!("status says {} traces listen", traces_listening(&lab)),
    );
}
