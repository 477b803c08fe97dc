//! `bpfmasq-cni`, the CNI plugin a runtime (podman, CRI-O, containerd)
//! chains after `bridge`: ADD attaches the datapath to the bridge and
//! uplink once (later ADDs find it pinned) and records the container in the
//! pinned `PODS` map; DEL removes the container's flows and record; CHECK,
//! STATUS, GC and VERSION as CNI 1.1 says. `spec` reads what the runtime
//! hands over, `verbs` does the work, `error` is the spec's error object.
//! The binary (`src/bin/bpfmasq-cni/`) only reads stdin and prints.

pub mod error;
pub mod spec;
mod verbs;

use std::{fs::File, path::Path};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};

pub use self::{
    error::{CniError, Code},
    spec::{CURRENT_VERSION, Command},
};
use crate::datapath::instance::RUN_ROOT;

/// What a verb printed on success (`None`: nothing, as DEL, GC, STATUS).
pub type Output = Option<serde_json::Value>;

/// Runs one plugin invocation: `command` from `CNI_COMMAND`, `stdin` the
/// configuration, `var` reads the other `CNI_*` variables. Needs a tokio
/// runtime (netlink).
pub async fn invoke(
    command: Command,
    stdin: &[u8],
    var: impl Fn(&str) -> Option<String>,
) -> Result<Output, CniError> {
    if command == Command::Version {
        return Ok(Some(spec::version_info()));
    }
    let conf = spec::NetConf::parse(stdin)?;
    match command {
        Command::Add => verbs::add(&conf, &spec::attachment(&var)?).await.map(Some),
        Command::Del => verbs::del(&conf, &spec::attachment(&var)?).map(|()| None),
        Command::Check => verbs::check(&conf, &spec::attachment(&var)?)
            .await
            .map(|()| None),
        Command::Status => verbs::status(&conf).await.map(|()| None),
        Command::Gc => verbs::gc(&conf).await.map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The `cniVersion` to answer a configuration with: its own when it names
/// a supported one, else bpfmasq's current.
pub fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_owned())
}

/// Serialises the plugin's changes to pinned state: concurrent ADDs must
/// attach once, and a DEL must not remove a record an ADD is writing. An
/// exclusive flock(2) on bpfmasq's runtime folder itself (no lock file is
/// left behind); the kernel drops it when the plugin exits, however it exits.
pub fn lock() -> Result<Flock<File>> {
    std::fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
    let dir = File::open(Path::new(RUN_ROOT)).with_context(|| format!("opening {RUN_ROOT}"))?;
    Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {RUN_ROOT}: {e}"))
}
