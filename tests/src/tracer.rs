//! `bpfmasq trace --json` as a child process of a test: started in a lab's
//! host, ready once it says it is tracing, its JSON lines collected as they
//! come; stopped with SIGINT like a person's Ctrl-C, or left to stop by
//! itself (`--count`). Killed with its process group when dropped.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use process_group::kill_group;
use serde_json::Value;

use crate::{lab::Lab, product::bin};

/// How long a trace may take to start, or to stop once asked.
pub const TRACE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished trace printed.
#[derive(Debug)]
pub struct Traced {
    pub status: ExitStatus,
    /// One JSON object per packet shown.
    pub events: Vec<Value>,
    pub stderr: String,
}

/// A running `bpfmasq trace`.
#[derive(Debug)]
pub struct Tracer {
    shown: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Tracer {
    /// Starts `bpfmasq --netns NAME-host trace --json ARGS...` and waits
    /// until it traces.
    pub fn start(lab: &Lab, args: &[&str]) -> Self {
        let mut full = vec!["--netns", &lab.host_ns(), "trace", "--json"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        full.extend(args.iter().map(|a| (*a).to_owned()));
        let shown = format!("bpfmasq {}", full.join(" "));
        let mut child = Command::new(bin())
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = Arc::clone(&stdout);
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let text = Arc::clone(&stderr);
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }),
            thread::spawn(move || {
                let mut err = err;
                let mut buf = [0; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    text.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        let mut tracer = Self {
            shown,
            child,
            stdout,
            stderr,
            readers,
        };
        let deadline = Instant::now() + TRACE_TIMEOUT;
        while !tracer.stderr().contains("tracing ") {
            if let Ok(Some(status)) = tracer.child.try_wait() {
                tracer.join_readers();
                panic!(
                    "`{}` exited ({status}) before tracing:\n{}",
                    tracer.shown,
                    tracer.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not start tracing within {TRACE_TIMEOUT:?}:\n{}",
                tracer.shown,
                tracer.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        tracer
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The events printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "`{}` printed a line that is not JSON ({e}): {line}",
                        self.shown
                    )
                })
            })
            .collect()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the trace to end.
    pub fn interrupt(self) -> Traced {
        self.signal(libc::SIGINT);
        self.finish()
    }

    /// Sends `signal` to the trace itself.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child, not reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "signal to `{}`",
            self.shown
        );
    }

    /// Waits for the trace to end by itself (`--count`, a signal sent before).
    pub fn finish(mut self) -> Traced {
        let deadline = Instant::now() + TRACE_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the trace") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not end within {TRACE_TIMEOUT:?}:\n{}",
                self.shown,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        };
        self.join_readers();
        Traced {
            status,
            events: self.events(),
            stderr: self.stderr(),
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(&mut self.child);
        }
        let _ = self.child.wait();
        self.join_readers();
    }
}
