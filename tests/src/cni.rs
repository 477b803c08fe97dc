//! Calling the CNI plugin `bpfmasq-cni` by hand, as a runtime would, inside
//! a lab's host namespace: for the verbs podman 4 never sends (GC, STATUS)
//! and for DEL in shapes podman does not produce.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;

use crate::{lab::Lab, process, product};

/// The plugin binary built beside `bpfmasq`.
pub fn plugin_bin() -> PathBuf {
    let path = product::bin().with_file_name("bpfmasq-cni");
    assert!(
        path.is_file(),
        "the CNI plugin is missing at {}: build it with `cargo xtask build`",
        path.display()
    );
    path
}

/// What one invocation printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub output: Output,
    /// stdout as JSON (`Null` when it printed nothing).
    pub json: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// The CNI error code, when it printed an error.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
}

/// Runs `bpfmasq-cni` in the lab's host namespace with `CNI_COMMAND=command`,
/// `env` and `conf` on stdin (written to `scratch`, a folder of the test's).
/// Only the network namespace changes (`nsenter --net`), so the plugin sees
/// the host's BPF filesystem as a runtime's plugin does.
pub fn invoke(
    lab: &Lab,
    scratch: &Path,
    command: &str,
    env: &[(&str, &str)],
    conf: &Value,
) -> Reply {
    // One file per call: calls may run at once.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let input = scratch.join(format!("cni-{call}-{command}.json"));
    std::fs::write(&input, conf.to_string()).expect("writing the plugin's input");
    let stdin = File::open(&input).expect("opening the plugin's input");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.host_ns()))
        .arg("--")
        .arg(plugin_bin())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied());
    let output = process::try_run_fed(&mut cmd, stdin.into(), product::COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let json = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "bpfmasq-cni {command} printed no JSON ({e}): {}",
                process::describe(&output)
            )
        })
    };
    Reply { output, json }
}
