//! `cargo xtask demo`: bpfmasq at work, narrated, in a throwaway lab.
//!
//! Builds a lab (a container host with a bridge and two containers, and an
//! outside peer, all network namespaces), shows that the peer cannot answer
//! the containers without NAT, attaches bpfmasq, sends ping, HTTP and UDP from
//! both containers to the peer, prints the NAT table and the counters, shows
//! that netfilter holds no NAT rule, and removes everything again: on success,
//! on failure and on Ctrl-C. All traffic stays between the lab's namespaces.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, cmd::Cmd, ui, workspace};

/// The outside peer's address (NAME-out's eth0).
const PEER: &str = "192.168.61.12";
/// The address bpfmasq masquerades to (NAME-host's eth0).
const NAT_ADDRESS: &str = "192.168.61.11";
const HTTP_PORT: &str = "8080";
const UDP_PORT: &str = "8081";
const CONTAINERS: [&str; 2] = ["c1", "c2"];
/// Upper bound on the peer's servers' life, should everything else fail.
const SERVER_TIMEOUT_SECS: &str = "300";
const SERVER_PY: &str = include_str!("demo/server.py");
const CLIENT_PY: &str = include_str!("demo/client.py");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab name: the namespaces are NAME-host, NAME-out, NAME-c1 and NAME-c2.
    #[arg(long, default_value = "demo")]
    name: String,
}

/// Set by Ctrl-C (or SIGTERM/SIGHUP): stop at the next step and tear down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: &DemoArgs) -> Result<()> {
    workspace::require_root(
        "`cargo xtask demo`",
        "it creates network namespaces and loads eBPF programs",
    )?;
    let bin = build::run()?;
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        ui::warn("interrupted: tearing the demo lab down");
    })
    .context("installing the Ctrl-C handler")?;

    let mut demo = Demo::new(bin, &args.name);
    let shown = demo.show();
    let torn_down = demo.tear_down();
    if let (Err(_), Err(e)) = (&shown, &torn_down) {
        ui::warn(&format!("{e:#}"));
    }
    shown?;
    torn_down?;
    ui::ok(&format!(
        "demo complete: both containers reached {PEER} masqueraded to {NAT_ADDRESS} by bpfmasq, \
         with no NAT rule in netfilter"
    ));
    Ok(())
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The lab and what runs in it; tears itself down when dropped (on panic or
/// early return) unless [`Demo::tear_down`] already did.
struct Demo {
    bin: PathBuf,
    name: String,
    step: u32,
    attached: bool,
    server: Option<Child>,
    torn_down: bool,
    /// Steps that failed without stopping the demo.
    failures: Vec<String>,
}

impl Demo {
    fn new(bin: PathBuf, name: &str) -> Self {
        Self {
            bin,
            name: name.to_owned(),
            step: 0,
            attached: false,
            server: None,
            torn_down: false,
            failures: Vec::new(),
        }
    }

    fn heading(&mut self, title: &str) {
        self.step += 1;
        ui::section(&format!("{}. {title}", self.step));
    }

    fn host(&self) -> String {
        format!("{}-host", self.name)
    }

    fn bpfmasq(&self) -> Cmd {
        Cmd::new(&self.bin)
    }

    /// `bpfmasq --netns NAME-host ...`: the datapath commands.
    fn in_host(&self) -> Cmd {
        self.bpfmasq().args(["--netns", &self.host()])
    }

    /// `bpfmasq lab ... --name NAME`.
    fn lab(&self, verb: &str) -> Cmd {
        self.bpfmasq().args(["lab", verb, "--name", &self.name])
    }

    /// `bpfmasq lab exec --name NAME NODE -- ...`: a command in a lab node.
    fn exec(&self, node: &str) -> Cmd {
        self.lab("exec").args([node, "--"])
    }

    /// Notes a failed step and goes on (the rest is still worth seeing),
    /// unless the failure came from Ctrl-C.
    fn record(&mut self, what: &str, result: Result<()>) -> Result<()> {
        interrupted()?;
        if let Err(e) = result {
            ui::warn(&format!("{what}: {e:#}"));
            self.failures.push(what.to_owned());
        }
        Ok(())
    }

    /// The demo proper, step by step; the caller tears down.
    fn show(&mut self) -> Result<()> {
        self.remove_leftovers()?;
        self.build_lab()?;
        self.ping_without_nat()?;
        self.attach()?;
        self.start_server()?;
        let traffic_ok = self.send_traffic()?;
        self.inspect()?;
        self.show_netfilter_is_empty()?;
        if !traffic_ok {
            bail!(
                "traffic through bpfmasq failed: {}",
                self.failures.join(", ")
            );
        }
        if !self.failures.is_empty() {
            bail!(
                "the traffic worked, but these steps failed: {}",
                self.failures.join(", ")
            );
        }
        Ok(())
    }

    fn remove_leftovers(&mut self) -> Result<()> {
        self.heading(&format!(
            "Remove what an earlier demo lab `{}` may have left",
            self.name
        ));
        let status = self.lab("down").status()?;
        interrupted()?;
        if !status.success() {
            ui::warn("`lab down` failed; trying to build the lab anyway");
        }
        Ok(())
    }

    fn build_lab(&mut self) -> Result<()> {
        self.heading(
            "Build the lab: network namespaces for a container host, two containers and an \
             outside peer",
        );
        ui::note(&topology(&self.name));
        self.lab("up").args(["--containers", "2"]).run()?;
        interrupted()?;
        let status = self.lab("status").run();
        self.record("lab status", status)
    }

    fn ping_without_nat(&mut self) -> Result<()> {
        self.heading("Without NAT, the outside peer cannot answer a container");
        ui::note(&format!(
            "{}-out has no route back to 10.85.0.0/16, so this ping gets no reply (expected).",
            self.name
        ));
        let status = self
            .exec("c1")
            .args(["ping", "-c", "1", "-W", "1", PEER])
            .status()?;
        interrupted()?;
        if status.success() {
            ui::warn("the ping got a reply: something else in the lab routes or NATs this traffic");
        } else {
            ui::ok("no reply, as expected");
        }
        Ok(())
    }

    fn attach(&mut self) -> Result<()> {
        self.heading(&format!("Attach bpfmasq to {}'s uplink eth0", self.host()));
        ui::note(&format!(
            "Loads bpfmasq's TC programs on eth0: SNAT of traffic from cni0's subnet to \
             {NAT_ADDRESS} on egress,\nthe reverse translation of replies on ingress, \
             with the flows in an eBPF conntrack map."
        ));
        self.in_host()
            .args(["attach", "--bridge", "cni0", "--uplink", "eth0"])
            .run()?;
        self.attached = true;
        interrupted()
    }

    /// Ping, HTTP and UDP from every container; false if any of it failed.
    fn send_traffic(&mut self) -> Result<bool> {
        self.heading(&format!(
            "Traffic from both containers to the outside peer {PEER}"
        ));
        ui::note(&format!(
            "ICMP echo, one HTTP request and one UDP datagram from each container. The servers \
             answer with\nthe source they saw: {NAT_ADDRESS} (the host's uplink), not the \
             container's own 10.85.0.x."
        ));
        let failures_before = self.failures.len();
        for container in CONTAINERS {
            ui::step(&format!("from {}-{container}", self.name));
            let ping = self
                .exec(container)
                .args(["ping", "-c", "3", "-i", "0.2", "-W", "2", PEER])
                .run();
            self.record(&format!("ping from {container}"), ping)?;
            let client = self
                .exec(container)
                .args(["python3", "-c", CLIENT_PY, PEER, HTTP_PORT, UDP_PORT])
                .run();
            self.record(&format!("HTTP and UDP from {container}"), client)?;
        }
        Ok(self.failures.len() == failures_before)
    }

    /// The NAT table and the counters.
    fn inspect(&mut self) -> Result<()> {
        self.heading("The NAT table: bpfmasq conntrack list");
        ui::note(&format!(
            "One entry per flow: the container's address and port (or ICMP id), and what they \
             were translated to\non {NAT_ADDRESS}, with packets and bytes each way."
        ));
        let list = self.in_host().args(["conntrack", "list"]).run();
        self.record("conntrack list", list)?;

        self.heading("The datapath counters: bpfmasq stats");
        let stats = self.in_host().arg("stats").run();
        self.record("stats", stats)
    }

    fn show_netfilter_is_empty(&mut self) -> Result<()> {
        self.heading(&format!(
            "No NAT rule anywhere: netfilter in {} is empty",
            self.host()
        ));
        ui::note(
            "bpfmasq replaces iptables MASQUERADE: neither nftables nor iptables holds a rule for it.",
        );
        let nft = self.show_listing(
            self.exec("host").args(["nft", "list", "ruleset"]),
            "masquerade",
        );
        self.record("nft list ruleset", nft)?;
        let iptables = self.show_listing(
            self.exec("host").args(["iptables", "-t", "nat", "-S"]),
            "MASQUERADE",
        );
        self.record("iptables -t nat -S", iptables)
    }

    /// Starts the peer's servers (see demo/server.py) and waits until they listen.
    fn start_server(&mut self) -> Result<()> {
        self.heading(&format!(
            "Start servers on the outside peer {PEER}: HTTP on TCP {HTTP_PORT}, echo on UDP {UDP_PORT}"
        ));
        let server = self
            .exec("out")
            .args([
                "timeout",
                SERVER_TIMEOUT_SECS,
                "python3",
                "-c",
                SERVER_PY,
                PEER,
                HTTP_PORT,
                UDP_PORT,
            ])
            .spawn_piped()?;
        let stdout = self
            .server
            .insert(server)
            .stdout
            .take()
            .context("no stdout pipe")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading from the peer's server")?;
        interrupted()?;
        if line.trim() != "ready" {
            bail!("the outside peer's servers did not start");
        }
        Ok(())
    }

    /// Runs a netfilter listing, prints it, and fails if it holds `nat_word`.
    fn show_listing(&self, cmd: Cmd, nat_word: &str) -> Result<()> {
        ui::command(cmd.line());
        let listing = cmd.read()?;
        if listing.trim().is_empty() {
            ui::note("(empty: no tables, no rules)");
        } else {
            print!("{listing}");
        }
        if listing.contains(nat_word) {
            bail!("found a `{nat_word}` rule");
        }
        Ok(())
    }

    /// Stops the servers, detaches bpfmasq and removes the lab; all of it is
    /// attempted even when a part fails.
    fn tear_down(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.heading("Tear down: detach bpfmasq and remove the lab");
        let mut errors = Vec::new();
        if let Some(server) = self.server.take() {
            stop(server);
        }
        if self.attached {
            let detach = self.in_host().args(["detach", "--uplink", "eth0"]).run();
            errors.extend(detach.err());
        }
        errors.extend(self.lab("down").run().err());
        if errors.is_empty() {
            ui::ok(&format!("lab `{}` removed", self.name));
            return Ok(());
        }
        let errors: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        bail!(
            "tearing down failed: {}; remove what is left with `{} lab down --name {}`",
            errors.join("; "),
            self.bin.display(),
            self.name
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Err(e) = self.tear_down() {
            ui::warn(&format!("{e:#}"));
        }
    }
}

/// The lab drawn for the reader.
fn topology(name: &str) -> String {
    let container = |n: usize, address: &str| format!("{name}-c{n}  {address} --+");
    let c1 = container(1, "10.85.0.2");
    let pad = " ".repeat(c1.len() - 1);
    format!(
        "{c1}\n\
         {pad}+-- cni0 10.85.0.1/16 [{name}-host] eth0 {NAT_ADDRESS} ---- eth0 {PEER} [{name}-out]\n\
         {c2}\n\
         Like a container runtime's bridge network, with no masquerade rule.",
        c2 = container(2, "10.85.0.3"),
    )
}

/// Ends the peer's servers: closing stdin asks them to exit; kill after a grace period.
fn stop(mut server: Child) {
    drop(server.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !matches!(server.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Already gone is fine: nothing to report.
    let _ = server.kill();
    let _ = server.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_lines_up() {
        let drawing = topology("demo");
        let columns: Vec<usize> = drawing
            .lines()
            .take(3)
            .map(|l| l.find('+').unwrap())
            .collect();
        assert_eq!(columns, [columns[0]; 3], "{drawing}");
    }
}
