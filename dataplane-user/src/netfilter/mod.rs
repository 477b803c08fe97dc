//! netfilter as the CNI plugins configure it, for switching a host between
//! its masquerade rules and bpfmasq: the plugin's rule shapes ([`cni`]),
//! one [`MasqBackend`] per tool that holds them ([`iptables`], [`nftables`]:
//! find, remove and restore the pod network's masquerade rules with the real
//! `iptables-restore`/`nft`), and nf_conntrack's entries ([`ctnetlink`]).
//! Everything acts on the calling thread's network namespace.

pub mod cni;
pub mod ctnetlink;
pub mod iptables;
pub mod nftables;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;

/// A tool holding masquerade rules for the pod network.
pub trait MasqBackend {
    /// `iptables` or `nftables`, as records and messages name it.
    fn name(&self) -> &'static str;
    /// Fails, naming what is missing, unless the commands it needs run here.
    fn check_tools(&self) -> Result<()>;
    /// The masquerade rules for sources in `pod_cidr`, as the text that
    /// [`MasqBackend::restore`] puts back; None when there are none.
    fn find(&self, pod_cidr: Ipv4Net) -> Result<Option<String>>;
    /// Stops masquerading new connections, keeping what translates the
    /// connections netfilter already has (its nat hooks), so they can move
    /// one by one; [`MasqBackend::finish`] removes the rest. The default
    /// removes the rules, when that keeps the hooks.
    fn disarm(&self, found: &str) -> Result<()> {
        self.remove(found)
    }
    /// Removes what [`MasqBackend::disarm`] left of the rules.
    fn finish(&self, _found: &str) -> Result<()> {
        Ok(())
    }
    /// Removes the rules [`MasqBackend::find`] returned, in one transaction.
    fn remove(&self, found: &str) -> Result<()>;
    /// Puts in place what translates connections netfilter is given (the
    /// nat hooks), masquerading nothing yet: the first step of giving
    /// connections back, before [`MasqBackend::restore`].
    fn restore_hooks(&self, saved: &str) -> Result<()>;
    /// Adds saved rules back, in one transaction.
    fn restore(&self, saved: &str) -> Result<()>;
}

/// Both backends, iptables first.
pub fn backends() -> [&'static dyn MasqBackend; 2] {
    [&iptables::Iptables, &nftables::Nftables]
}

/// The backend called `name`.
pub fn backend(name: &str) -> Option<&'static dyn MasqBackend> {
    backends().into_iter().find(|b| b.name() == name)
}

/// Runs `program args` with `input` on its standard input; its stdout, or
/// an error with its stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{shown}`"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `10.85.0.2/32` or `10.85.0.2`, as the tools print a source.
fn parse_net(text: &str) -> Option<Ipv4Net> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<std::net::Ipv4Addr>().ok().map(Ipv4Net::from))
}

/// Fails unless every program in `programs` is on PATH.
fn require_programs(backend: &str, programs: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in programs {
        if !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
            bail!(
                "`{program}` is not installed (or not on PATH): {backend} rules cannot be changed"
            );
        }
    }
    Ok(())
}

/// While it lives, netfilter leaves untracked what arrives on the uplink
/// for the pod network: the replies bpfmasq has already translated back.
/// During a switch one connection's packets go through both: without it,
/// netfilter would take such a reply (to a pod, while its own entry for the
/// connection expects it to the NAT address) for a new connection clashing
/// with its entry, and give it another source port, which the pod answers
/// with a reset. Replies bpfmasq leaves alone are addressed to the NAT
/// address when netfilter first sees them, and are tracked as ever. It also
/// keeps conntrack itself running until the switch is over.
/// An nftables table of its own; without `nft`, there is none (and the
/// switch is only as safe as its timing).
pub struct UntrackedReplies {
    installed: bool,
}

/// The table [`UntrackedReplies`] installs.
const UNTRACKED_TABLE: &str = "bpfmasq_switch";

impl UntrackedReplies {
    pub fn install(uplink: &str, pod_cidr: Ipv4Net) -> Result<Self> {
        if require_programs("nftables", &["nft"]).is_err() {
            return Ok(Self { installed: false });
        }
        // The `ct` expression keeps conntrack running in this namespace:
        // it stops when its last user goes, and the masquerade rules may
        // be that user; the connections not moved yet still need it.
        let script = format!(
            "table ip {UNTRACKED_TABLE} {{\n  chain replies {{\n    \
             type filter hook prerouting priority raw; policy accept;\n    \
             iifname \"{uplink}\" ip daddr {pod_cidr} notrack\n  }}\n  \
             chain keep_tracking {{\n    \
             type filter hook forward priority filter; policy accept;\n    \
             ct state invalid counter\n  }}\n}}\n"
        );
        run("nft", &["-f", "-"], Some(&script))
            .context("leaving translated replies untracked during the switch")?;
        Ok(Self { installed: true })
    }
}

impl Drop for UntrackedReplies {
    fn drop(&mut self) {
        if self.installed {
            let _ = run("nft", &["delete", "table", "ip", UNTRACKED_TABLE], None);
        }
    }
}
