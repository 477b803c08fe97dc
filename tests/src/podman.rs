//! A real runtime for the CNI plugin: podman 4 (CNI backend) inside a lab's
//! host namespace. The [`Podman`] guard gives it private storage, runtime
//! and temporary folders, a `containers.conf` whose network section points
//! at the test's conflist folder and at a plugin folder holding
//! `bpfmasq-cni`, a busybox root filesystem for `--rootfs` (no image
//! registry is needed), and a mount namespace of its own that lives as long
//! as the guard: podman needs a cgroup2 mount there, and every podman call
//! must see the same mounts (the namespaces podman mounts for its
//! containers). Only the network and mount namespaces change, so the host's
//! BPF filesystem is the plugin's. Dropping the guard removes the
//! containers (CNI DEL), podman's namespace files, the holder process and
//! every folder.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{cni::plugin_bin, lab::Lab, process};

/// How long one podman command may take.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(90);

/// Where libcni caches results; podman's CNI backend has no setting for it.
const CNI_CACHE: &str = "/var/lib/cni";

/// The busybox applets the containers use.
const APPLETS: [&str; 7] = ["sh", "sleep", "nc", "nslookup", "echo", "timeout", "cat"];

/// podman, configured for one test inside one lab's host namespace.
#[derive(Debug)]
pub struct Podman {
    host_ns: String,
    dir: PathBuf,
    holder: Child,
    /// Network namespace files podman made for its containers.
    sandboxes: Vec<PathBuf>,
    /// Whether [`CNI_CACHE`] existed before: if not, it goes once empty.
    had_cni_cache: bool,
}

impl Podman {
    /// Prepares podman in `lab`'s host (networks come with
    /// [`Podman::add_network`]). Panics with a clear message when podman is
    /// not installed: the test must not pass without running it.
    pub fn new(lab: &Lab) -> Self {
        assert!(
            Path::new("/usr/bin/podman").is_file(),
            "podman is not installed: run `cargo xtask setup` (it installs podman, \
             containernetworking-plugins, runc and busybox-static)"
        );
        let dir = std::env::temp_dir().join(format!("bpfmasq-e2e-podman-{}", lab.name()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["root", "runroot", "tmp", "net.d", "plugins", "ipam"] {
            std::fs::create_dir_all(dir.join(sub)).expect("creating podman's folders");
        }
        symlink(plugin_bin(), dir.join("plugins/bpfmasq-cni")).expect("linking the plugin");
        make_rootfs(&dir.join("rootfs"));
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\nlog_driver = \"k8s-file\"\n\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{tmp}/events.log\"\ntmp_dir = \"{tmp}\"\n\
                 runtime = \"runc\"\n\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{netd}\"\n\
                 cni_plugin_dirs = [\"{plugins}\", \"/usr/lib/cni\"]\n",
                tmp = dir.join("tmp").display(),
                netd = dir.join("net.d").display(),
                plugins = dir.join("plugins").display(),
            ),
        )
        .expect("writing containers.conf");
        let holder = spawn_holder();
        Self {
            host_ns: lab.host_ns(),
            dir,
            holder,
            sandboxes: Vec::new(),
            had_cni_cache: Path::new(CNI_CACHE).exists(),
        }
    }

    /// Adds the CNI network `conflist` (podman's `--network` takes its `name`).
    pub fn add_network(&self, conflist: &Value) {
        let name = conflist["name"].as_str().expect("the conflist has a name");
        std::fs::write(
            self.dir.join("net.d").join(format!("{name}.conflist")),
            serde_json::to_string_pretty(conflist).expect("conflist JSON"),
        )
        .expect("writing the conflist");
    }

    /// Where the host-local IPAM plugin should keep its leases.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// A scratch folder of the test's (removed with the guard).
    pub fn scratch(&self) -> &Path {
        &self.dir
    }

    /// `podman ARGS...` in the lab's host; the exit status is left to the caller.
    pub fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        process::run(&mut cmd, PODMAN_TIMEOUT)
    }

    /// Like [`Podman::podman`], panicking with the output unless it
    /// succeeds; returns stdout, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "`podman {}` in {} failed: {}",
            args.join(" "),
            self.host_ns,
            process::describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts a container called `name` on `network` with address `ip`
    /// (busybox, sleeping); returns its full id.
    pub fn run(&mut self, name: &str, network: &str, ip: &str) -> String {
        let rootfs = self.dir.join("rootfs");
        let id = self.podman_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--ip",
            ip,
            "--pids-limit=-1",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            rootfs.to_str().expect("UTF-8 path"),
            "sleep",
            "600",
        ]);
        let sandbox = self.podman_ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            &id,
        ]);
        if !sandbox.is_empty() {
            self.sandboxes.push(PathBuf::from(sandbox));
        }
        id
    }

    /// `sh -c SCRIPT` in container `name`; the exit status is left to the caller.
    pub fn exec(&self, name: &str, script: &str) -> Output {
        self.podman(&["exec", name, "sh", "-c", script])
    }

    /// Stops and removes container `name` (podman sends CNI DEL).
    pub fn remove(&self, name: &str) {
        self.podman_ok(&["rm", "-f", "-t", "0", name]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        process_group::kill_group(&mut self.holder);
        // Their mounts lived in the holder's mount namespace; the files stay.
        for sandbox in &self.sandboxes {
            let _ = std::fs::remove_file(sandbox);
        }
        if !self.had_cni_cache {
            // Only empty folders go: another runtime may be using them.
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).join("results"));
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// A folder with a static busybox and its applets as symlinks, plus the
/// mount points runc and podman expect.
fn make_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("creating the rootfs");
    for dir in ["etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("creating the rootfs");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copying /bin/busybox (install busybox-static: `cargo xtask setup`)");
    for applet in APPLETS {
        symlink("busybox", bin.join(applet)).expect("linking a busybox applet");
    }
}

/// A process in a mount namespace of its own with cgroup2 mounted on
/// /sys/fs/cgroup (podman needs it; this host has none mounted), kept alive
/// until the guard kills it. Ready when this returns.
fn spawn_holder() -> Child {
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t cgroup2 none /sys/fs/cgroup && echo ready && exec sleep 3600")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("starting unshare for podman's mount namespace");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the mount namespace holder");
    if line.trim() != "ready" {
        process_group::kill_group(&mut child);
        panic!("could not mount cgroup2 in a private mount namespace for podman");
    }
    child
}

/// The CNI network podman uses in the tests: `bridge` on the lab's bridge
/// (no masquerade of its own), host-local addresses from `range_start` to
/// `range_end` in the lab's pod network, then `bpfmasq-cni` with `plugin`'s
/// keys.
pub fn conflist(name: &str, ipam_dir: &Path, ranges: (&str, &str), plugin: Value) -> Value {
    let mut bpfmasq = json!({"type": "bpfmasq-cni"});
    if let (Some(target), Some(keys)) = (bpfmasq.as_object_mut(), plugin.as_object()) {
        target.extend(keys.clone());
    }
    json!({
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": crate::topology::BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{
                        "subnet": "10.85.0.0/16",
                        "rangeStart": ranges.0,
                        "rangeEnd": ranges.1,
                        "gateway": crate::topology::BRIDGE_ADDR.to_string(),
                    }]]
                }
            },
            bpfmasq
        ]
    })
}
