//! `lab exec`: run a command inside one node's network namespace, like
//! `ip netns exec` but without the separate mount namespace (so `/sys/class/net`
//! still shows the caller's interfaces; netlink-based tools are unaffected).

use std::{
    io,
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Result, anyhow, bail};
use nix::sys::signal::{SigHandler, Signal, signal};

use super::topology::{Node, describe_nodes, ns_name, validate_lab_name};
use crate::{netns::NetNs, privileges::require_root};

/// Runs `command` in node `node` of lab `lab` with inherited stdio; returns
/// its exit code (128 + signal number if a signal killed it).
pub fn exec(lab: &str, node: &str, command: &[String]) -> Result<ExitCode> {
    require_root("bpfmasq lab exec")?;
    validate_lab_name(lab)?;
    let node: Node = node.parse()?;
    let Some((program, args)) = command.split_first() else {
        bail!("no command given: use `bpfmasq lab exec {node} -- COMMAND [ARGS...]`");
    };
    let nodes = super::require_existing(lab)?;
    if !nodes.contains(&node) {
        bail!(
            "lab `{lab}` has no node `{node}` (it has: {})",
            describe_nodes(&nodes)
        );
    }
    let ns = NetNs::open(&ns_name(lab, node))?;
    let ns_fd = ns.fd().as_raw_fd();
    let mut child = Command::new(program);
    child.args(args);
    // SAFETY: the closure runs between fork and exec, and only calls setns,
    // which is async-signal-safe; `ns` keeps the fd open until after spawn.
    unsafe {
        child.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let mut child = child.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!("command `{program}` not found"),
        _ => anyhow!("cannot run `{program}` in node `{node}` of lab `{lab}`: {e}"),
    })?;
    drop(ns);
    let status = {
        let _ignoring = IgnoreTerminalSignals::new();
        child.wait()
    }
    .map_err(|e| anyhow!("waiting for `{program}`: {e}"))?;
    Ok(exit_code(status))
}

/// The child's exit code; a signal death becomes 128 + signal, as shells do.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

/// Like system(3): while the child runs, Ctrl-C and Ctrl-\ are the child's to
/// handle (it gets them from the terminal too), so we outlive it and report
/// its status. Set only after the child is spawned, so it does not inherit them.
struct IgnoreTerminalSignals {
    previous: Vec<(Signal, SigHandler)>,
}

impl IgnoreTerminalSignals {
    fn new() -> Self {
        let previous = [Signal::SIGINT, Signal::SIGQUIT]
            .into_iter()
            // SAFETY: installs SIG_IGN, no handler code runs.
            .filter_map(|sig| {
                unsafe { signal(sig, SigHandler::SigIgn) }
                    .ok()
                    .map(|old| (sig, old))
            })
            .collect();
        Self { previous }
    }
}

impl Drop for IgnoreTerminalSignals {
    fn drop(&mut self) {
        for (sig, handler) in self.previous.drain(..) {
            // SAFETY: restores the disposition that was in place before.
            let _ = unsafe { signal(sig, handler) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), ExitCode::from(0));
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGKILL)),
            ExitCode::from(128 + 9)
        );
    }
}
