//! Which traces listen: each running `bpfmasq trace` holds an exclusive
//! flock(2) on `/run/bpfmasq/<netns>/<uplink>.trace/slot-<N>`, N being the
//! ring buffer it reads, and the datapath's `TRACE_ACTIVE` word has bit N
//! set. The kernel releases a flock when its holder dies, however it dies,
//! so the word can always be recomputed from the locks ([`reconcile`]):
//! by every trace as it starts and ends, and by `bpfmasq run` after each
//! sweep, which clears the bit of a trace that was SIGKILLed. All of it
//! happens under a flock on the folder itself, so two processes never
//! compute the word from different views.

use std::{
    fs::{self, File, OpenOptions},
    io::ErrorKind,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData};
use dataplane_common::{maps, trace::SLOTS};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use crate::datapath::instance::{Instance, RUN_ROOT};

/// How often to retry when the folder is removed under us by an ending trace.
const ATTEMPTS: usize = 8;

/// The folder of an instance's slot locks.
fn slots_dir(instance: &Instance) -> PathBuf {
    Path::new(RUN_ROOT)
        .join(&instance.netns)
        .join(format!("{}.trace", instance.uplink))
}

fn slot_path(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("slot-{slot}"))
}

/// The slots folder, locked; `None` when it does not exist and `create` is false.
struct DirLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl DirLock {
    fn acquire(instance: &Instance, create: bool) -> Result<Option<Self>> {
        let path = slots_dir(instance);
        for _ in 0..ATTEMPTS {
            if create {
                fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            let dir = match File::open(&path) {
                Ok(dir) => dir,
                Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
                // Removed by an ending trace in between: again.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            let lock = Flock::lock(dir, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))?;
            // A folder removed while we waited for it excludes nobody.
            if is_at(&lock, &path) {
                return Ok(Some(Self { path, _lock: lock }));
            }
        }
        bail!(
            "could not lock {}: it keeps being replaced by other bpfmasq processes",
            path.display()
        )
    }

    /// The slots whose lock is held, as a bit set; removes the files of
    /// slots nobody holds (a trace that died without cleaning up).
    fn live_slots(&self) -> u32 {
        let mut live = 0;
        for slot in 0..SLOTS {
            let path = slot_path(&self.path, slot);
            let Ok(file) = File::open(&path) else {
                continue;
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(_stale) => {
                    let _ = fs::remove_file(&path);
                }
                Err((_, Errno::EWOULDBLOCK)) => live |= 1 << slot,
                Err(_) => {}
            }
        }
        live
    }
}

/// Whether the open `file` is the one at `path` now.
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// `TRACE_ACTIVE` of the instance; `None` when the datapath predates traces.
fn active_map(instance: &Instance) -> Result<Option<Array<MapData, u32>>> {
    let path = instance.pin(maps::TRACE_ACTIVE);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map =
        Map::from_map_data(data).map_err(|e| anyhow!("pinned map {}: {e}", path.display()))?;
    Ok(Some(map.try_into()?))
}

/// Writes `live` into `TRACE_ACTIVE` if it differs; returns it.
fn publish(instance: &Instance, live: u32) -> Result<u32> {
    let Some(mut active) = active_map(instance)? else {
        return Ok(live);
    };
    if active.get(&0, 0).ok() != Some(live) {
        active
            .set(0, live, 0)
            .context("writing which traces listen (TRACE_ACTIVE)")?;
    }
    Ok(live)
}

/// How many traces the datapath reports to now (`TRACE_ACTIVE`, as last
/// published; 0 for a datapath that predates traces).
pub fn listening(instance: &Instance) -> Result<u32> {
    Ok(match active_map(instance)? {
        Some(active) => active
            .get(&0, 0)
            .context("reading which traces listen (TRACE_ACTIVE)")?
            .count_ones(),
        None => 0,
    })
}

/// Recomputes `TRACE_ACTIVE` from the slot locks; returns how many traces listen.
pub fn reconcile(instance: &Instance) -> Result<u32> {
    let live = match DirLock::acquire(instance, false)? {
        Some(dir) => dir.live_slots(),
        None => 0,
    };
    publish(instance, live).map(u32::count_ones)
}

/// A slot held by this trace: its ring buffer is this trace's alone.
/// Dropping it releases the slot and clears its bit.
#[derive(Debug)]
pub struct Slot {
    pub index: u32,
    instance: Instance,
    lock: Option<Flock<File>>,
}

impl Slot {
    /// Claims a free slot; its ring buffer gets nothing until [`Slot::listen`].
    pub fn claim(instance: &Instance) -> Result<Self> {
        if active_map(instance)?.is_none() {
            bail!(
                "the datapath in {} predates `bpfmasq trace` (no {} pin): a `bpfmasq run` adopting it, \
                 or detach and attach, brings it",
                instance.dir().display(),
                maps::TRACE_ACTIVE
            );
        }
        let dir = DirLock::acquire(instance, true)?.expect("created");
        let live = dir.live_slots();
        let Some(index) = (0..SLOTS).find(|slot| live & (1 << slot) == 0) else {
            bail!(
                "{SLOTS} traces already run on {} in network namespace `{}`: stop one first",
                instance.uplink,
                instance.netns
            );
        };
        let path = slot_path(&dir.path, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))?;
        Ok(Self {
            index,
            instance: instance.clone(),
            lock: Some(lock),
        })
    }

    /// Sets this slot's bit: the datapath starts reporting to its ring.
    pub fn listen(&self) -> Result<()> {
        let dir = DirLock::acquire(&self.instance, true)?.expect("created");
        publish(&self.instance, dir.live_slots()).map(drop)
    }

    fn release(&mut self) -> Result<()> {
        let dir = DirLock::acquire(&self.instance, true)?.expect("created");
        let _ = fs::remove_file(slot_path(&dir.path, self.index));
        drop(self.lock.take());
        publish(&self.instance, dir.live_slots())?;
        // The last trace out removes the folder (fails while others run),
        // and the namespace's (fails while a daemon or another uplink's
        // trace uses it).
        let _ = fs::remove_dir(&dir.path);
        if let Some(parent) = dir.path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!(
                "bpfmasq trace: warning: releasing trace slot {}: {e:#}",
                self.index
            );
        }
    }
}
