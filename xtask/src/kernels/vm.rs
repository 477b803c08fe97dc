//! Booting a kernel with virtme-ng: the guest shares this machine's root file
//! system read-only (with overlays), so the built binaries run unchanged inside,
//! and writes what it finds into one folder shared read-write.
//!
//! KVM is used when it works. Where `/dev/kvm` exists but guests fail under it
//! (some nested set-ups: "failed to set MSR", or a hang at boot), the first
//! boot finds out with a trivial guest and a short timeout, and the rest of the
//! run uses TCG (emulation: slower, but the same kernel and the same verdicts).
//!
//! vng and its qemu run in a process group of their own, killed as one on a
//! timeout, on Ctrl-C (or SIGTERM/SIGHUP) and when the guard is dropped, so no
//! qemu outlives the run.

use std::{
    fs::{self, File, OpenOptions},
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use super::{debian::Kernel, guest::SharedDir};
use crate::{cmd::Cmd, ui};

/// The guest's size: the suite runs one test at a time; two vCPUs let the
/// datapath and the test's peers run side by side.
const CPUS: &str = "2";
const MEMORY: &str = "2G";

/// How long a trivial guest may take under KVM before KVM counts as broken
/// (a working KVM boots in a few seconds; a broken one fails or hangs).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the wait loop looks at the guest (and reports progress).
const POLL: Duration = Duration::from_millis(250);

/// Set by Ctrl-C, SIGTERM or SIGHUP: the running guest is killed and the run ends.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (and SIGTERM/SIGHUP) stop the matrix cleanly: the running
/// guest is killed and the shared folder removed, instead of xtask dying
/// with a qemu left behind.
pub fn stop_on_interrupt() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        ui::warn("interrupted: stopping the guest");
    })
    .context("installing the Ctrl-C handler")
}

/// Fails once the run was interrupted.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// How the guest ended; what it did is in the shared folder.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// vng returned (the guest powered off).
    Finished,
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

/// virtme-ng from its venv, and which accelerator this machine can use
/// (decided at the first boot, kept for the run).
pub struct Virtme {
    bin_dir: PathBuf,
    accelerator: Option<Accelerator>,
}

impl Virtme {
    /// `bin_dir` holds `vng` and `virtme-run` (vng runs the latter by name).
    pub fn new(bin_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            accelerator: None,
        }
    }

    /// Boots `kernel`, runs `bash SCRIPT` in it as root with `shared` writable,
    /// and waits until it powers off or `timeout` passes; the console goes to
    /// `console`. `tick` is called every poll (to report progress).
    pub fn boot(
        &mut self,
        kernel: &Kernel,
        shared: &SharedDir,
        script: &Path,
        console: &Path,
        timeout: Duration,
        tick: &mut dyn FnMut(),
    ) -> Result<Exit> {
        let accelerator = self.accelerator(kernel)?;
        let mut guest = self.start(kernel, shared.path(), script, console, accelerator)?;
        guest.wait(timeout, tick)
    }

    /// Decides, at the first call, whether guests can use KVM here.
    pub fn accelerator(&mut self, kernel: &Kernel) -> Result<Accelerator> {
        if let Some(accelerator) = self.accelerator {
            return Ok(accelerator);
        }
        let accelerator = self.probe_kvm(kernel)?;
        self.accelerator = Some(accelerator);
        Ok(accelerator)
    }

    /// Boots a guest that only leaves a file behind, under KVM.
    fn probe_kvm(&self, kernel: &Kernel) -> Result<Accelerator> {
        ui::step("can guests use KVM here?");
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            ui::note(&format!("no: /dev/kvm: {e}; using TCG (emulation, slower)"));
            return Ok(Accelerator::Tcg);
        }
        let shared = SharedDir::create()?;
        let alive = shared.path().join("alive");
        let script = shared.path().join("probe.sh");
        fs::write(&script, format!("touch '{}'\n", alive.display()))?;
        let console = shared.path().join("console.log");
        let mut guest = self.start(kernel, shared.path(), &script, &console, Accelerator::Kvm)?;
        let exit = guest.wait(KVM_PROBE_TIMEOUT, &mut || {})?;
        if alive.is_file() {
            ui::ok("yes: using KVM");
            return Ok(Accelerator::Kvm);
        }
        let why = match exit {
            Exit::TimedOut => format!("the guest did not finish within {KVM_PROBE_TIMEOUT:?}"),
            Exit::Finished => {
                qemu_complaint(&console).unwrap_or_else(|| "the guest failed".to_owned())
            }
        };
        ui::note(&format!(
            "no: {why}\nusing TCG (emulation: slower, the same kernel and verdicts)"
        ));
        Ok(Accelerator::Tcg)
    }

    fn start(
        &self,
        kernel: &Kernel,
        shared: &Path,
        script: &Path,
        console: &Path,
        accelerator: Accelerator,
    ) -> Result<Guest> {
        let log =
            File::create(console).with_context(|| format!("creating {}", console.display()))?;
        let child = Cmd::new(self.bin_dir.join("vng"))
            .prepend_path(&self.bin_dir)
            .arg("--run")
            .arg(kernel.image())
            .args(["--user", "root", "--cpus", CPUS, "--memory", MEMORY])
            // The console (kernel messages, the script's exit code) goes to
            // the log; without --verbose it is lost.
            .arg("--verbose")
            .args((accelerator == Accelerator::Tcg).then_some("--disable-kvm"))
            .arg("--rwdir")
            .arg(shared)
            .arg("--")
            .arg(format!("bash {}", script.display()))
            .spawn_group(&log)?;
        // The group's id is vng's pid (process_group(0)); qemu is in it.
        let group = Pid::from_raw(i32::try_from(child.id()).context("vng's pid")?);
        Ok(Guest {
            child: Some(child),
            group,
        })
    }
}

/// A running vng and everything it started; the process group is killed when
/// it ends, times out or is dropped, so nothing of it is left behind.
struct Guest {
    child: Option<Child>,
    group: Pid,
}

impl Guest {
    fn wait(&mut self, timeout: Duration, tick: &mut dyn FnMut()) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .context("the guest was already waited for")?;
            if child.try_wait().context("waiting for vng")?.is_some() {
                // vng exits 255 whatever the script did (its exit code only
                // reaches the console): the shared folder tells.
                self.kill();
                tick();
                return Ok(Exit::Finished);
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                self.kill();
                return Ok(Exit::TimedOut);
            }
            tick();
            thread::sleep(POLL);
        }
    }

    /// Kills whatever of the group is left; once.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Already gone is fine.
        let _ = killpg(self.group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What qemu said when it failed (`qemu-system-x86_64: error: failed to set
/// MSR ...`), else the console's last line.
fn qemu_complaint(console: &Path) -> Option<String> {
    let text = fs::read_to_string(console).ok()?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first_qemu = lines.clone().find(|l| l.starts_with("qemu-system"));
    first_qemu.or_else(|| lines.next_back()).map(str::to_owned)
}
