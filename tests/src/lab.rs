//! The [`Lab`] guard: a lab of namespaces built with `bpfmasq lab up` for one
//! test, removed again with `bpfmasq lab down` when the guard drops, panic or not.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::Duration,
};

use bpfmasq::netns::NetNs;

use crate::{
    netns::run_in,
    product::{self, bpfmasq, bpfmasq_within, try_bpfmasq},
    topology::{FAR, HOST, OUT, UPLINK, container},
};

/// Longest lab name the tests use.
pub const MAX_NAME_LEN: usize = 20;

/// Where `attach` pins a datapath: `/sys/fs/bpf/bpfmasq/<netns>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/bpfmasq";

/// A lab built for one test; dropping it detaches any datapath left in its
/// host and runs `lab down`, then checks that nothing of the lab is left.
#[derive(Debug)]
pub struct Lab {
    name: String,
    containers: u16,
}

impl Lab {
    /// Builds the lab `e2e-<id>-<pid>` with `containers` containers.
    /// `id` is a short, per-test name; the pid keeps parallel runs apart.
    pub fn up(id: &str, containers: u16) -> Self {
        Self::build(id, containers, false)
    }

    /// Like [`Lab::up`], plus the far peer (`lab up --far-peer`): node
    /// [`FAR`], one routed hop beyond the outside peer over a 1280-byte MTU link.
    pub fn up_with_far_peer(id: &str, containers: u16) -> Self {
        Self::build(id, containers, true)
    }

    fn build(id: &str, containers: u16, far_peer: bool) -> Self {
        product::require_root();
        product::bin();
        let name = format!("e2e-{id}-{}", std::process::id());
        assert!(
            name.len() <= MAX_NAME_LEN,
            "lab name `{name}` is longer than {MAX_NAME_LEN} characters: shorten the test id `{id}`"
        );
        // The guard exists before `lab up` runs, so that a half-built lab is removed too.
        let lab = Self { name, containers };
        if !lab.namespaces().is_empty() {
            lab.teardown(); // left over from an earlier run with the same pid
        }
        let count = containers.to_string();
        let mut args = vec!["lab", "up", "--name", &lab.name, "--containers", &count];
        if far_peer {
            args.push("--far-peer");
        }
        let out = bpfmasq(&args);
        assert!(
            out.status.success(),
            "`bpfmasq {}` failed: {}",
            args.join(" "),
            crate::process::describe(&out)
        );
        lab
    }

    /// The lab's name (namespaces are `NAME-host`, `NAME-out`, `NAME-c1`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of containers.
    pub fn containers(&self) -> u16 {
        self.containers
    }

    /// The namespace of `node` (`host`, `out`, `far`, `c1`...).
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// The host's namespace, the one `attach` is given with `--netns`.
    pub fn host_ns(&self) -> String {
        self.ns(HOST)
    }

    /// Where `attach` pins the datapath of this lab's uplink.
    pub fn pins_dir(&self) -> PathBuf {
        PathBuf::from(PIN_ROOT).join(self.host_ns()).join(UPLINK)
    }

    /// Runs `f` inside `node`'s namespace (see [`run_in`]).
    pub fn run_in<T, F>(&self, node: &str, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        run_in(&self.ns(node), f)
    }

    /// `bpfmasq lab exec --name NAME NODE -- ARGS...`; the exit status is left to the caller.
    pub fn exec<S: AsRef<OsStr>>(&self, node: &str, args: &[S]) -> Output {
        self.exec_within(node, args, product::COMMAND_TIMEOUT)
    }

    /// Like [`Lab::exec`], for a command that may take up to `timeout`.
    pub fn exec_within<S: AsRef<OsStr>>(
        &self,
        node: &str,
        args: &[S],
        timeout: Duration,
    ) -> Output {
        let mut full: Vec<&OsStr> = ["lab", "exec", "--name", &self.name, node, "--"]
            .into_iter()
            .map(OsStr::new)
            .collect();
        full.extend(args.iter().map(AsRef::as_ref));
        bpfmasq_within(full, timeout)
    }

    /// Like [`Lab::exec`], but panics with the command's output unless it
    /// succeeds; returns its standard output.
    pub fn exec_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.exec(node, args);
        assert!(
            out.status.success(),
            "`{}` in {} failed: {}",
            args.join(" "),
            self.ns(node),
            crate::process::describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Limits the host's uplink to `rate` (a tc rate, e.g. `40mbit`) with a
    /// token bucket, so that a transfer is still running when a test acts
    /// in the middle of it. Goes with the lab.
    pub fn limit_uplink(&self, rate: &str) {
        self.exec_ok(
            HOST,
            &[
                "tc", "qdisc", "add", "dev", UPLINK, "root", "tbf", "rate", rate, "burst", "256kb",
                "latency", "200ms",
            ],
        );
    }

    /// The lab's namespaces that currently exist.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        // The far peer too, whether asked for or not: a leftover is a leftover.
        let mut nodes = vec![HOST.to_owned(), OUT.to_owned(), FAR.to_owned()];
        nodes.extend((1..=self.containers).map(container));
        NetNs::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| {
                ns.strip_prefix(&prefix)
                    .is_some_and(|node| nodes.iter().any(|n| n == node))
            })
            .collect()
    }

    /// Detaches what is pinned, runs `lab down`, removes whatever is still
    /// left by hand. Returns what had to be cleaned by hand or failed.
    fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let host_pins = PathBuf::from(PIN_ROOT).join(self.host_ns());
        if host_pins.exists() && NetNs::exists(&self.host_ns()) {
            let _ = try_bpfmasq(["--netns", &self.host_ns(), "detach", "--uplink", UPLINK]);
        }
        match try_bpfmasq(["lab", "down", "--name", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "`bpfmasq lab down --name {}` failed: {}",
                self.name,
                crate::process::describe(&out)
            )),
            Err(e) => problems.push(format!("`bpfmasq lab down --name {}`: {e}", self.name)),
        }
        for ns in self.namespaces() {
            problems.push(format!(
                "network namespace {ns} was left behind; deleted it"
            ));
            if let Err(e) = NetNs::delete(&ns) {
                problems.push(format!("cannot delete network namespace {ns}: {e:#}"));
            }
        }
        if host_pins.exists() {
            let pins = files_under(&host_pins);
            if pins.is_empty() {
                eprintln!(
                    "note: empty {} left behind; removed it",
                    host_pins.display()
                );
            } else {
                problems.push(format!("pins left behind, removed them: {pins:?}"));
            }
            if let Err(e) = std::fs::remove_dir_all(&host_pins) {
                problems.push(format!("cannot remove {}: {e}", host_pins.display()));
            }
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = self.teardown();
        if problems.is_empty() {
            return;
        }
        let report = format!(
            "tearing down lab {}:\n  {}",
            self.name,
            problems.join("\n  ")
        );
        if thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

/// Every file (pin) below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// `bpfmasq lab exec --name NAME NODE -- ARGS...` (see [`Lab::exec`]).
pub fn exec_in<S: AsRef<OsStr>>(lab: &Lab, node: &str, args: &[S]) -> Output {
    lab.exec(node, args)
}
