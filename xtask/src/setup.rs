//! `cargo xtask setup`: makes the machine able to build and test bpfmasq.
//!
//! Every step checks first and acts only when something is missing, so a
//! second run takes about a second and changes nothing:
//! 1. the nightly toolchain (must exist; its LLVM version decides the rest),
//! 2. the Debian packages the tests and the demo use (apt, as root),
//! 3. `rust-src` for the nightly (`-Z build-std=core` needs it),
//! 4. `bpf-linker`, built against the nightly's own libLLVM,
//! 5. the BPF filesystem at /sys/fs/bpf (as root),
//! 6. the musl target (`cargo xtask image` builds static binaries with it),
//! 7. kubernetes-validate from PyPI in a venv of its own (tests/tests/deploy.rs).
//!
//! The kernel matrix (`cargo xtask test --kernels`) needs more, which
//! [`ensure_vm_tools`] installs only when the matrix runs (and `cargo xtask
//! setup` installs with everything else): QEMU, kmod and busybox from Debian,
//! and virtme-ng from PyPI in a venv of its own. `cargo xtask build`, `demo`
//! and `lint` never need them.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd::Cmd, ui, workspace};

/// Debian packages the e2e tests, the demo and the bench run.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "iperf3",
    "python3-scapy",
    "procps",
    // tests/tests/path.rs: hops and path MTU past the uplink.
    "traceroute",
    "iputils-tracepath",
    // `bpfmasq-bench` (util-linux's taskset is essential, always there).
    "wrk",
    "nginx-light",
    "sockperf",
    // tests/tests/podman.rs: a real runtime calling `bpfmasq-cni` (busybox is
    // the containers' rootfs: no image registry is reachable).
    "podman",
    "containernetworking-plugins",
    "runc",
    "busybox-static",
    // tests/tests/metrics.rs: a real Prometheus scrapes `bpfmasq run`, promtool lints it.
    "prometheus",
    // tests/tests/deploy.rs: the manifests (yamllint; kubernetes-validate lives in a venv)
    // and the systemd unit (systemd-analyze). (`cargo xtask image` and
    // tests/tests/image.rs use podman and runc too.)
    "yamllint",
    "python3-venv",
    "systemd",
];

/// Debian packages the kernel matrix boots its guests with: QEMU, depmod
/// (kmod) for the extracted kernels' modules, busybox for virtme-ng's
/// initramfs, and python3-venv for virtme-ng's venv.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "python3-venv"];

/// The virtme-ng release the matrix was verified with; `vng --version` prints
/// `virtme-ng 1.42`.
const VIRTME_NG_VERSION: &str = "1.42";

/// The kubernetes-validate release the manifests are checked with; it bundles
/// the schemas up to Kubernetes 1.37.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The bpf-linker release known to work with aya 0.14 and LLVM 21-23.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where `bpffs` must be mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// What building, the host's tests, the demo and the bench need.
pub fn run() -> Result<()> {
    ui::section("setup: checking what building and testing bpfmasq need");
    let started = Instant::now();
    let nightly = Nightly::detect()?;
    ensure_packages(PACKAGES)?;
    ensure_rust_src()?;
    ensure_bpf_linker(&nightly)?;
    ensure_bpffs()?;
    ensure_musl_target()?;
    ensure_kubernetes_validate()?;
    ui::ok(&format!(
        "setup complete ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `cargo xtask setup`: everything, the kernel matrix's tools included.
pub fn run_all() -> Result<()> {
    run()?;
    ensure_vm_tools().map(drop)
}

/// What the kernel matrix needs on top of [`run`]; returns the folder holding
/// `vng` and `virtme-run` (vng runs the latter by name: put it on PATH).
pub fn ensure_vm_tools() -> Result<PathBuf> {
    ui::section("setup: checking what booting kernels with virtme-ng needs");
    let started = Instant::now();
    ensure_packages(VM_PACKAGES)?;
    let bin_dir = ensure_virtme_ng()?;
    ui::ok(&format!(
        "VM tools ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(bin_dir)
}

/// The nightly toolchain (rustup's `nightly`), which builds the eBPF object.
struct Nightly {
    /// The LLVM major version of its rustc; bpf-linker must use the same.
    llvm_major: u32,
}

impl Nightly {
    fn detect() -> Result<Self> {
        ui::step("nightly toolchain");
        let toolchains = Cmd::new("rustup")
            .args(["toolchain", "list"])
            .read()
            .context(
                "rustup is needed (with the stable and nightly toolchains): see https://rustup.rs",
            )?;
        if !has_nightly(&toolchains) {
            bail!(
                "no nightly toolchain (`rustup toolchain list` shows none); the eBPF programs \
                 need one: `rustup toolchain install nightly`"
            );
        }
        let version = nightly_cmd("rustc").arg("-vV").read()?;
        let llvm_major = llvm_major(&version)
            .with_context(|| format!("no `LLVM version` in `rustc +nightly -vV`:\n{version}"))?;
        let release = version.lines().next().unwrap_or_default();
        ui::ok(&format!("{release}, LLVM {llvm_major}"));
        Ok(Self { llvm_major })
    }

    /// `<sysroot>/lib`, where the nightly keeps its shared libLLVM.
    fn lib_dir(&self) -> Result<PathBuf> {
        let sysroot = nightly_cmd("rustc").args(["--print", "sysroot"]).read()?;
        Ok(Path::new(sysroot.trim()).join("lib"))
    }
}

/// A nightly tool through rustup (works whichever toolchain runs xtask).
fn nightly_cmd(tool: &str) -> Cmd {
    Cmd::new("rustup").args(["run", "nightly", tool])
}

fn ensure_packages(packages: &[&'static str]) -> Result<()> {
    ui::step(&format!("Debian packages: {}", packages.join(" ")));
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "this is not Debian (no /etc/debian_version): setup installs packages with apt only; \
             install the equivalents of {} by hand",
            packages.join(" ")
        );
    }
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        ui::ok("all installed");
        return Ok(());
    }
    workspace::require_root(
        &format!("installing {}", missing.join(" ")),
        "apt needs it (run `cargo xtask setup` as root once)",
    )?;
    ui::note(&format!(
        "missing: {}; installing with apt",
        missing.join(" ")
    ));
    apt_get(&["update"])?;
    apt_get(
        &[
            &["install", "--yes", "--no-install-recommends"][..],
            &missing,
        ]
        .concat(),
    )?;
    let still_missing = missing_packages(packages)?;
    if !still_missing.is_empty() {
        bail!("apt could not install {}", still_missing.join(" "));
    }
    ui::ok("installed");
    Ok(())
}

fn missing_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when a package is unknown, but still lists the others.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(packages)
        .output()?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(packages
        .iter()
        .copied()
        .filter(|p| !is_installed(&listing, p))
        .collect())
}

fn apt_get(args: &[&str]) -> Result<()> {
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Wait for a concurrent apt (e.g. unattended-upgrades on a fresh VM).
        .args(["-q", "-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .run()
}

/// virtme-ng from PyPI, in a venv of its own under the cache folder (Debian's
/// python3, whatever python3 comes first on PATH). Returns the venv's bin/.
fn ensure_virtme_ng() -> Result<PathBuf> {
    ui::step(&format!(
        "virtme-ng {VIRTME_NG_VERSION} (PyPI, in its own venv)"
    ));
    let venv = workspace::cache_dir()?.join("virtme-ng");
    let bin_dir = venv.join("bin");
    match virtme_ng_version(&bin_dir) {
        Some(have) if have == VIRTME_NG_VERSION => {
            ui::ok(&format!("virtme-ng {have} in {}", venv.display()));
            return Ok(bin_dir);
        }
        Some(have) => ui::note(&format!("virtme-ng {have} installed; replacing it")),
        None => ui::note(&format!(
            "not installed; installing it into {}",
            venv.display()
        )),
    }
    install_in_venv(&venv, &format!("virtme-ng=={VIRTME_NG_VERSION}"))?;
    match virtme_ng_version(&bin_dir) {
        Some(have) if have == VIRTME_NG_VERSION => {
            ui::ok(&format!("virtme-ng {have}"));
            Ok(bin_dir)
        }
        other => bail!("virtme-ng still not usable after installing it (vng --version: {other:?})"),
    }
}

/// kubernetes-validate from PyPI in its own venv under the cache folder, for
/// tests/tests/deploy.rs; returns the venv's bin/.
pub fn ensure_kubernetes_validate() -> Result<PathBuf> {
    ui::step(&format!(
        "kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI, in its own venv)"
    ));
    let venv = kubernetes_validate_venv()?;
    let bin_dir = venv.join("bin");
    let version = || {
        let printed = Cmd::new(bin_dir.join("kubernetes-validate"))
            .arg("--version")
            .read()
            .ok()?;
        Some(printed.trim().to_owned())
    };
    if version().as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        ui::ok(&format!("installed in {}", venv.display()));
        return Ok(bin_dir);
    }
    install_in_venv(
        &venv,
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    )?;
    match version() {
        Some(have) if have == KUBERNETES_VALIDATE_VERSION => {
            ui::ok("installed");
            Ok(bin_dir)
        }
        other => bail!("kubernetes-validate still not usable after installing it ({other:?})"),
    }
}

/// A fresh venv at `venv` with `requirement` (`name==version`) from PyPI.
/// `--clear`: a venv left by an older python or a broken install starts afresh.
fn install_in_venv(venv: &Path, requirement: &str) -> Result<()> {
    Cmd::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .run()?;
    Cmd::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(requirement)
        .run()
}

/// `~/.cache/bpfmasq/kubernetes-validate`.
pub fn kubernetes_validate_venv() -> Result<PathBuf> {
    Ok(workspace::cache_dir()?.join("kubernetes-validate"))
}

/// The musl target of the stable toolchain: `cargo xtask image` builds static binaries with it.
fn ensure_musl_target() -> Result<()> {
    let target = crate::image::MUSL_TARGET;
    ui::step(&format!(
        "Rust target {target} (static binaries for the image)"
    ));
    let installed = Cmd::new("rustup")
        .args(["target", "list", "--installed"])
        .read()?;
    if installed.lines().any(|t| t.trim() == target) {
        ui::ok("installed");
        return Ok(());
    }
    Cmd::new("rustup").args(["target", "add", target]).run()?;
    ui::ok("installed");
    Ok(())
}

/// `1.42` from the venv's `vng --version` (`virtme-ng 1.42`); None when it does not run.
fn virtme_ng_version(bin_dir: &Path) -> Option<String> {
    let vng = bin_dir.join("vng");
    if !vng.is_file() {
        return None;
    }
    let printed = Cmd::new(vng).arg("--version").read().ok()?;
    Some(printed.trim().strip_prefix("virtme-ng ")?.to_owned())
}

fn ensure_rust_src() -> Result<()> {
    ui::step("rust-src for the nightly toolchain (for -Z build-std=core)");
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .read()?;
    if installed
        .lines()
        .any(|c| c.trim() == "rust-src" || c.starts_with("rust-src-"))
    {
        ui::ok("installed");
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .run()?;
    ui::ok("installed");
    Ok(())
}

/// What we know about the bpf-linker on PATH.
#[derive(Debug)]
enum Linker {
    /// Runs, and (as far as cargo's install record tells) uses the nightly's LLVM.
    Ready(String),
    Missing,
    /// Found but `--version` fails, typically because its libLLVM is gone (a new nightly).
    Broken(anyhow::Error),
    /// Built for another LLVM major version than the nightly's.
    WrongLlvm(u32),
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<()> {
    let major = nightly.llvm_major;
    ui::step(&format!(
        "bpf-linker {BPF_LINKER_VERSION} with LLVM {major}"
    ));
    let state = linker_state(major);
    match &state {
        Linker::Ready(version) => {
            ui::ok(version);
            return Ok(());
        }
        Linker::Missing => ui::note("not installed; building it (takes a minute or two)"),
        Linker::Broken(e) => ui::note(&format!("installed but broken ({e:#}); rebuilding it")),
        Linker::WrongLlvm(have) => ui::note(&format!(
            "installed for LLVM {have}, the nightly has LLVM {major}; rebuilding it"
        )),
    }
    install_bpf_linker(nightly, !matches!(state, Linker::Missing))?;
    match linker_state(major) {
        Linker::Ready(version) => {
            ui::ok(&version);
            Ok(())
        }
        other => bail!("bpf-linker still not usable after installing it: {other:?}"),
    }
}

fn linker_state(llvm_major: u32) -> Linker {
    let Some(path) = workspace::which("bpf-linker") else {
        return Linker::Missing;
    };
    let version = match Cmd::new(&path).arg("--version").read() {
        Ok(version) => version.trim().to_owned(),
        Err(e) => return Linker::Broken(e),
    };
    // Cargo records the features of what it installed; a bpf-linker from
    // elsewhere is taken as is.
    let recorded = workspace::cargo_bin_dir()
        .ok()
        .filter(|bin| path.starts_with(bin))
        .and_then(|bin| {
            let record = fs::read_to_string(bin.parent()?.join(".crates2.json")).ok()?;
            recorded_llvm_major(&record)
        });
    match recorded {
        Some(have) if have != llvm_major => Linker::WrongLlvm(have),
        _ => Linker::Ready(version),
    }
}

/// Builds bpf-linker against the nightly's libLLVM: a prefix whose lib/ links
/// to it, then `cargo install` with `LLVM_PREFIX` (bpf-linker's rpath keeps
/// pointing at that prefix, so it stays).
fn install_bpf_linker(nightly: &Nightly, force: bool) -> Result<()> {
    let lib_dir = nightly.lib_dir()?;
    let libllvm = find_libllvm(&lib_dir)?;
    let prefix = workspace::home()?.join(".cache").join("bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    ui::note(&format!(
        "linking {} to the nightly's {}",
        prefix_lib.display(),
        lib_dir.join(&libllvm).display()
    ));
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        symlink_replacing(&lib_dir.join(&libllvm), &prefix_lib.join(name))?;
    }
    Cmd::new(workspace::cargo())
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
        ])
        .args(force.then_some("--force"))
        .run()
}

/// The nightly's shared LLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(lib_dir: &Path) -> Result<String> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| is_rust_libllvm(name))
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| {
        format!(
            "no libLLVM.so.*-rust-* in {}: is this a rustup nightly?",
            lib_dir.display()
        )
    })
}

fn symlink_replacing(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

fn ensure_bpffs() -> Result<()> {
    ui::step(&format!("BPF filesystem at {BPFFS}"));
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        ui::ok("mounted");
        return Ok(());
    }
    workspace::require_root(
        &format!("mounting the BPF filesystem at {BPFFS}"),
        "mount needs it (run `cargo xtask setup` as root once)",
    )?;
    ui::command(&format!("mount -t bpf bpf {BPFFS}"));
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    ui::ok("mounted");
    Ok(())
}

fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| {
            // `nightly` or `nightly-<host>`, not a dated `nightly-2025-01-01-<host>`.
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// `LLVM version: 22.1.4` in `rustc -vV` → 22.
fn llvm_major(rustc_version: &str) -> Option<u32> {
    let version = rustc_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

fn is_installed(dpkg_listing: &str, package: &str) -> bool {
    dpkg_listing.lines().any(|line| {
        line.split_once('\t').is_some_and(|(name, status)| {
            name == package && status.trim() == "install ok installed"
        })
    })
}

fn is_rust_libllvm(name: &str) -> bool {
    name.starts_with("libLLVM.so.") && name.contains("-rust-")
}

fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, mountpoint, "bpf", ..] if *mountpoint == BPFFS)
    })
}

/// The `llvm-N` feature cargo recorded for its bpf-linker install, from
/// `$CARGO_HOME/.crates2.json`.
fn recorded_llvm_major(crates2_json: &str) -> Option<u32> {
    let record: serde_json::Value = serde_json::from_str(crates2_json).ok()?;
    let (_, install) = record["installs"]
        .as_object()?
        .iter()
        .find(|(key, _)| key.starts_with("bpf-linker "))?;
    install["features"]
        .as_array()?
        .iter()
        .find_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }

    #[test]
    fn reads_the_llvm_major() {
        let version = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                       host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(version), Some(22));
        assert_eq!(llvm_major("rustc 1.0.0\n"), None);
    }

    #[test]
    fn reads_dpkg_status() {
        let listing = "iproute2\tinstall ok installed\ntcpdump\tdeinstall ok config-files\n";
        assert!(is_installed(listing, "iproute2"));
        assert!(!is_installed(listing, "tcpdump"));
        assert!(!is_installed(listing, "bpftool"));
    }

    #[test]
    fn recognises_the_nightly_libllvm() {
        assert!(is_rust_libllvm("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert!(!is_rust_libllvm("libLLVM-22-rust-1.97.0-nightly.so"));
        assert!(!is_rust_libllvm("librustc_driver-b5a965480ee51f9a.so"));
    }

    #[test]
    fn sees_bpffs() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        assert!(bpffs_mounted(mounts));
        assert!(!bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nbpf /run/x bpf rw 0 0\n"
        ));
    }

    #[test]
    fn reads_the_recorded_llvm_feature() {
        let record = r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":
            {"version_req":null,"bins":["bpf-linker"],"features":["llvm-22"],"all_features":false,
             "no_default_features":true}}}"#;
        assert_eq!(recorded_llvm_major(record), Some(22));
        assert_eq!(recorded_llvm_major(r#"{"installs":{}}"#), None);
        assert_eq!(recorded_llvm_major("not json"), None);
    }
}
