//! Named network namespaces (the `ip netns` convention: a bind mount of the
//! namespace file at `/run/netns/NAME`), and running code inside one.
//!
//! `setns` changes only the calling thread, so every "inside" operation runs
//! on a short-lived thread of its own; the caller's namespace never changes.
//! Sockets keep the namespace they were created in, which is how netlink
//! handles for a namespace are made (see [`NetNs::run`]).

use std::{
    fs::{self, File},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where named namespaces live (same folder as iproute2 uses).
pub const NETNS_DIR: &str = "/run/netns";

/// Makes [`NETNS_DIR`] a shared mount point of its own, as `ip netns add`
/// does before its first namespace. A namespace mounted in it then shows
/// in every mount namespace that shares the folder; and when another tool
/// (iproute2, podman, a CNI plugin) later bind-mounts the folder over
/// itself, our mounts are shared with the new mount instead of hidden under
/// it, where they could no longer be unmounted ("Device or resource busy").
fn make_dir_shared() -> Result<()> {
    let make_shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet; make it one (a bind mount of itself).
        Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => bail!("making {NETNS_DIR} a shared mount: {e}"),
    }
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {NETNS_DIR} on itself"))?;
    make_shared().with_context(|| format!("making {NETNS_DIR} a shared mount"))
}

/// The name under [`NETNS_DIR`] of the namespace whose nsfs file is
/// (`dev`, `ino`), like `ip netns identify`.
pub fn name_of(dev: u64, ino: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    fs::read_dir(NETNS_DIR)
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| fs::metadata(entry.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
        .and_then(|entry| entry.file_name().into_string().ok())
}

/// A handle to a named network namespace (an open fd on its bind mount).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// Whether a namespace called `name` exists.
    pub fn exists(name: &str) -> bool {
        Self::path_of(name).exists()
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<Self> {
        validate_name(name)?;
        let path = Self::path_of(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("network namespace `{name}` does not exist"),
            _ => anyhow!(
                "cannot open network namespace `{name}` ({}): {e}",
                path.display()
            ),
        })?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// Creates a new, empty named namespace. Fails if the name is taken.
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
        make_dir_shared()?;
        let path = Self::path_of(name);
        // create_new: an existing namespace is an error, never silently reused.
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| {
                format!("network namespace `{name}` already exists or cannot be created")
            })?;
        let target = path.clone();
        let bound = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {own} on {}", target.display()))
        })
        .join()
        .map_err(|_| anyhow!("namespace creation thread panicked"))?;
        if let Err(e) = bound {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Self::open(name)
    }

    /// Removes the named namespace `name`. Interfaces inside it go away once
    /// no process holds it any more. Missing namespaces are not an error.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Self::path_of(name);
        if !path.exists() {
            return Ok(());
        }
        // EINVAL: not a mount point (a half-created namespace); still unlink.
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(anyhow!("unmounting {}: {e}", path.display())),
        }
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// Names of all named namespaces.
    pub fn list() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(NETNS_DIR),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the *calling thread* into this namespace. Only for threads
    /// that are about to exec or that are dedicated to this namespace (the
    /// bpfmasq process itself with `--netns`, before it starts threads).
    pub fn enter(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace `{}`", self.name))
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<T> {
                    self.enter()?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("thread in network namespace `{}` panicked", self.name))?
        })
    }

    /// The raw fd, for netlink's IFLA_NET_NS_FD (moving links into it).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Namespace names become file names and interface-name prefixes: keep them
/// to a safe alphabet.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("invalid namespace name `{name}`: use 1-64 characters of [A-Za-z0-9._-]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("lab-host").is_ok());
        assert!(validate_name("a_b.c-1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
