//! `lab down`: remove the lab's pins and namespaces. Idempotent: whatever of
//! the lab is left (even a half-built one) is removed, and nothing left is fine.

use std::{
    collections::HashSet,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

use super::topology::{Node, describe_nodes, ns_name, validate_lab_name};
use crate::{datapath::instance::RUN_ROOT, netns::NetNs, privileges::require_root};

pub(super) async fn down(lab: &str) -> Result<()> {
    require_root("bpfmasq lab down")?;
    validate_lab_name(lab)?;
    let nodes = super::existing_nodes(lab)?;
    let removed_pins = remove_pins(&super::pin_dir(lab))?;
    // A daemon killed with SIGKILL leaves its (unlocked) lock file behind.
    let _ = remove_pins(&Path::new(RUN_ROOT).join(ns_name(lab, Node::Host)));
    if nodes.is_empty() {
        match removed_pins {
            Some(dir) => eprintln!(
                "lab `{lab}` has no namespaces left; removed its pins in {}",
                dir.display()
            ),
            None => eprintln!("lab `{lab}` does not exist; nothing to remove"),
        }
        return Ok(());
    }
    let namespaces: Vec<String> = nodes.iter().map(|node| ns_name(lab, node)).collect();
    warn_about_processes_inside(lab, &namespaces);
    let mut failures = Vec::new();
    for name in &namespaces {
        if let Err(e) = NetNs::delete(name) {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        return Err(anyhow!("removing lab `{lab}`: {}", failures.join("; ")));
    }
    eprintln!("lab `{lab}` removed ({})", describe_nodes(&nodes));
    Ok(())
}

/// Removes the pin folder `dir` with everything in it; returns it if it
/// existed. bpffs may not be mounted at all: then there is nothing to remove.
fn remove_pins(dir: &Path) -> Result<Option<PathBuf>> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
        // Unlinking a pin drops a reference; programs and maps go away with the last one.
        Ok(_) => fs::remove_dir_all(dir)
            .with_context(|| format!("removing the datapath pins in {}", dir.display()))
            .map(|()| Some(dir.to_owned())),
    }
}

/// A process still inside a namespace keeps it (and its interfaces) alive
/// after its name is gone; say so instead of leaving a silent leftover.
fn warn_about_processes_inside(lab: &str, namespaces: &[String]) {
    let lab_namespaces: HashSet<(u64, u64)> = namespaces
        .iter()
        .filter_map(|name| nsfs_id(&NetNs::path_of(name)))
        .collect();
    let Ok(proc_entries) = fs::read_dir("/proc") else {
        return;
    };
    let mut pids: Vec<u32> = proc_entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            nsfs_id(&Path::new("/proc").join(pid.to_string()).join("ns/net"))
                .is_some_and(|id| lab_namespaces.contains(&id))
        })
        .collect();
    if pids.is_empty() {
        return;
    }
    pids.sort_unstable();
    let shown: Vec<String> = pids.iter().take(10).map(u32::to_string).collect();
    let more = if pids.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    eprintln!(
        "warning: {} process(es) still run inside lab `{lab}` (pid {}{more}); \
         their namespaces stay alive, unnamed, until they exit",
        pids.len(),
        shown.join(", ")
    );
}

/// (device, inode) of a namespace file: equal for the same namespace.
fn nsfs_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}
