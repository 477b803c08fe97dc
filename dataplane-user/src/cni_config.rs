//! `bpfmasq cni-config install|remove`: puts the `bpfmasq-cni` plugin on a
//! node, for the DaemonSet's init container (the image is `FROM scratch`:
//! no shell, no jq, so this is a verb of the binary itself).
//!
//! `install` copies the plugin binary into the CNI bin folder and edits the
//! node's network configuration (the first `*.conflist` in the CNI config
//! folder, in file-name order, as container runtimes choose it, that has a
//! `bridge` plugin): `ipMasq: false` on the bridge (bpfmasq masquerades
//! instead of its iptables chains) and `{"type": "bpfmasq-cni"}` right after
//! it. Running it again changes nothing. `remove` takes the entry out and
//! gives the bridge `ipMasq: true` back, so the runtime's iptables
//! masquerade returns for new pods. Files are replaced atomically (written
//! beside, then renamed), so a runtime never reads half a file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// The plugin's `type`, which is also its binary's name in the CNI bin folder.
pub const PLUGIN_TYPE: &str = "bpfmasq-cni";

/// Where things are on the node (usually mounted from the host into the init container).
#[derive(Clone, Debug)]
pub struct CniPaths {
    /// The folder of `*.conflist` files, normally `/etc/cni/net.d`.
    pub conf_dir: PathBuf,
    /// The folder of plugin binaries, normally `/opt/cni/bin`.
    pub bin_dir: PathBuf,
}

/// What changed, for the one line each verb prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Changed,
    AlreadyDone,
}

/// Copies `plugin` into the bin folder and adds it to the node's bridge conflist.
pub fn install(paths: &CniPaths, plugin: &Path) -> Result<()> {
    let target = paths.bin_dir.join(PLUGIN_TYPE);
    copy_atomically(plugin, &target)?;
    println!("installed {}", target.display());
    let conflist = bridge_conflist(&paths.conf_dir)?;
    match edit(&conflist, add_plugin)? {
        Change::Changed => println!(
            "{}: bridge ipMasq false, {PLUGIN_TYPE} added after it",
            conflist.display()
        ),
        Change::AlreadyDone => println!("{}: already set up", conflist.display()),
    }
    Ok(())
}

/// Takes the plugin out of the node's bridge conflist (bridge ipMasq true again) and its binary away.
pub fn remove(paths: &CniPaths) -> Result<()> {
    let conflist = bridge_conflist(&paths.conf_dir)?;
    match edit(&conflist, remove_plugin)? {
        Change::Changed => println!(
            "{}: {PLUGIN_TYPE} removed, bridge ipMasq true",
            conflist.display()
        ),
        Change::AlreadyDone => println!("{}: {PLUGIN_TYPE} not in it", conflist.display()),
    }
    let target = paths.bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&target) {
        Ok(()) => println!("removed {}", target.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", target.display())),
    }
    Ok(())
}

/// The first `*.conflist` in `conf_dir` (by name) with a `bridge` plugin.
fn bridge_conflist(conf_dir: &Path) -> Result<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .with_context(|| {
            format!(
                "listing the CNI configuration folder {}",
                conf_dir.display()
            )
        })?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    for file in &files {
        let list = read(file)?;
        if bridge_index(&list).is_some() {
            return Ok(file.clone());
        }
    }
    bail!(
        "no *.conflist with a `bridge` plugin in {} ({} conflist files): bpfmasq-cni works with the bridge plugin only",
        conf_dir.display(),
        files.len()
    )
}

fn read(file: &Path) -> Result<Value> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// Applies `change` to the conflist in `file`, rewriting it only when something changed.
fn edit(file: &Path, change: fn(&mut Value) -> Result<Change>) -> Result<Change> {
    let mut list = read(file)?;
    let outcome = change(&mut list).with_context(|| format!("editing {}", file.display()))?;
    if outcome == Change::Changed {
        let text = serde_json::to_string_pretty(&list)? + "\n";
        write_atomically(file, text.as_bytes())?;
    }
    Ok(outcome)
}

fn plugins(list: &mut Value) -> Result<&mut Vec<Value>> {
    list.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .context("no `plugins` array")
}

fn bridge_index(list: &Value) -> Option<usize> {
    list["plugins"]
        .as_array()?
        .iter()
        .position(|p| p["type"] == "bridge")
}

/// `ipMasq: false` on the bridge and our plugin right after it.
pub fn add_plugin(list: &mut Value) -> Result<Change> {
    let bridge = bridge_index(list).context("no `bridge` plugin")?;
    let plugins = plugins(list)?;
    let mut change = Change::AlreadyDone;
    if plugins[bridge]["ipMasq"] != false {
        plugins[bridge]["ipMasq"] = Value::Bool(false);
        change = Change::Changed;
    }
    let ours = |p: &Value| p["type"] == PLUGIN_TYPE;
    if plugins.get(bridge + 1).is_some_and(ours) {
        return Ok(change);
    }
    // Anywhere else (a hand edit): moved to its place.
    plugins.retain(|p| !ours(p));
    plugins.insert(bridge + 1, json!({ "type": PLUGIN_TYPE }));
    Ok(Change::Changed)
}

/// Our plugin out, `ipMasq: true` on the bridge.
pub fn remove_plugin(list: &mut Value) -> Result<Change> {
    let plugins = plugins(list)?;
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    if plugins.len() == before {
        return Ok(Change::AlreadyDone);
    }
    if let Some(bridge) = plugins.iter_mut().find(|p| p["type"] == "bridge") {
        bridge["ipMasq"] = Value::Bool(true);
    }
    Ok(Change::Changed)
}

fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_atomically(to, &bytes)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", to.display()))
}

/// Writes `bytes` beside `file` (a name no runtime reads as configuration) and renames it over `file`.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<()> {
    let name = file.file_name().context("a file name")?.to_string_lossy();
    let temporary = file.with_file_name(format!(".{name}.bpfmasq-tmp"));
    fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, file).with_context(|| format!("replacing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman_like() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "podman",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.85.0.0/16"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "firewall"}
            ]
        })
    }

    fn types(list: &Value) -> Vec<&str> {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn install_puts_the_plugin_after_bridge_and_turns_ip_masq_off() {
        let mut list = podman_like();
        assert_eq!(add_plugin(&mut list).unwrap(), Change::Changed);
        assert_eq!(types(&list), ["bridge", PLUGIN_TYPE, "portmap", "firewall"]);
        assert_eq!(list["plugins"][0]["ipMasq"], false);
        assert_eq!(list["plugins"][0]["bridge"], "cni0", "the rest is kept");
    }

    #[test]
    fn install_twice_changes_nothing() {
        let mut list = podman_like();
        add_plugin(&mut list).unwrap();
        let once = list.clone();
        assert_eq!(add_plugin(&mut list).unwrap(), Change::AlreadyDone);
        assert_eq!(list, once);
    }

    #[test]
    fn install_moves_a_misplaced_entry_behind_bridge() {
        let mut list = podman_like();
        list["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": PLUGIN_TYPE}));
        add_plugin(&mut list).unwrap();
        assert_eq!(types(&list), ["bridge", PLUGIN_TYPE, "portmap", "firewall"]);
    }

    #[test]
    fn remove_restores_the_bridges_masquerade() {
        let mut list = podman_like();
        add_plugin(&mut list).unwrap();
        assert_eq!(remove_plugin(&mut list).unwrap(), Change::Changed);
        assert_eq!(list, podman_like());
        assert_eq!(remove_plugin(&mut list).unwrap(), Change::AlreadyDone);
    }

    #[test]
    fn files_are_edited_in_place_and_the_plugin_copied() {
        let dir = std::env::temp_dir().join(format!("bpfmasq-cni-config-{}", std::process::id()));
        let paths = CniPaths {
            conf_dir: dir.join("net.d"),
            bin_dir: dir.join("bin"),
        };
        fs::create_dir_all(&paths.conf_dir).unwrap();
        fs::create_dir_all(&paths.bin_dir).unwrap();
        let other = json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "macvlan"}]});
        fs::write(paths.conf_dir.join("05-other.conflist"), other.to_string()).unwrap();
        let bridge = paths.conf_dir.join("10-bridge.conflist");
        fs::write(&bridge, podman_like().to_string()).unwrap();
        let plugin = dir.join("bpfmasq-cni");
        fs::write(&plugin, b"#!binary").unwrap();

        install(&paths, &plugin).unwrap();
        install(&paths, &plugin).unwrap();
        let installed = read(&bridge).unwrap();
        assert_eq!(
            types(&installed),
            ["bridge", PLUGIN_TYPE, "portmap", "firewall"]
        );
        assert_eq!(
            fs::read(paths.bin_dir.join(PLUGIN_TYPE)).unwrap(),
            b"#!binary"
        );
        assert_eq!(
            read(&paths.conf_dir.join("05-other.conflist")).unwrap(),
            other
        );
        remove(&paths).unwrap();
        let restored = read(&bridge).unwrap();
        let leftovers: Vec<_> = fs::read_dir(&paths.conf_dir).unwrap().collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(restored, podman_like());
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_node_without_a_bridge_conflist_is_refused_naming_the_folder() {
        let err = bridge_conflist(Path::new("/nonexistent/net.d")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/net.d"), "{err:#}");
    }
}
