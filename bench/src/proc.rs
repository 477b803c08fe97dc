//! Running the benchmark's tools inside lab namespaces: short commands with a
//! deadline, and long-lived servers behind guards that kill them.
//!
//! Every child runs in a process group of its own, so a Ctrl-C at the
//! terminal reaches only bpfmasq, which then stops its children itself (by
//! their group id, nothing else) and tears the lab down.

use std::{
    fs, io,
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use bpfmasq::netns::NetNs;
use process_group::{collect, kill_group};

/// Set by Ctrl-C / SIGTERM: every wait returns early and the run unwinds.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails with "interrupted" once Ctrl-C was pressed.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, waking early (with an error) on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// A command to run inside a network namespace, optionally pinned to one CPU
/// with `taskset` (util-linux).
pub struct NsCommand {
    command: Command,
    shown: String,
}

impl NsCommand {
    /// `program args...` inside `ns`; with `cpu`, as `taskset -c CPU program args...`.
    pub fn new<S: AsRef<str>>(ns: &NetNs, cpu: Option<usize>, program: &str, args: &[S]) -> Self {
        let mut argv: Vec<String> = Vec::new();
        if let Some(cpu) = cpu {
            argv.extend(["taskset".to_owned(), "-c".to_owned(), cpu.to_string()]);
        }
        argv.push(program.to_owned());
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).process_group(0);
        // The namespace file stays open in `ns` (which outlives the spawn).
        let ns_fd = ns.fd().as_raw_fd();
        // SAFETY: between fork and exec only setns(2), which is
        // async-signal-safe, runs; the fd is open in the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let shown = format!("[{}] {}", ns.name(), shell_words(&argv));
        Self { command, shown }
    }

    /// The command line, as recorded with the samples.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs to completion with captured output; kills the child's process
    /// group after `timeout` or on Ctrl-C.
    pub fn output(mut self, timeout: Duration) -> Result<Output> {
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .command
            .spawn()
            .map_err(|e| spawn_error(&self.shown, e))?;
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Ok(status);
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                kill_group(&mut child);
                break Err(anyhow!("interrupted"));
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                break Err(anyhow!("did not finish within {timeout:?}; killed"));
            }
            thread::sleep(Duration::from_millis(5));
        };
        // Descendants may hold the pipes open: give them a moment, then stop them.
        let grace = Duration::from_secs(2);
        let (out, err) = match (stdout.recv_timeout(grace), stderr.recv_timeout(grace)) {
            (Ok(out), Ok(err)) => (out, err),
            _ => {
                kill_group(&mut child);
                (
                    stdout.recv().unwrap_or_default(),
                    stderr.recv().unwrap_or_default(),
                )
            }
        };
        let output = Output {
            shown: self.shown,
            status: status.map_err(|e| {
                anyhow!(
                    "{e}\n{}",
                    describe_streams(
                        &String::from_utf8_lossy(&out),
                        &String::from_utf8_lossy(&err)
                    )
                )
            })?,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        };
        Ok(output)
    }

    /// Like [`Self::output`], but fails unless the command exits 0.
    pub fn run_ok(self, timeout: Duration) -> Result<Output> {
        let shown = self.shown.clone();
        let output = self
            .output(timeout)
            .with_context(|| format!("running {shown}"))?;
        output.check()?;
        Ok(output)
    }

    /// Starts the command as a long-lived server whose output goes to `log`.
    pub fn spawn_server(mut self, log: &Path) -> Result<Server> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        self.command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = self
            .command
            .spawn()
            .map_err(|e| spawn_error(&self.shown, e))?;
        Ok(Server {
            child: Some(child),
            shown: self.shown,
            log: log.to_owned(),
        })
    }
}

fn spawn_error(shown: &str, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        anyhow!("cannot run {shown}: program not found (run `cargo xtask setup`)")
    } else {
        anyhow!("cannot run {shown}: {e}")
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub shown: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn check(&self) -> Result<()> {
        if self.status.success() {
            return Ok(());
        }
        let how = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "unknown status".to_owned(),
        };
        bail!(
            "{} failed ({how})\n{}",
            self.shown,
            describe_streams(&self.stdout, &self.stderr)
        )
    }
}

fn describe_streams(stdout: &str, stderr: &str) -> String {
    let tail = |s: &str| {
        let lines: Vec<&str> = s.trim_end().lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    format!(
        "--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
        tail(stdout),
        tail(stderr)
    )
}

/// A long-lived child (nginx, iperf3 -s, sockperf sr): its process group is
/// killed when the guard drops.
pub struct Server {
    child: Option<Child>,
    shown: String,
    log: PathBuf,
}

impl Server {
    /// Fails (with the end of its log) if the server already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.shown);
        };
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            bail!(
                "{} exited ({status})\n{}",
                self.shown,
                describe_streams("", &log)
            );
        }
        Ok(())
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Kills the server's process group and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Renders argv for humans: words with spaces or quotes are single-quoted.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until a socket of `proto` listens (TCP) or is bound (UDP) on local
/// `port` inside `ns`, reading /proc/thread-self/net from a thread in `ns`.
pub fn wait_bound(ns: &NetNs, proto: Proto, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        let table = ns.run(|| fs::read_to_string(proto.proc_file()))??;
        if socket_bound(&table, proto, port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "nothing {} on {} port {port} in `{}` after {timeout:?}",
                if proto == Proto::Tcp {
                    "listens"
                } else {
                    "is bound"
                },
                proto.name(),
                ns.name()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn proc_file(self) -> &'static str {
        match self {
            Self::Tcp => "/proc/thread-self/net/tcp",
            Self::Udp => "/proc/thread-self/net/udp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// Whether /proc/net/{tcp,udp} text `table` has a socket on local `port`
/// that listens (TCP state 0A) or is bound unconnected (UDP state 07).
pub fn socket_bound(table: &str, proto: Proto, port: u16) -> bool {
    let wanted_state = match proto {
        Proto::Tcp => "0A",
        Proto::Udp => "07",
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            return false;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && *state == wanted_state
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables_are_read() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
                   0: 0C3DA8C0:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   \
                   1: 0C3DA8C0:1451 0B3DA8C0:9C40 01 00000000:00000000 00:00000000 00000000\n";
        assert!(socket_bound(tcp, Proto::Tcp, 80));
        assert!(
            !socket_bound(tcp, Proto::Tcp, 5201),
            "established, not listening"
        );
        let udp = "   sl  local_address rem_address   st\n  \
                   1: 0C3DA8C0:2B67 00000000:0000 07 00000000:00000000\n";
        assert!(socket_bound(udp, Proto::Udp, 11111));
        assert!(!socket_bound(udp, Proto::Udp, 11112));
    }

    #[test]
    fn command_lines_are_quoted() {
        let argv: Vec<String> = ["wrk", "-H", "Connection: close", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&argv), r"wrk -H 'Connection: close' 'it'\''s'");
    }
}
