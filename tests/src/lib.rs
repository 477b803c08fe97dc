//! Helpers for bpfmasq's privileged end-to-end tests.
//!
//! Every test builds its own lab (`bpfmasq lab up`) under a unique name,
//! attaches the datapath with the real binary, moves real packets between
//! the lab's namespaces and tears everything down again through RAII guards,
//! even when the test panics. Nothing here touches the root namespace's
//! network or any address outside the lab.
//!
//! Run them as root against a built binary, e.g. `cargo xtask test`, or
//! `BPFMASQ_BIN=target/release/bpfmasq cargo test --release -p bpfmasq-e2e`
//! (without `BPFMASQ_BIN`, `<workspace>/target/release/bpfmasq` is used).
//! Labs are named `e2e-<test>-<pid>`, so tests run in parallel and
//! alongside other labs; `ls /run/netns` shows any that a killed run left.
//!
//! One concept per module:
//! - [`product`]: the `bpfmasq` binary under test and running it;
//! - [`process`]: running a command with a deadline, describing its output;
//! - [`topology`]: the lab's fixed addresses and names;
//! - [`lab`]: the [`Lab`] guard (`lab up` / `lab down`), `lab exec`, sockets in a node;
//! - [`datapath`]: the [`Datapath`] guard (`attach` / `detach`), stats, pins;
//! - [`netns`]: running a closure inside a named namespace;
//! - [`pattern`]: the deterministic pseudo-random byte stream TCP transfers carry;
//! - [`icmp`]: `ping` from a node;
//! - [`refusal`]: what a cleanly refused command looks like;
//! - [`echo`]: the tagged answer echo servers give;
//! - [`tcp`], [`udp`]: servers that stop by themselves and clients with timeouts;
//! - [`udp_flows`]: thousands of UDP flows from one node at once, answers checked per flow;
//! - [`udp_flows_process`]: those flows in a child process per node (the `udp_flows` binary);
//! - [`fragments`]: one UDP datagram sent as IPv4 fragments in a chosen order (scapy);
//! - [`capture`]: an AF_PACKET capture recording IPv4 sources seen on an interface;
//! - [`frame`]: hand-built (and deliberately broken) Ethernet + IPv4 frames, and reading them back;
//! - [`inject`]: sending such frames out of a lab interface with an AF_PACKET socket;
//! - [`test_run`]: the TC programs loaded alone and run on such frames (BPF_PROG_TEST_RUN);
//! - [`snmp`]: the kernel's own IP counters of a lab node;
//! - [`daemon_support`]: `bpfmasq run` as a guarded child process, polling with a deadline,
//!   the SIGKILL-mid-transfer restart scenario;
//! - [`netfilter`]: looking for NAT rules in a namespace, adding a stateful FORWARD rule;
//! - [`far_path`]: traceroute, tracepath and a PMTU-limited upload to the far peer, checked;
//! - [`outgoing_errors`]: ICMP errors about a pod's flow leaving through the uplink, checked at the peer;
//! - [`http`]: a plain HTTP GET from inside a lab node;
//! - [`prometheus`]: a real Prometheus server in a lab node, scraping a target, queried by its API;
//! - [`tracer`]: `bpfmasq trace --json` as a guarded child process, its events collected;
//! - [`podman_image`]: the bpfmasq image under podman in a lab's host namespace, private storage;
//! - [`kernel`]: the running kernel's release and the attach mode it gets;
//! - [`cni`]: calling the CNI plugin `bpfmasq-cni` by hand in a lab's host;
//! - [`podman`]: the [`podman::Podman`] guard, a real runtime in a lab's host calling the plugin;
//! - [`attachments`]: what a datapath has in a lab's host (pins, tcx programs, tc filters, qdiscs).

pub mod attachments;
pub mod capture;
pub mod cni;
pub mod daemon_support;
pub mod datapath;
pub mod echo;
pub mod far_path;
pub mod fragments;
pub mod frame;
pub mod http;
pub mod icmp;
pub mod inject;
pub mod kernel;
pub mod lab;
pub mod netfilter;
pub mod netns;
pub mod outgoing_errors;
pub mod pattern;
pub mod podman;
pub mod podman_image;
pub mod process;
pub mod product;
pub mod prometheus;
pub mod refusal;
pub mod snmp;
pub mod tcp;
pub mod tcx;
pub mod test_run;
pub mod topology;
pub mod tracer;
pub mod tun;
pub mod udp;
pub mod udp_flows;
pub mod udp_flows_process;

pub use datapath::Datapath;
pub use lab::{Lab, exec_in};
pub use netns::run_in;
pub use product::bin;

/// `e` with `what` in front, keeping its kind (for messages that say which
/// peer and which step failed).
pub(crate) fn context(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}
