//! The OCI image (`cargo xtask image`) run by podman the way a DaemonSet
//! runs it on a node: in the lab's host namespace, the machine's bpffs
//! bind-mounted. The containerized daemon masquerades the containers'
//! traffic; SIGKILLed mid-transfer and started again from the image, it
//! adopts the pinned datapath and the transfer completes intact; and with
//! only the minimal capabilities (README, "Capabilities") it still works.

use std::{net::SocketAddrV4, time::Duration};

use bpfmasq_e2e::{
    Lab,
    daemon_support::{DaemonLauncher, ShapedTransfer, sigkill_mid_transfer_then_adopt_with},
    datapath::uplink_verb_args,
    podman_image::{ImageDaemon, MACHINE_BPFFS, Podman},
    process::describe,
    tcp::{self, TcpServer},
    topology::{BRIDGE, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container},
};

const TCP_PORT: u16 = 5202;

/// The capabilities `bpfmasq run` needs in a container that shares the
/// node's network namespace (Kubernetes' hostNetwork), found by trying:
/// without CAP_PERFMON the verifier refuses the programs' pointer
/// arithmetic; CAP_SYS_ADMIN is needed only to enter another namespace
/// (`--netns`). podman's default seccomp profile allows bpf(2) only with
/// CAP_SYS_ADMIN, so the container runs without it, as on Kubernetes.
const MINIMAL_CAPABILITIES: &str = "BPF,NET_ADMIN,PERFMON";

#[test]
fn the_image_survives_sigkill_mid_transfer_and_a_new_container_adopts_the_datapath() {
    let lab = Lab::up("img-kill", 1);
    let podman = Podman::with_image(&lab);
    let launcher = ImageDaemon {
        podman: &podman,
        name: format!("{}-bpfmasq", lab.name()),
        podman_options: vec!["--privileged".to_owned()],
        // `--netns NAME-host`: the pins get the lab's label, which the
        // suite's helpers read from outside the container.
        bpfmasq_args: uplink_verb_args(&lab, "run", &[]),
        bpffs: MACHINE_BPFFS.into(),
    };
    sigkill_mid_transfer_then_adopt_with(
        &lab,
        &ShapedTransfer {
            bytes: 200 * 1024 * 1024,
            seed: 0x1a6e_c0de,
            port: TCP_PORT,
            rate: "100mbit",
            kill_after: 10 << 20,
            kill_within: Duration::from_secs(30),
        },
        &launcher,
    );
}

/// Detaches, from the image too, the datapath a test's container attached.
struct DetachWithImage<'a>(&'a ImageDaemon<'a>, &'a Lab);

impl Drop for DetachWithImage<'_> {
    fn drop(&mut self) {
        let out = self.0.run_once(self.1, &["detach"]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("detaching after the test failed: {}", describe(&out));
        }
    }
}

#[test]
fn the_image_masquerades_with_only_the_minimal_capabilities() {
    let lab = Lab::up("img-caps", 1);
    let podman = Podman::with_image(&lab);
    let launcher = ImageDaemon {
        podman: &podman,
        name: format!("{}-bpfmasq", lab.name()),
        podman_options: [
            "--cap-drop=all",
            &format!("--cap-add={MINIMAL_CAPABILITIES}"),
            "--security-opt=seccomp=unconfined",
        ]
        .map(String::from)
        .to_vec(),
        bpfmasq_args: ["run", "--bridge", BRIDGE, "--uplink", UPLINK]
            .map(String::from)
            .to_vec(),
        // In its own pid namespace, as in a pod, the daemon labels its pins
        // `default`: a bpffs of the test's own keeps them apart.
        bpffs: podman.own_bpffs(),
    };
    // Before the daemon: on a failure, the daemon stops first, then this detaches.
    let _detach = DetachWithImage(&launcher, &lab);
    let (daemon, line) = launcher.start(&lab);
    assert!(line.contains("attached to"), "the container said: {line}");

    let out_tcp = SocketAddrV4::new(OUTSIDE_ADDR, TCP_PORT);
    let server = TcpServer::spawn(&lab, OUT, out_tcp, 1, tcp::verify_stream);
    let check = tcp::connect(&lab, &container(1), None, out_tcp)
        .and_then(|mut stream| tcp::send_stream(&mut stream, 0xca95, 4 << 20))
        .unwrap_or_else(|e| panic!("the transfer failed: {e}\n{}", daemon.output()));
    assert!(check.intact(), "client: {check:?}");
    let served = server.join();
    let [conn] = served.as_slice() else {
        panic!("the server handled {served:?}")
    };
    assert!(
        conn.result.as_ref().is_ok_and(tcp::StreamCheck::intact),
        "the server received {conn:?}"
    );
    assert_eq!(*conn.peer.ip(), HOST_UPLINK_ADDR, "the peer saw {conn:?}");
    let status = launcher.run_once(&lab, &["status"]);
    assert!(
        status.status.success(),
        "status in the image: {}",
        describe(&status)
    );
    drop(daemon);
}
