//! Debian's own kernels, fetched and unpacked without installing them.
//!
//! Each Debian release gets an apt state of its own under the cache folder (a
//! sources list naming the release and its -security suite, lists, cache), so
//! nothing touches the machine's apt configuration, lists or locks, and a
//! search in one release never finds another's backported kernels. The newest
//! generic image of a series is resolved at run time (ABI numbers change with
//! every point release), downloaded, unpacked with `dpkg-deb -x` and its
//! modules indexed with `depmod -b`. An unpacked kernel is reused as long as it
//! is the newest; a newer one replaces it.

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use super::Series;
use crate::{cmd::Cmd, ui};

/// Where Debian's packages come from; its -security suites live beside.
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// Holds the keys of every release the matrix uses (bullseye to trixie).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Written into an unpacked kernel's folder once it is complete.
const COMPLETE_MARKER: &str = ".bpfmasq-complete";

/// A kernel ready to boot: its image and modules below `root`.
#[derive(Debug)]
pub struct Kernel {
    /// What `uname -r` will say, e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// The unpacked package: `boot/vmlinuz-VERSION`, `lib/modules/VERSION`.
    pub root: PathBuf,
}

impl Kernel {
    pub fn image(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.version))
    }
}

/// One release's archive with a private apt state, its lists refreshed at
/// most once per run.
pub struct Archive {
    suite: &'static str,
    /// `<cache>/apt/<suite>`: sources.list, lists/, cache/.
    dir: PathBuf,
    updated: bool,
}

impl Archive {
    pub fn new(suite: &'static str, cache: &Path) -> Self {
        Self {
            suite,
            dir: cache.join("apt").join(suite),
            updated: false,
        }
    }

    /// The newest generic kernel of `series`, unpacked below `kernels_dir`
    /// (reused when already there).
    pub fn kernel(&mut self, series: &Series, kernels_dir: &Path) -> Result<Kernel> {
        self.update()?;
        let package = self.newest_image(series)?;
        let version = kernel_version(&package);
        let kernel = Kernel {
            root: kernels_dir.join(&version),
            version,
        };
        if kernel.root.join(COMPLETE_MARKER).is_file() {
            ui::ok(&format!(
                "{package}: unpacked in {} already",
                kernel.root.display()
            ));
        } else {
            self.unpack(&package, &kernel)?;
            remove_older(series, &kernel, kernels_dir);
        }
        Ok(kernel)
    }

    /// `apt-get`/`apt-cache` with this archive's private configuration
    /// (read after the machine's own, so a proxy set there still applies).
    fn apt(&self, program: &str) -> Cmd {
        Cmd::new(program).arg("-c").arg(self.dir.join("apt.conf"))
    }

    fn update(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        ui::step(&format!("Debian {} package lists", self.suite));
        for dir in ["lists/partial", "cache/archives/partial"] {
            let dir = self.dir.join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for (name, text) in [
            ("sources.list", sources_list(self.suite)),
            ("apt.conf", apt_conf(&self.dir)),
        ] {
            let path = self.dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        self.apt("apt-get")
            .args(["-q", "update"])
            .run()
            .with_context(|| format!("cannot fetch Debian {}'s package lists", self.suite))?;
        self.updated = true;
        Ok(())
    }

    fn newest_image(&self, series: &Series) -> Result<String> {
        let pattern = format!("^linux-image-{}\\.", series.name.replace('.', "\\."));
        let found = self
            .apt("apt-cache")
            .args(["search", "--names-only", &pattern])
            .read()?;
        newest_generic_image(&found, series.name).with_context(|| {
            format!(
                "Debian {} has no linux-image-{}.*-amd64-unsigned package",
                self.suite, series.name
            )
        })
    }

    /// Downloads `package` and unpacks it into `kernel.root`, then indexes its
    /// modules; the marker goes in last, so an interrupted unpack is redone.
    fn unpack(&self, package: &str, kernel: &Kernel) -> Result<()> {
        ui::step(&format!("download and unpack {package}"));
        let downloads = self.dir.join("downloads");
        remove_dir_if_present(&downloads)?;
        fs::create_dir_all(&downloads)
            .with_context(|| format!("creating {}", downloads.display()))?;
        self.apt("apt-get")
            .args(["-q", "download", package])
            .current_dir(&downloads)
            .run()?;
        let deb = only_file(&downloads)?;
        let root = &kernel.root;
        remove_dir_if_present(root)?;
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(root).run()?;
        // Trixie's packages keep modules under usr/lib/modules (merged /usr);
        // vng and depmod look in lib/modules.
        let lib_modules = root.join("lib/modules");
        if !lib_modules.exists() && root.join("usr/lib/modules").is_dir() {
            fs::create_dir_all(root.join("lib"))?;
            std::os::unix::fs::symlink("../usr/lib/modules", &lib_modules)
                .with_context(|| format!("linking {}", lib_modules.display()))?;
        }
        if !kernel.image().is_file() {
            bail!("{package} has no {}", kernel.image().display());
        }
        Cmd::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.version)
            .run()?;
        fs::write(root.join(COMPLETE_MARKER), package)?;
        remove_dir_if_present(&downloads)?;
        ui::ok(&format!("{} in {}", kernel.version, root.display()));
        Ok(())
    }
}

/// The private configuration: sources, lists and cache below `dir`, no
/// locks (the machine's apt may run meanwhile), apt running as root (its
/// `_apt` sandbox user could not write below root's home), and only the
/// package lists (no translations, no AppStream metadata).
fn apt_conf(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "Dir::Etc::SourceList \"{dir}/sources.list\";\n\
         Dir::Etc::SourceParts \"/dev/null\";\n\
         Dir::State::Lists \"{dir}/lists\";\n\
         Dir::Cache \"{dir}/cache\";\n\
         Debug::NoLocking \"1\";\n\
         APT::Sandbox::User \"root\";\n\
         Acquire::Languages \"none\";\n\
         Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n"
    )
}

fn sources_list(suite: &str) -> String {
    format!(
        "deb [signed-by={KEYRING}] {MIRROR} {suite} main\n\
         deb [signed-by={KEYRING}] {SECURITY_MIRROR} {suite}-security main\n"
    )
}

/// The newest generic amd64 image of `series` in `apt-cache search` output
/// (`NAME - DESCRIPTION` lines): `linux-image-ABI-amd64-unsigned` where every
/// `-`-part of ABI is a number (`6.1.0-57`, `6.12.118+deb13`), which leaves
/// out the flavours (`-cloud-amd64`: no 9p, cannot boot; `-rt-amd64`).
fn newest_generic_image(search_output: &str, series: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            let Some(abi) = name
                .strip_prefix("linux-image-")
                .and_then(|rest| rest.strip_suffix("-amd64-unsigned"))
            else {
                return false;
            };
            abi.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('.'))
                && abi
                    .split('-')
                    .all(|part| part.starts_with(|c: char| c.is_ascii_digit()))
        })
        .max_by(|a, b| natural_cmp(a, b))
        .map(str::to_owned)
}

/// `linux-image-6.1.0-57-amd64-unsigned` → `6.1.0-57-amd64` (what `uname -r` says).
fn kernel_version(package: &str) -> String {
    package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_owned()
}

/// Compares numbers inside names as numbers: `6.1.0-9` < `6.1.0-57`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in s.char_indices().skip(1) {
            let prev = s[..i].chars().next_back().unwrap_or(c);
            if prev.is_ascii_digit() != c.is_ascii_digit() {
                out.push((prev.is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        if !s.is_empty() {
            out.push((
                s[start..].starts_with(|c: char| c.is_ascii_digit()),
                &s[start..],
            ));
        }
        out
    }
    let (a, b) = (chunks(a), chunks(b));
    for (x, y) in a.iter().zip(&b) {
        let order = match (x, y) {
            ((true, x), (true, y)) => x
                .trim_start_matches('0')
                .len()
                .cmp(&y.trim_start_matches('0').len())
                .then_with(|| x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// Removes the unpacked older kernels of `series` (hundreds of MB each) once
/// a newer one is complete; failing to is only worth a warning.
fn remove_older(series: &Series, current: &Kernel, kernels_dir: &Path) {
    let Ok(entries) = fs::read_dir(kernels_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let same_series = name
            .strip_prefix(series.name)
            .is_some_and(|rest| rest.starts_with('.'));
        if same_series && entry.path() != current.root {
            ui::note(&format!("removing the older {}", entry.path().display()));
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                ui::warn(&format!("removing {}: {e}", entry.path().display()));
            }
        }
    }
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The one file `apt-get download` left in `dir`.
fn only_file(dir: &Path) -> Result<PathBuf> {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match files.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => bail!(
            "expected one .deb in {} after apt-get download, found {}",
            dir.display(),
            files.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-58-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.1.0-58-amd64-dbg - Debug symbols for linux-image-6.1.0-58-amd64
linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.12.118+deb13-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-amd64 - Linux for 64-bit PCs (meta-package)
";

    #[test]
    fn picks_the_newest_generic_image() {
        assert_eq!(
            newest_generic_image(SEARCH, "6.1").as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        assert_eq!(
            newest_generic_image(SEARCH, "6.12").as_deref(),
            Some("linux-image-6.12.118+deb13-amd64-unsigned")
        );
        assert_eq!(newest_generic_image(SEARCH, "5.10"), None);
        assert_eq!(newest_generic_image("", "6.1"), None);
    }

    #[test]
    fn trixie_names_compare_by_number() {
        let search = "linux-image-6.12.9+deb13-amd64-unsigned - x\n\
                      linux-image-6.12.118+deb13-amd64-unsigned - x\n\
                      linux-image-6.12.41+deb13-cloud-amd64-unsigned - x\n";
        assert_eq!(
            newest_generic_image(search, "6.12").as_deref(),
            Some("linux-image-6.12.118+deb13-amd64-unsigned")
        );
    }

    #[test]
    fn compares_naturally() {
        assert_eq!(natural_cmp("6.1.0-9", "6.1.0-57"), Ordering::Less);
        assert_eq!(natural_cmp("5.10.0-46", "5.10.0-46"), Ordering::Equal);
        assert_eq!(
            natural_cmp("6.12.118+deb13", "6.12.99+deb13"),
            Ordering::Greater
        );
        assert_eq!(natural_cmp("6.1.0-07", "6.1.0-7"), Ordering::Equal);
    }

    #[test]
    fn names_the_kernel_like_uname() {
        assert_eq!(
            kernel_version("linux-image-6.12.118+deb13-amd64-unsigned"),
            "6.12.118+deb13-amd64"
        );
    }

    #[test]
    fn keeps_apt_state_private() {
        let conf = apt_conf(Path::new("/c/apt/trixie"));
        assert!(
            conf.contains("Dir::State::Lists \"/c/apt/trixie/lists\";\n"),
            "{conf}"
        );
        assert!(
            conf.contains("Dir::Etc::SourceParts \"/dev/null\";\n"),
            "{conf}"
        );
        assert!(conf.contains("Debug::NoLocking \"1\";\n"), "{conf}");
    }

    #[test]
    fn lists_the_release_and_its_security_suite() {
        let list = sources_list("bullseye");
        assert!(list.contains(" bullseye main\n"), "{list}");
        assert!(list.contains(" bullseye-security main\n"), "{list}");
    }
}
