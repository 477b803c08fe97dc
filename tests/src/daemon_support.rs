//! `bpfmasq run` as a child process for the daemon tests: started in a
//! lab's host, its output collected as it comes, SIGKILLed when the guard
//! drops (panic or not). Plus polling with a deadline, reading the
//! datapath's JSON views without an attach guard, and the restart scenario
//! the daemon, portability and image suites run: SIGKILL in the middle of a
//! transfer, then a new run adopts the pinned datapath ([`DaemonLauncher`]
//! says how a daemon starts and dies: a child process, or a container).

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

pub use crate::datapath::host_json;
use crate::{
    lab::Lab,
    product::bin,
    tcp::{self, TcpServer},
    topology::{HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, container},
};

/// How long a daemon may take to say it started, or to stop after a signal.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dropped daemon may take to stop on SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(200);

/// How the daemon's own lines start.
pub const LOG_PREFIX: &str = "bpfmasq run: ";

/// The arguments of `bpfmasq --netns NAME-host run --bridge cni0 --uplink eth0 EXTRA...`.
pub fn run_args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    crate::datapath::uplink_verb_args(lab, "run", extra)
}

/// A running `bpfmasq run`; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    shown: String,
    child: Child,
    /// stdout and stderr, interleaved as read.
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Starts `bpfmasq run` with `extra` arguments and waits until it says
    /// it attached or adopted the datapath; returns the guard and that line.
    pub fn start(lab: &Lab, extra: &[&str]) -> (Self, String) {
        let mut daemon = Self::spawn(lab, extra);
        let line = daemon.wait_for_started();
        (daemon, line)
    }

    /// Starts `bpfmasq run` with `extra` arguments without waiting.
    pub fn spawn(lab: &Lab, extra: &[&str]) -> Self {
        let args = run_args(lab, extra);
        let shown = format!("bpfmasq {}", args.join(" "));
        let mut command = Command::new(bin());
        command.args(&args);
        Self::spawn_command(command, shown)
    }

    /// Starts `command`, which runs a `bpfmasq run` (e.g. in a container),
    /// without waiting; `shown` names it in messages.
    pub fn spawn_command(mut command: Command, shown: String) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C meant for the test runner does not stop it half-way.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take(), Arc::clone(&output)),
            collect(child.stderr.take(), Arc::clone(&output)),
        ];
        Self {
            shown,
            child,
            output,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a line containing `needle` was printed and returns it;
    /// panics with the output when the daemon exits first or after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(&format!("`{needle}`"), timeout, |line| {
            line.contains(needle)
        })
    }

    /// Waits for the line saying the daemon owns the datapath (attached or adopted).
    pub fn wait_for_started(&mut self) -> String {
        self.wait_for_line("that it started", DAEMON_TIMEOUT, |line| {
            line.starts_with(LOG_PREFIX)
                && !line.contains("warning:")
                && (line.contains("attached") || line.contains("adopted"))
        })
    }

    fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() {
                // Whatever it printed before exiting is read to the end first.
                self.join_readers();
            }
            if let Some(line) = self.output().lines().find(|l| wanted(l)) {
                return line.to_owned();
            }
            if let Some(status) = exited {
                panic!(
                    "`{}` exited ({status}) before printing {what}:\n{}",
                    self.shown,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not print {what} within {timeout:?}:\n{}",
                self.shown,
                self.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        self.send(signal)
            .unwrap_or_else(|e| panic!("signal {signal} to `{}`: {e}", self.shown));
    }

    fn send(&self, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(std::io::Error::other)?;
        // SAFETY: kill(2) on the pid of our own child, which is not reaped
        // yet (reaping happens only in `wait`/`drop`), so the pid is still ours.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Waits for the daemon to exit; panics with its output after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the daemon") {
                self.join_readers();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not exit within {timeout:?}:\n{}",
                self.shown,
                self.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(DAEMON_TIMEOUT);
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a daemon that stops cleanly removes its lock file;
        // SIGKILL when it does not stop in time.
        if matches!(self.child.try_wait(), Ok(None)) && self.send(libc::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.join_readers();
        if thread::panicking() {
            eprintln!("output of `{}`:\n{}", self.shown, self.output());
        }
    }
}

/// Appends whatever `pipe` yields to `output` until it closes.
fn collect(pipe: Option<impl Read + Send + 'static>, output: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut buf = [0; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// Calls `check` every [`POLL`] until it returns `Some`, and returns that;
/// after `timeout` panics with `what` and the last `describe()`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            describe()
        );
        thread::sleep(POLL);
    }
}

/// `conntrack list --json` of the lab's datapath: one JSON object per flow.
pub fn flows(lab: &Lab) -> Vec<Value> {
    match host_json(lab, &["conntrack", "list", "--json"]) {
        Value::Array(flows) => flows,
        other => panic!("`conntrack list --json` printed no array: {other}"),
    }
}

/// The port of a flow's endpoint (`src`, `dst`, `translated`) in `conntrack list --json`.
pub fn port_of(endpoint: &Value) -> Option<u64> {
    endpoint["port"].as_u64()
}

/// The address of a flow's endpoint in `conntrack list --json`.
pub fn addr_of(endpoint: &Value) -> Option<Ipv4Addr> {
    endpoint["addr"].as_str()?.parse().ok()
}

/// Program ids of the datapath's hooks (uplink egress and ingress, bridge ingress), from `status --json`.
pub fn program_ids(lab: &Lab) -> Vec<u64> {
    let status = host_json(lab, &["status", "--json"]);
    status["hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter_map(|h| h["program_id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP transfer from c1 to a server of the outside peer, shaped on the
/// host's uplink so that it is still going when a daemon is killed and a
/// new one has started.
#[derive(Clone, Copy, Debug)]
pub struct ShapedTransfer {
    /// Bytes sent, of the [`crate::pattern`] stream for `seed`.
    pub bytes: u64,
    pub seed: u64,
    /// The outside peer's port.
    pub port: u16,
    /// The uplink's rate (`tc qdisc ... tbf rate RATE`), e.g. `100mbit`.
    pub rate: &'static str,
    /// The daemon is killed once the transfer's flow has carried this many bytes...
    pub kill_after: u64,
    /// ...which it must within this long.
    pub kill_within: Duration,
}

/// How a restart scenario starts a daemon and SIGKILLs it: the binary
/// itself ([`BinaryDaemon`]) or, say, a container running it.
pub trait DaemonLauncher {
    /// Starts a daemon for `lab` and waits until it says it attached or
    /// adopted the datapath; returns the guard and that line.
    fn start(&self, lab: &Lab) -> (Daemon, String);
    /// Kills the daemon with SIGKILL and waits until it is gone.
    fn sigkill(&self, daemon: &mut Daemon);
}

/// `bpfmasq run` started as a child process of the test.
#[derive(Debug)]
pub struct BinaryDaemon;

impl DaemonLauncher for BinaryDaemon {
    fn start(&self, lab: &Lab) -> (Daemon, String) {
        Daemon::start(lab, &[])
    }

    fn sigkill(&self, daemon: &mut Daemon) {
        daemon.kill();
    }
}

/// [`sigkill_mid_transfer_then_adopt_with`] the binary as a child process.
pub fn sigkill_mid_transfer_then_adopt(lab: &Lab, transfer: &ShapedTransfer) {
    sigkill_mid_transfer_then_adopt_with(lab, transfer, &BinaryDaemon);
}

/// `bpfmasq run` attaches; `transfer` starts; once its flow carried
/// `kill_after` bytes the daemon is SIGKILLed and a new run started, which
/// must adopt the pinned datapath while the transfer still runs (new
/// programs in the hooks, the flow and its translation kept), and the
/// transfer then completes byte for byte, seen from the NAT address.
pub fn sigkill_mid_transfer_then_adopt_with(
    lab: &Lab,
    transfer: &ShapedTransfer,
    launcher: &dyn DaemonLauncher,
) {
    let out_tcp = SocketAddrV4::new(OUTSIDE_ADDR, transfer.port);
    lab.limit_uplink(transfer.rate);
    let (mut first, line) = launcher.start(lab);
    assert!(line.contains("attached to"), "first run: {line}");
    let ids_before = program_ids(lab);
    let server = TcpServer::spawn(lab, OUT, out_tcp, 1, tcp::verify_stream);

    thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut stream = tcp::connect(lab, &container(1), None, out_tcp)?;
            tcp::send_stream(&mut stream, transfer.seed, transfer.bytes)
        });
        let tcp_flow = || {
            flows(lab).into_iter().find(|f| {
                f["proto"] == "tcp" && port_of(&f["dst"]) == Some(u64::from(transfer.port))
            })
        };
        let bytes = |flow: &Value| flow["original_dir"]["bytes"].as_u64().unwrap_or(0);
        let before = eventually(
            &format!("the transfer's flow carries {} bytes", transfer.kill_after),
            transfer.kill_within,
            || tcp_flow().filter(|f| bytes(f) > transfer.kill_after),
            || format!("flows: {:?}\n{}", flows(lab), first.output()),
        );

        let killed = Instant::now();
        launcher.sigkill(&mut first);
        let (second, line) = launcher.start(lab);
        eprintln!(
            "SIGKILLed after {} bytes; the new run took {:.1?} to start",
            bytes(&before),
            killed.elapsed()
        );
        assert!(
            line.contains("adopted"),
            "the second run should adopt the pinned datapath: {line}"
        );
        assert!(
            !client.is_finished(),
            "the transfer ended before the new run adopted the datapath: the test proves nothing (shaping too weak?)"
        );
        let after = tcp_flow().unwrap_or_else(|| {
            panic!(
                "the transfer's flow is gone after the restart: {:?}",
                flows(lab)
            )
        });
        assert_eq!(
            after["translated"], before["translated"],
            "the flow's translation changed across the restart"
        );
        assert!(
            bytes(&after) >= bytes(&before),
            "the flow's counters went back: before {before}, after {after}"
        );

        let check = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("the transfer failed: {e}\n{}", second.output()));
        eprintln!("the transfer ended {:.1?} after the kill", killed.elapsed());
        assert!(check.intact(), "client: {check:?}");
    });

    let served = server.join();
    assert_eq!(served.len(), 1, "the server handled {served:?}");
    let check = served[0]
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("server side of the transfer failed: {e}"));
    assert!(check.intact(), "the server received {check:?}");
    assert_eq!(
        *served[0].peer.ip(),
        HOST_UPLINK_ADDR,
        "server saw {served:?}"
    );
    let ids_after = program_ids(lab);
    assert_eq!(ids_after.len(), 3, "status shows {ids_after:?}");
    assert!(
        ids_after.iter().all(|id| !ids_before.contains(id)),
        "adopting should swap new programs into the links: before {ids_before:?}, after {ids_after:?}"
    );
}
