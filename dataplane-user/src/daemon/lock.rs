//! One `bpfmasq run` per datapath instance: an exclusive flock(2) on
//! `/run/bpfmasq/<netns>/<uplink>.lock`. The kernel releases a flock when
//! its holder dies, however it dies, so a SIGKILLed daemon never blocks its
//! successor; the file only carries the holder's pid for the error message.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use crate::datapath::instance::{Instance, RUN_ROOT as LOCK_ROOT};

/// How often to retry when the lock file is removed under us by an exiting
/// holder; each retry means another process made progress, so a few suffice.
const ATTEMPTS: usize = 8;

/// Held for the daemon's lifetime; dropping it removes the file and unlocks.
#[derive(Debug)]
pub struct InstanceLock {
    path: PathBuf,
    _file: Flock<File>,
}

pub fn lock_path(instance: &Instance) -> PathBuf {
    Path::new(LOCK_ROOT)
        .join(&instance.netns)
        .join(format!("{}.lock", instance.uplink))
}

/// Takes the instance's lock, or fails at once naming the process holding it.
pub fn acquire(instance: &Instance) -> Result<InstanceLock> {
    let path = lock_path(instance);
    let dir = path.parent().expect("a lock path has a parent");
    for _ in 0..ATTEMPTS {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => file,
            // The folder was removed by an exiting holder in between: again.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .map(|pid| pid.trim().to_owned())
                    .filter(|pid| !pid.is_empty())
                    .map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
                bail!(
                    "bpfmasq run is already running for {} in network namespace `{}` ({holder}); lock {}",
                    instance.uplink,
                    instance.netns,
                    path.display()
                );
            }
            Err((_, e)) => return Err(anyhow!("locking {}: {e}", path.display())),
        };
        // An exiting holder unlinks the file before unlocking it: a lock on
        // a file no longer at `path` excludes nobody, so take the new one.
        if !is_at(&file, &path) {
            continue;
        }
        file.set_len(0)
            .and_then(|()| writeln!(*file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(InstanceLock { path, _file: file });
    }
    bail!(
        "could not lock {}: it keeps being replaced by other bpfmasq processes",
        path.display()
    )
}

/// The pid of the `bpfmasq run` holding `instance`'s lock, if one runs.
/// Read from /proc/locks rather than by trying the lock: a probe that held
/// it even briefly could make a starting daemon believe it is taken.
pub fn holder(instance: &Instance) -> Option<u32> {
    let path = lock_path(instance);
    let meta = fs::metadata(&path).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks
        .lines()
        .find_map(|line| flock_holder(line, meta.ino()))
}

/// The pid in a /proc/locks line (`1: FLOCK ADVISORY WRITE 42 00:19:1234 0 EOF`)
/// if it is a flock on inode `ino`. The device is not compared: /proc/locks
/// prints it in a form of its own, and the inode of a file just opened on
/// /run suffices here.
fn flock_holder(line: &str, ino: u64) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, "FLOCK", _, _, pid, file, ..] = fields.as_slice() else {
        return None;
    };
    let locked_ino: u64 = file.rsplit(':').next()?.parse().ok()?;
    (locked_ino == ino).then(|| pid.parse().ok()).flatten()
}

/// Whether the open `file` is the one at `path` now.
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Still locked here: nobody can be holding the file we remove.
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            // Fails while other instances of the namespace run: fine.
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::flock_holder;

    #[test]
    fn reads_the_pid_of_a_flock_on_the_inode() {
        let line = "3: FLOCK  ADVISORY  WRITE 4242 00:1a:9876 0 EOF";
        assert_eq!(flock_holder(line, 9876), Some(4242));
        assert_eq!(flock_holder(line, 9877), None);
        let posix = "4: POSIX  ADVISORY  WRITE 17 00:1a:9876 0 EOF";
        assert_eq!(flock_holder(posix, 9876), None);
    }
}
