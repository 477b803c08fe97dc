//! bpfmasq on a real container host: podman 4 (CNI backend) runs busybox
//! containers in a lab's host namespace, with `bridge` (`ipMasq: false`)
//! followed by `bpfmasq-cni` in its conflist. The outside peer must see
//! only the NAT address; no netfilter NAT rule may exist; each container's
//! flows are listed by container and go with it (CNI DEL), so an address
//! handed to the next container starts clean. The plugin's other verbs
//! (DEL without prevResult, GC, bad configuration) are called by hand, as
//! a runtime would.

use std::{
    collections::BTreeSet,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
};

use bpfmasq_e2e::{
    Lab,
    cni::{self, Reply},
    datapath::{fast_path_mode, host_json},
    netfilter,
    podman::{Podman, conflist},
    process::describe,
    tcp::TcpServer,
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container_addr},
    udp::UdpEchoServer,
};
use serde_json::{Value, json};

const TCP_PORT: u16 = 5201;
/// busybox `nc` has no UDP mode; `nslookup NAME SERVER` sends UDP to port 53.
const DNS_PORT: u16 = 53;
const NETWORK: &str = "bpfnet";

/// bpfmasq-cni's keys for the lab: its uplink, and the fast path as the
/// suite's mode asks.
fn plugin_keys() -> Value {
    let mut keys = json!({"uplink": UPLINK});
    if let Some(mode) = fast_path_mode() {
        keys["fastPath"] = json!(mode == "on");
    }
    keys
}

/// Reads one line, answers `seen\n`, returns the line: what the peer got
/// from whom.
fn read_line_and_answer(stream: &mut TcpStream, _peer: SocketAddrV4) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    stream.write_all(b"seen\n")?;
    Ok(line)
}

/// The flows `conntrack list --container ID` shows, as (proto, source address).
fn container_flows(lab: &Lab, id: &str) -> Vec<(String, Ipv4Addr)> {
    let flows = host_json(lab, &["conntrack", "list", "--container", id, "--json"]);
    flows
        .as_array()
        .expect("a JSON array of flows")
        .iter()
        .map(|f| {
            (
                f["proto"].as_str().expect("proto").to_owned(),
                f["src"]["addr"]
                    .as_str()
                    .expect("src")
                    .parse()
                    .expect("an address"),
            )
        })
        .collect()
}

/// Every flow whose pod address is `ip`.
fn flows_from(lab: &Lab, ip: &str) -> usize {
    let flows = host_json(
        lab,
        &["conntrack", "list", "--src", &format!("{ip}/32"), "--json"],
    );
    flows.as_array().expect("a JSON array of flows").len()
}

/// What podman's containers A and B send: a TCP line and a DNS query, each
/// naming the container.
fn talk(podman: &Podman, name: &str) {
    let script = format!(
        "echo hello-{name} | timeout 5 nc {OUTSIDE_ADDR} {TCP_PORT}; \
         timeout 3 nslookup query-{name} {OUTSIDE_ADDR}; true"
    );
    let out = podman.exec(name, &script);
    assert!(
        out.status.success(),
        "traffic from {name}: {}",
        describe(&out)
    );
}

#[test]
fn podman_containers_reach_the_peer_with_the_nat_address_and_take_their_flows_with_them() {
    let lab = Lab::up("podman", 1);
    let mut podman = Podman::new(&lab);
    podman.add_network(&conflist(
        NETWORK,
        &podman.ipam_dir(),
        ("10.85.1.2", "10.85.1.200"),
        plugin_keys(),
    ));
    let tcp = TcpServer::spawn(
        &lab,
        OUT,
        SocketAddrV4::new(OUTSIDE_ADDR, TCP_PORT),
        2,
        read_line_and_answer,
    );
    let dns = UdpEchoServer::spawn(&lab, OUT, SocketAddrV4::new(OUTSIDE_ADDR, DNS_PORT), "dns");

    let a = podman.run("a", NETWORK, "10.85.1.10");
    let b = podman.run("b", NETWORK, "10.85.1.11");
    talk(&podman, "a");
    talk(&podman, "b");

    // The peer saw both containers, only ever from the NAT address.
    let served = tcp.join();
    let lines: BTreeSet<String> = served
        .iter()
        .map(|s| {
            assert_eq!(
                *s.peer.ip(),
                HOST_UPLINK_ADDR,
                "TCP source seen by the peer"
            );
            String::from_utf8_lossy(s.result.as_ref().expect("a TCP line")).into_owned()
        })
        .collect();
    assert_eq!(
        lines,
        BTreeSet::from(["hello-a".to_owned(), "hello-b".to_owned()])
    );
    let queries = dns.stop();
    for name in ["a", "b"] {
        let from: Vec<_> = queries
            .iter()
            .filter(|q| contains(&q.payload, format!("query-{name}").as_bytes()))
            .collect();
        assert!(
            !from.is_empty(),
            "no DNS query from container {name} reached the peer"
        );
        assert!(
            from.iter().all(|q| *q.peer.ip() == HOST_UPLINK_ADDR),
            "{from:?}"
        );
    }
    let scan = netfilter::scan(&lab, HOST);
    assert!(
        scan.nat_lines.is_empty(),
        "NAT rules in the host: {:?}",
        scan.nat_lines
    );

    // Each container's flows, by container.
    let containers = host_json(&lab, &["containers", "--json"]);
    let listed: BTreeSet<(String, String)> = containers
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| {
            assert!(
                !c["host_veth"].as_str().unwrap_or_default().is_empty(),
                "{c}"
            );
            (
                c["container_id"].as_str().expect("id").to_owned(),
                c["ips"][0].as_str().expect("ip").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([
            (a.clone(), "10.85.1.10".to_owned()),
            (b.clone(), "10.85.1.11".to_owned())
        ])
    );
    for (id, ip) in [(&a, "10.85.1.10"), (&b, "10.85.1.11")] {
        let flows = container_flows(&lab, id);
        let protos: BTreeSet<&str> = flows.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            protos.contains("tcp") && protos.contains("udp"),
            "{id}: {flows:?}"
        );
        assert!(
            flows.iter().all(|(_, src)| src.to_string() == ip),
            "{id}: {flows:?}"
        );
    }

    // podman rm (CNI DEL) takes exactly that container's flows, and its
    // port leaves the source check.
    assert_eq!(
        source_checked_ports(&lab),
        2,
        "ADD checks each container's port"
    );
    let b_flows = flows_from(&lab, "10.85.1.11");
    podman.remove("a");
    assert_eq!(flows_from(&lab, "10.85.1.10"), 0, "a's flows outlived it");
    assert_eq!(flows_from(&lab, "10.85.1.11"), b_flows, "b's flows changed");
    assert_eq!(source_checked_ports(&lab), 1, "a's port is still checked");

    // The next container given a's address starts with none.
    let c = podman.run("c", NETWORK, "10.85.1.10");
    assert!(container_flows(&lab, &c).is_empty());
}

/// How many container ports `status` says have the source check.
fn source_checked_ports(lab: &Lab) -> u64 {
    host_json(lab, &["status", "--json"])["source_checked_ports"]
        .as_u64()
        .expect("status --json has source_checked_ports")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A `bridge` result for lab container `c` (its veth `veth-cN` on `cni0`),
/// as podman would hand it to bpfmasq-cni.
fn prev_result_for(lab: &Lab, c: u16) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": format!("veth-c{c}"), "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:03",
             "sandbox": format!("/run/netns/{}", lab.ns(&format!("c{c}")))}
        ],
        "ips": [{"interface": 2, "address": format!("{}/16", container_addr(c)),
                 "gateway": "10.85.0.1"}]
    })
}

fn conf(keys: Value, prev: Option<Value>) -> Value {
    let mut conf = json!({"cniVersion": "1.1.0", "name": NETWORK, "type": "bpfmasq-cni"});
    for (k, v) in keys
        .as_object()
        .expect("keys")
        .iter()
        .chain(plugin_keys().as_object().expect("keys"))
    {
        conf.as_object_mut()
            .expect("object")
            .entry(k.clone())
            .or_insert(v.clone());
    }
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    conf
}

fn call(lab: &Lab, scratch: &Path, verb: &str, id: &str, conf: &Value) -> Reply {
    cni::invoke(
        lab,
        scratch,
        verb,
        &[
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/none"),
        ],
        conf,
    )
}

fn ok(reply: &Reply, what: &str) {
    assert!(reply.ok(), "{what}: {}", describe(&reply.output));
}

/// A UDP exchange from lab container `c` to the peer (one flow).
fn udp_from(lab: &Lab, c: u16, server: &UdpEchoServer) {
    let socket = bpfmasq_e2e::udp::bind(
        lab,
        &format!("c{c}"),
        SocketAddrV4::new(container_addr(c), 0),
    )
    .expect("binding in the container");
    bpfmasq_e2e::udp::request(&socket, server.addr(), b"hello")
        .unwrap_or_else(|e| panic!("UDP from c{c}: {e}"));
}

#[test]
fn cni_verbs_attach_once_del_idempotently_gc_and_reuse_addresses_clean_and_bad_config_attaches_nothing()
 {
    let lab = Lab::up("cniverbs", 2);
    let scratch = std::env::temp_dir().join(format!("bpfmasq-e2e-cni-{}", lab.name()));
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let _cleanup = RemoveOnDrop(&scratch);

    // Bad configuration: a CNI error, and nothing attached or pinned.
    for (keys, what) in [
        (json!({"uplink": "nope0"}), "unknown uplink"),
        (json!({"noMasq": ["10.0.0.0/33"]}), "malformed CIDR"),
    ] {
        let reply = call(
            &lab,
            &scratch,
            "ADD",
            "bad",
            &conf(keys, Some(prev_result_for(&lab, 1))),
        );
        assert!(!reply.ok(), "{what} was accepted");
        assert_eq!(reply.code(), Some(7), "{what}: {}", reply.json);
        assert!(
            reply.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            reply.json
        );
        assert!(!lab.pins_dir().exists(), "{what} left pins behind");
    }

    let server = UdpEchoServer::spawn(&lab, OUT, SocketAddrV4::new(OUTSIDE_ADDR, 5301), "cni");
    let add = |id: &str, c: u16| {
        let reply = call(
            &lab,
            &scratch,
            "ADD",
            id,
            &conf(json!({}), Some(prev_result_for(&lab, c))),
        );
        ok(&reply, &format!("ADD {id}"));
        assert_eq!(
            reply.json["ips"][0]["address"],
            prev_result_for(&lab, c)["ips"][0]["address"]
        );
    };
    // Two ADDs at once on a host with nothing attached yet: both succeed,
    // one datapath serves both.
    std::thread::scope(|s| {
        s.spawn(|| add("first", 1));
        s.spawn(|| add("alive", 2));
    });
    assert!(lab.pins_dir().exists());
    udp_from(&lab, 1, &server);
    assert_eq!(container_flows(&lab, "first").len(), 1);
    ok(
        &call(
            &lab,
            &scratch,
            "CHECK",
            "first",
            &conf(json!({}), Some(prev_result_for(&lab, 1))),
        ),
        "CHECK",
    );

    // DEL twice, then DEL without prevResult: all succeed; the flows are gone.
    let with_prev = conf(json!({}), Some(prev_result_for(&lab, 1)));
    ok(&call(&lab, &scratch, "DEL", "first", &with_prev), "DEL");
    ok(
        &call(&lab, &scratch, "DEL", "first", &with_prev),
        "second DEL",
    );
    ok(
        &call(&lab, &scratch, "DEL", "first", &conf(json!({}), None)),
        "DEL without prevResult",
    );
    assert_eq!(flows_from(&lab, &container_addr(1).to_string()), 0);
    let check = call(&lab, &scratch, "CHECK", "first", &with_prev);
    assert_eq!(check.code(), Some(102), "CHECK after DEL: {}", check.json);

    // GC: a container the runtime no longer lists (killed, its DEL never
    // sent) loses its record and flows; a listed one keeps both.
    add("killed", 1);
    udp_from(&lab, 1, &server);
    udp_from(&lab, 2, &server);
    let mut gc = conf(json!({}), None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "alive", "ifname": "eth0"}]);
    ok(&call(&lab, &scratch, "GC", "", &gc), "GC");
    let ids: Vec<Value> = host_json(&lab, &["containers", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["container_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("alive")]);
    assert_eq!(flows_from(&lab, &container_addr(1).to_string()), 0);
    assert_eq!(flows_from(&lab, &container_addr(2).to_string()), 1);

    // An address handed to a new container while the old one's flows are
    // still there (no DEL, no GC yet): ADD drops them first.
    add("old", 1);
    udp_from(&lab, 1, &server);
    assert_eq!(flows_from(&lab, &container_addr(1).to_string()), 1);
    add("new", 1);
    assert_eq!(flows_from(&lab, &container_addr(1).to_string()), 0);
    assert!(container_flows(&lab, "new").is_empty());
    ok(
        &call(&lab, &scratch, "STATUS", "", &conf(json!({}), None)),
        "STATUS",
    );
    let version = call(
        &lab,
        &scratch,
        "VERSION",
        "",
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(
        version.json["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("0.4.0")))
    );
}

/// Removes a folder when dropped.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}
