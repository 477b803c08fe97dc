//! The bpfmasq image under podman: a private podman storage per test with
//! the image loaded from the archive `cargo xtask image` writes
//! (`$BPFMASQ_IMAGE`), and `bpfmasq run` in a container that joins a lab's
//! host namespace (`--network ns:/run/netns/NAME-host`) with the machine's
//! bpffs bind-mounted, as a DaemonSet pod joins its node's.
//!
//! Every podman command runs in a mount namespace of its own with cgroup2
//! mounted there when the machine has none mounted (podman needs it; the
//! machine's own mounts stay as they are), with the ulimits and pids setting
//! a machine without CAP_SYS_RESOURCE or a pids controller accepts.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::{
    daemon_support::{DAEMON_TIMEOUT, Daemon, DaemonLauncher},
    lab::Lab,
    process::{self, describe},
};

/// Environment variable naming the image archive (`target/image/bpfmasq-<version>.tar`).
pub const IMAGE_ENV: &str = "BPFMASQ_IMAGE";

/// How long loading the image or a podman command may take.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The image's reference once loaded: `cargo xtask image` tags it with the workspace version.
pub fn image_ref() -> String {
    format!("localhost/bpfmasq:{}", env!("CARGO_PKG_VERSION"))
}

/// The image archive; panics with instructions when it does not exist.
pub fn image_archive() -> PathBuf {
    let path = std::env::var_os(IMAGE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../target/image/bpfmasq-{}.tar",
                env!("CARGO_PKG_VERSION")
            ))
        });
    assert!(
        path.is_file(),
        "the image archive is missing at {}: build it with `cargo xtask image` \
         (or point {IMAGE_ENV} at one)",
        path.display()
    );
    path
}

/// A private podman storage with the bpfmasq image loaded; removed (containers
/// first) when dropped.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Storage of its own for `lab`, with the image loaded.
    pub fn with_image(lab: &Lab) -> Self {
        let archive = image_archive();
        let dir = std::env::temp_dir().join(format!("bpfmasq-e2e-podman-{}", lab.name()));
        // A killed earlier run may have left it: start afresh.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run-bpfmasq"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let podman = Self { dir };
        podman.ok(&[
            "load".as_ref(),
            "--quiet".as_ref(),
            "--input".as_ref(),
            archive.as_os_str(),
        ]);
        podman
    }

    /// `podman --root ... --runroot ... ARGS` in a mount namespace of its own.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "[ -e /sys/fs/cgroup/cgroup.controllers ] || mount -t cgroup2 none /sys/fs/cgroup \
                 && exec \"$0\" \"$@\"",
            )
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args);
        command
    }

    /// Runs podman with `args`; the exit status is left to the caller.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        process::run(&mut self.command(args), PODMAN_TIMEOUT)
    }

    /// Runs podman with `args` and panics unless it succeeds; returns stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(
            out.status.success(),
            "podman {} failed: {}",
            shown.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The folder bind-mounted as the containers' /run/bpfmasq (locks, verifier logs).
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run-bpfmasq")
    }

    /// A BPF filesystem of its own (a new bpffs instance, unmounted when
    /// the storage is dropped), for a container whose pins must not meet
    /// anyone else's: one in its own pid namespace labels them `default`.
    pub fn own_bpffs(&self) -> PathBuf {
        let dir = self.dir.join("bpffs");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting a BPF filesystem on {}: {e}", dir.display()));
        dir
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = process::try_run(
            &mut self.command(&["rm", "--all", "--force", "--time", "0"]),
            PODMAN_TIMEOUT,
        );
        let bpffs = self.dir.join("bpffs");
        if bpffs.exists() {
            let _ = nix::mount::umount2(&bpffs, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `bpfmasq ARGS` from the image in a container named `name`, in the lab's
/// host namespace, with `podman_options` (capabilities, ...) added.
#[derive(Debug)]
pub struct ImageDaemon<'p> {
    pub podman: &'p Podman,
    pub name: String,
    pub podman_options: Vec<String>,
    pub bpfmasq_args: Vec<String>,
    /// The BPF filesystem mounted as the container's /sys/fs/bpf: the
    /// machine's ([`MACHINE_BPFFS`]) or a test's own instance.
    pub bpffs: PathBuf,
}

/// The machine's BPF filesystem.
pub const MACHINE_BPFFS: &str = "/sys/fs/bpf";

impl ImageDaemon<'_> {
    /// Runs `bpfmasq ARGS` once from the image, in a container set up like
    /// the daemon's (another name); the exit status is left to the caller.
    pub fn run_once(&self, lab: &Lab, bpfmasq_args: &[&str]) -> Output {
        let name = format!("{}-once", self.name);
        let args = self.podman_run_args(lab, &name, bpfmasq_args);
        self.podman.run(&args)
    }

    fn podman_run_args<S: AsRef<str>>(
        &self,
        lab: &Lab,
        name: &str,
        bpfmasq_args: &[S],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--replace",
            "--name",
            name,
            "--pids-limit=-1",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            &format!("ns:/run/netns/{}", lab.host_ns()),
            "--volume",
            &format!("{}:/sys/fs/bpf", self.bpffs.display()),
            "--volume",
            "/run/netns:/run/netns",
            "--volume",
            &format!("{}:/run/bpfmasq", self.podman.run_dir().display()),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.podman_options.iter().cloned());
        args.push(image_ref());
        args.extend(bpfmasq_args.iter().map(|a| a.as_ref().to_owned()));
        args
    }
}

impl DaemonLauncher for ImageDaemon<'_> {
    fn start(&self, lab: &Lab) -> (Daemon, String) {
        let args = self.podman_run_args(lab, &self.name, &self.bpfmasq_args);
        let shown = format!("podman {}", args.join(" "));
        let mut daemon = Daemon::spawn_command(self.podman.command(&args), shown);
        let line = daemon.wait_for_started();
        (daemon, line)
    }

    fn sigkill(&self, daemon: &mut Daemon) {
        self.podman
            .ok(&["kill", "--signal", "KILL", self.name.as_str()]);
        daemon.wait(DAEMON_TIMEOUT);
    }
}
