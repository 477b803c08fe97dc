//! [`UdpFlows`] in a process of their own, one per lab node: a process may
//! hold only so many sockets (RLIMIT_NOFILE, whose hard limit cannot be
//! raised without CAP_SYS_RESOURCE), so tens of thousands of flows need
//! several processes.
//!
//! [`FlowsProcess`] is the parent's side; the child is this crate's
//! `udp_flows` binary, which runs [`child_main`]. They speak in lines: the
//! child prints `ready` once its sockets are bound inside the node; each
//! `exchange` line on its stdin (`exchange all`, or `exchange` followed by
//! flow indices) is answered with one JSON line: per flow, the sources the
//! server reported and the foreign datagrams received. End of input ends it.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    thread,
    time::Duration,
};

use bpfmasq::netns::NetNs;
use serde_json::{Value, json};

use crate::{
    lab::Lab,
    udp_flows::{FlowAnswers, Pacing, UdpFlows, raise_open_files_limit},
};

/// A child exits by itself after this long, whatever happened.
pub const CHILD_LIFETIME: Duration = Duration::from_secs(600);
/// Descriptors a child needs besides its flows' sockets.
const SPARE_FILES: u64 = 64;

/// What a child opens and where it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowsSpec {
    /// The network namespace the child's sockets live in.
    pub netns: String,
    /// The address the flows are bound to, one per port of `ports`.
    pub addr: Ipv4Addr,
    pub ports: Range<u16>,
    /// The echo server answering [`crate::echo::reply_with_source`], tagged `tag`.
    pub server: SocketAddrV4,
    pub tag: String,
    pub pacing: Pacing,
}

impl FlowsSpec {
    fn to_args(&self) -> Vec<String> {
        [
            self.netns.clone(),
            self.addr.to_string(),
            self.ports.start.to_string(),
            self.ports.end.to_string(),
            self.server.to_string(),
            self.tag.clone(),
            self.pacing.batch.to_string(),
            self.pacing.attempts.to_string(),
            self.pacing.quiet.as_millis().to_string(),
        ]
        .to_vec()
    }

    fn from_args(args: &[String]) -> Result<Self, String> {
        let [
            netns,
            addr,
            start,
            end,
            server,
            tag,
            batch,
            attempts,
            quiet_ms,
        ] = args
        else {
            return Err(format!(
                "expected NETNS ADDR FIRST_PORT END_PORT SERVER TAG BATCH ATTEMPTS QUIET_MS, got {args:?}"
            ));
        };
        let parse_error = |what: &str, value: &str| format!("invalid {what} `{value}`");
        Ok(Self {
            netns: netns.clone(),
            addr: addr.parse().map_err(|_| parse_error("address", addr))?,
            ports: start.parse().map_err(|_| parse_error("port", start))?
                ..end.parse().map_err(|_| parse_error("port", end))?,
            server: server.parse().map_err(|_| parse_error("server", server))?,
            tag: tag.clone(),
            pacing: Pacing {
                batch: batch.parse().map_err(|_| parse_error("batch", batch))?,
                attempts: attempts
                    .parse()
                    .map_err(|_| parse_error("attempts", attempts))?,
                quiet: Duration::from_millis(
                    quiet_ms
                        .parse()
                        .map_err(|_| parse_error("quiet time", quiet_ms))?,
                ),
            },
        })
    }
}

/// A child process holding one node's flows; killed when dropped.
#[derive(Debug)]
pub struct FlowsProcess {
    node: String,
    locals: Vec<SocketAddrV4>,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FlowsProcess {
    /// Starts `program` (the `udp_flows` binary) for the flows of `spec`
    /// (its `netns` is `node`'s) and waits until its sockets are bound.
    pub fn spawn(program: &Path, lab: &Lab, node: &str, spec: &FlowsSpec) -> io::Result<Self> {
        assert_eq!(spec.netns, lab.ns(node), "the spec names another node");
        let mut child = Command::new(program)
            .args(spec.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", program.display()))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("stdin and stdout are piped");
        };
        let mut process = Self {
            node: node.to_owned(),
            locals: spec
                .ports
                .clone()
                .map(|port| SocketAddrV4::new(spec.addr, port))
                .collect(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = process.read_line()?;
        if line != "ready" {
            return Err(process.failure(&format!("expected `ready`, got {line:?}")));
        }
        Ok(process)
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.locals.len()
    }

    /// Whether there are no flows.
    pub fn is_empty(&self) -> bool {
        self.locals.is_empty()
    }

    /// Flow `flow`'s local (untranslated) address.
    pub fn local(&self, flow: usize) -> SocketAddrV4 {
        self.locals[flow]
    }

    /// Asks the child to run [`UdpFlows::exchange`] for `flows` (every flow
    /// if `None`); returns right after sending, see [`FlowsProcess::answers`].
    pub fn start_exchange(&mut self, flows: Option<&[usize]>) -> io::Result<()> {
        let command = match flows {
            None => "exchange all".to_owned(),
            Some(flows) => {
                let mut command = "exchange".to_owned();
                for flow in flows {
                    command.push_str(&format!(" {flow}"));
                }
                command
            }
        };
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.failure(&format!("sending `exchange`: {e}")))
    }

    /// What the flows of the last [`FlowsProcess::start_exchange`] received, in its order.
    pub fn answers(&mut self) -> io::Result<Vec<FlowAnswers>> {
        let line = self.read_line()?;
        serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|value| answers_from_json(&value))
            .ok_or_else(|| {
                self.failure(&format!(
                    "unreadable answers: {}",
                    crate::echo::show(line.as_bytes())
                ))
            })
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(self.failure("it ended")),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(self.failure(&format!("reading its output: {e}"))),
        }
    }

    /// An error naming the child, its node and how it is doing.
    fn failure(&mut self, what: &str) -> io::Error {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}, see its stderr above"),
            Ok(None) => "still running".to_owned(),
            Err(e) => format!("status unknown: {e}"),
        };
        io::Error::other(format!(
            "UDP flows process in {} (pid {}): {what} ({status})",
            self.node,
            self.child.id()
        ))
    }
}

impl Drop for FlowsProcess {
    fn drop(&mut self) {
        // Only the child this guard started, by its own pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `udp_flows` binary: see the module documentation.
pub fn child_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_flows: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let spec = FlowsSpec::from_args(args)?;
    // Single-threaded still: every thread started later inherits the namespace.
    NetNs::open(&spec.netns)
        .and_then(|ns| ns.enter())
        .map_err(|e| format!("{e:#}"))?;
    thread::spawn(|| {
        thread::sleep(CHILD_LIFETIME);
        eprintln!("udp_flows: still running after {CHILD_LIFETIME:?}; exiting");
        std::process::exit(2);
    });
    raise_open_files_limit(spec.ports.len() as u64 + SPARE_FILES).map_err(|e| e.to_string())?;
    let flows = UdpFlows::bind(spec.addr, spec.ports.clone()).map_err(|e| e.to_string())?;
    let mut stdout = io::stdout().lock();
    let mut say = |line: &str| {
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing to the parent: {e}"))
    };
    say("ready")?;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading a command: {e}"))?;
        let which: Vec<usize> = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["exchange", "all"] => (0..flows.len()).collect(),
            ["exchange", ref indices @ ..] => indices
                .iter()
                .map(|i| i.parse().ok().filter(|&i| i < flows.len()))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("invalid flow index in {line:?}"))?,
            _ => return Err(format!("unknown command {line:?}")),
        };
        let answers = flows
            .exchange(&which, spec.server, &spec.tag, spec.pacing)
            .map_err(|e| e.to_string())?;
        say(&answers_to_json(&answers).to_string())?;
    }
    Ok(())
}

fn answers_to_json(answers: &[FlowAnswers]) -> Value {
    answers
        .iter()
        .map(|a| {
            let seen: Vec<String> = a.seen.iter().map(ToString::to_string).collect();
            let foreign: Vec<Value> = a
                .foreign
                .iter()
                .map(|(from, datagram)| json!([from.to_string(), datagram]))
                .collect();
            json!({ "seen": seen, "foreign": foreign })
        })
        .collect()
}

fn answers_from_json(value: &Value) -> Option<Vec<FlowAnswers>> {
    value
        .as_array()?
        .iter()
        .map(|flow| {
            let seen = flow["seen"]
                .as_array()?
                .iter()
                .map(|s| s.as_str()?.parse().ok())
                .collect::<Option<_>>()?;
            let foreign = flow["foreign"]
                .as_array()?
                .iter()
                .map(|f| {
                    let from: SocketAddr = f[0].as_str()?.parse().ok()?;
                    let datagram: Vec<u8> = serde_json::from_value(f[1].clone()).ok()?;
                    Some((from, datagram))
                })
                .collect::<Option<_>>()?;
            Some(FlowAnswers { seen, foreign })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_answers_round_trip() {
        let spec = FlowsSpec {
            netns: "lab-c1".to_owned(),
            addr: Ipv4Addr::new(10, 85, 0, 2),
            ports: 20_000..37_500,
            server: "192.168.61.12:7000".parse().expect("address"),
            tag: "out".to_owned(),
            pacing: Pacing {
                batch: 500,
                attempts: 4,
                quiet: Duration::from_millis(300),
            },
        };
        assert_eq!(FlowsSpec::from_args(&spec.to_args()), Ok(spec));
        let answers = vec![
            FlowAnswers {
                seen: vec!["192.168.61.11:4242".parse().expect("address")],
                foreign: vec![(
                    "192.168.61.12:7000".parse().expect("address"),
                    b"x|y".to_vec(),
                )],
            },
            FlowAnswers::default(),
        ];
        assert_eq!(answers_from_json(&answers_to_json(&answers)), Some(answers));
    }
}
