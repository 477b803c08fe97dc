//! The operators' view: every inspection verb's JSON parses and describes
//! the flows this test really made, and `conntrack flush` removes exactly
//! the flows its filter names (both halves: the pod's next packet starts a
//! new flow that works).

use std::net::SocketAddrV4;

use bpfmasq_e2e::{
    Datapath, Lab,
    datapath::host_json,
    echo::{self, show},
    topology::{HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, container, container_addr},
    udp::{self, UdpEchoServer},
};
use serde_json::Value;

const UDP_PORT: u16 = 5302;

fn out_udp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT)
}

/// `bpfmasq --netns <host> ARGS --json`, parsed.
fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut verb = args.to_vec();
    verb.push("--json");
    host_json(lab, &verb)
}

/// UDP request from container `c` to the outside peer; asserts the answer.
fn exchange(lab: &Lab, dp: &Datapath<'_>, c: u16) {
    let request = format!("inspect c{c}").into_bytes();
    let reply = udp::exchange(
        lab,
        &container(c),
        SocketAddrV4::new(container_addr(c), 0),
        out_udp(),
        &request,
    )
    .unwrap_or_else(|e| panic!("c{c}: {e}\n{}", dp.diagnostics()));
    assert_eq!(
        reply,
        echo::reply("out", &request),
        "c{c} received {}",
        show(&reply)
    );
}

fn pod_sources(flows: &Value) -> Vec<String> {
    let mut sources: Vec<String> = flows
        .as_array()
        .expect("conntrack list --json is an array")
        .iter()
        .map(|f| f["src"]["addr"].as_str().expect("src.addr").to_owned())
        .collect();
    sources.sort();
    sources
}

#[test]
fn inspection_json_matches_the_flows_made_and_flush_removes_exactly_them() {
    let lab = Lab::up("inspect", 2);
    let dp = Datapath::attach(&lab);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    exchange(&lab, &dp, 1);
    exchange(&lab, &dp, 2);

    let flows = json(&lab, &["conntrack", "list", "--proto", "udp"]);
    assert_eq!(
        pod_sources(&flows),
        ["10.85.0.2", "10.85.0.3"],
        "udp flows: {flows:#}"
    );
    for flow in flows.as_array().unwrap() {
        assert_eq!(flow["dst"]["addr"], OUTSIDE_ADDR.to_string(), "{flow:#}");
        assert_eq!(flow["dst"]["port"], UDP_PORT, "{flow:#}");
        assert_eq!(
            flow["translated"]["addr"],
            HOST_UPLINK_ADDR.to_string(),
            "{flow:#}"
        );
        assert_eq!(flow["state"], "REPLIED", "{flow:#}");
        assert!(
            flow["original_dir"]["packets"].as_u64() >= Some(1),
            "{flow:#}"
        );
        assert!(flow["reply_dir"]["packets"].as_u64() >= Some(1), "{flow:#}");
        assert!(flow["expires_in_seconds"].as_u64() > Some(0), "{flow:#}");
    }
    let c1_only = json(&lab, &["conntrack", "list", "--src", "10.85.0.2/32"]);
    assert_eq!(
        pod_sources(&c1_only),
        ["10.85.0.2"],
        "--src filter: {c1_only:#}"
    );
    let count = json(&lab, &["conntrack", "count", "--proto", "udp"]);
    assert_eq!(count["flows"], 2, "{count:#}");

    let status = json(&lab, &["status"]);
    assert_eq!(status["link_type"], "tcx", "{status:#}");
    assert_eq!(
        status["nat_address"],
        HOST_UPLINK_ADDR.to_string(),
        "{status:#}"
    );
    assert_eq!(status["pod_cidr"], "10.85.0.0/16", "{status:#}");
    assert!(status["flows"].as_u64() >= Some(2), "{status:#}");
    assert!(
        status["hooks"][0]["program_id"].as_u64().is_some(),
        "{status:#}"
    );
    let stats = json(&lab, &["stats"]);
    assert!(stats["translated_out"].as_u64() >= Some(2), "{stats:#}");
    assert!(stats["translated_in"].as_u64() >= Some(2), "{stats:#}");

    let flushed = json(
        &lab,
        &[
            "conntrack",
            "flush",
            "--src",
            "10.85.0.2/32",
            "--proto",
            "udp",
        ],
    );
    assert_eq!(flushed["flushed"], 1, "{flushed:#}");
    let after = json(&lab, &["conntrack", "list", "--proto", "udp"]);
    assert_eq!(
        pod_sources(&after),
        ["10.85.0.3"],
        "after flushing c1's flow: {after:#}"
    );

    // c1's next request starts a new flow, and it works end to end.
    exchange(&lab, &dp, 1);
    let again = json(&lab, &["conntrack", "list", "--proto", "udp"]);
    assert_eq!(pod_sources(&again), ["10.85.0.2", "10.85.0.3"], "{again:#}");
    server.stop();
}
