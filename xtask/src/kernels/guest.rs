//! What runs inside a guest and what it leaves behind.
//!
//! The guest's stdout does not reach the host (virtme-ng has no script
//! channel here), so the script writes everything into a folder shared
//! read-write with the host: its own log, `bpfmasq probe --json`, each suite
//! run's output and exit status, and `finished` as its last act. The host
//! follows that folder while the guest runs, and reads it once it is gone.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::suite::{self, SuiteRun};
use crate::{cmd::quote, test::FAST_PATH_ENV, ui};

/// Kernel modules the suite needs that nothing loads by itself before
/// `bpfmasq probe` looks (Debian builds them as modules).
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nf_conntrack",
    "nf_tables",
];

/// The fast-path modes the suite runs in, in order.
pub const MODES: [&str; 2] = ["on", "off"];

/// A fresh folder shared with a guest; removed when dropped (also on failure
/// and Ctrl-C).
pub struct SharedDir {
    path: PathBuf,
}

impl SharedDir {
    /// Under /tmp, not $TMPDIR: the guest sees the host's /tmp, but an empty
    /// tmpfs over /var/tmp.
    pub fn create() -> Result<Self> {
        let path = nix::unistd::mkdtemp("/tmp/bpfmasq-vm-XXXXXX")
            .context("creating a folder in /tmp to share with the guest")?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies every file to `dest` (replacing what was there), to keep a
    /// failed guest's logs after this folder is gone.
    pub fn keep(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            fs::remove_dir_all(dest).with_context(|| format!("removing {}", dest.display()))?;
        }
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for entry in fs::read_dir(&self.path)? {
            let from = entry?.path();
            if from.is_file() {
                let to = dest.join(from.file_name().unwrap_or_default());
                fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            ui::warn(&format!("removing {}: {e}", self.path.display()));
        }
    }
}

/// What the guest runs: the built binary and the suite's executable (from
/// the host's file system, unchanged), in the suite package's folder (where
/// cargo would run it), one test at a time, with a timeout per mode.
pub struct Plan<'a> {
    pub bin: &'a Path,
    pub suite: &'a Path,
    pub package_dir: &'a Path,
    pub suite_timeout_secs: u64,
}

/// Whether the guest script began (its first step writes `progress`).
pub fn script_started(shared: &Path) -> bool {
    shared.join("progress").exists()
}

/// Writes the guest's script into `shared`; returns its path.
pub fn write_script(shared: &Path, plan: &Plan) -> Result<PathBuf> {
    let script = shared.join("guest.sh");
    fs::write(&script, script_text(shared, plan))
        .with_context(|| format!("writing {}", script.display()))?;
    Ok(script)
}

fn script_text(shared: &Path, plan: &Plan) -> String {
    let q = |p: &Path| quote(p.as_os_str());
    format!(
        r#"# bpfmasq's kernel matrix, inside the guest: results go to the shared folder.
out={out}
bin={bin}
exec >"$out/guest.log" 2>&1
step() {{ echo "$*" >>"$out/progress"; echo "== $*"; }}
step "booted $(uname -r)"
for module in {modules}; do
  modprobe "$module" || echo "modprobe $module failed"
done
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# Everything is read over 9p into a cold page cache, under emulation: the
# first scapy import alone took over a minute on 5.10, longer than a test
# allows one command. Warm it, so the suite's timeouts measure the datapath.
step "warm the page cache"
cat "$bin" {suite} >/dev/null
/usr/bin/python3 -c 'import scapy.all' >/dev/null 2>&1
step "bpfmasq probe"
"$bin" probe --json >"$out/probe.json" 2>"$out/probe.err"
echo $? >"$out/probe.status"
cd {package_dir} || exit
for mode in {modes}; do
  step "suite with the fast path $mode"
  {fast_path_env}=$mode BPFMASQ_BIN="$bin" timeout --kill-after=10 {timeout} \
    {suite} --test-threads 1 >"$out/suite-$mode.log" 2>&1
  echo $? >"$out/suite-$mode.status"
done
step finished
echo finished >"$out/finished"
"#,
        out = q(shared),
        bin = q(plan.bin),
        modules = MODULES.join(" "),
        package_dir = q(plan.package_dir),
        modes = MODES.join(" "),
        fast_path_env = FAST_PATH_ENV,
        timeout = plan.suite_timeout_secs,
        suite = q(plan.suite),
    )
}

/// What the guest left in the shared folder.
#[derive(Debug, Default)]
pub struct Results {
    /// The script reached its end.
    pub finished: bool,
    pub probe: Option<Probe>,
    /// Why there is no probe: its stderr or exit status.
    pub probe_error: Option<String>,
    /// One per mode of [`MODES`], in order.
    pub suites: Vec<SuiteRun>,
}

impl Results {
    pub fn read(shared: &Path) -> Self {
        let read = |name: &str| fs::read_to_string(shared.join(name)).ok();
        let status = |name: &str| read(name)?.trim().parse::<i32>().ok();
        let probe = read("probe.json").as_deref().and_then(Probe::parse);
        let probe_error = probe.is_none().then(|| {
            let stderr = read("probe.err").unwrap_or_default();
            let last = suite::tail(stderr.trim(), 1);
            match status("probe.status") {
                Some(code) if !last.is_empty() => format!("exit status {code}: {last}"),
                Some(code) => format!("exit status {code}"),
                None => "did not run".to_owned(),
            }
        });
        Self {
            finished: shared.join("finished").is_file(),
            probe,
            probe_error,
            suites: MODES
                .iter()
                .map(|mode| {
                    SuiteRun::from_output(
                        read(&format!("suite-{mode}.log")),
                        status(&format!("suite-{mode}.status")),
                    )
                })
                .collect(),
        }
    }
}

/// What `bpfmasq probe --json` said, read tolerantly: a field that is missing
/// (or named otherwise) is None and shows as `-`.
#[derive(Debug, Default, PartialEq)]
pub struct Probe {
    pub attach_mode: Option<String>,
    pub programs: Vec<Program>,
}

/// One program as the probe loaded it.
#[derive(Debug, PartialEq)]
pub struct Program {
    pub name: String,
    pub loaded: Option<bool>,
    /// The verifier's instructions processed (5.16 and later report it).
    pub instructions: Option<u64>,
    /// How long verifying (loading) took.
    pub time_us: Option<u64>,
}

impl Probe {
    fn parse(json: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(json).ok()?;
        let first_u64 = |v: &Value, keys: &[&str]| keys.iter().find_map(|k| v[*k].as_u64());
        let programs = value["programs"]
            .as_array()
            .map(|programs| {
                programs
                    .iter()
                    .filter_map(|p| {
                        Some(Program {
                            name: p["name"].as_str()?.to_owned(),
                            loaded: p["loaded"].as_bool(),
                            instructions: first_u64(
                                p,
                                &["instructions_processed", "verified_insns", "instructions"],
                            ),
                            time_us: first_u64(
                                p,
                                &["verification_time_us", "load_time_us", "time_us"],
                            ),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            attach_mode: ["attach_mode", "attach"]
                .iter()
                .find_map(|k| value[*k].as_str())
                .map(str::to_owned),
            programs,
        })
    }
}

/// Prints, while the guest runs, the steps its script reports and each
/// test's result as the suite prints it.
pub struct Progress {
    shared: PathBuf,
    started: Instant,
    /// Lines already shown, per followed file.
    shown: Vec<(String, usize)>,
}

impl Progress {
    pub fn new(shared: &Path) -> Self {
        // The suites' lines before the script's steps: a poll that finds the
        // last test of one mode and the step to the next shows them in order.
        let files = MODES
            .iter()
            .map(|mode| format!("suite-{mode}.log"))
            .chain(std::iter::once("progress".to_owned()));
        Self {
            shared: shared.to_owned(),
            started: Instant::now(),
            shown: files.map(|f| (f, 0)).collect(),
        }
    }

    /// Shows the complete lines that appeared since the last call.
    pub fn poll(&mut self) {
        let elapsed = self.started.elapsed().as_secs();
        for (file, shown) in &mut self.shown {
            let Ok(text) = fs::read_to_string(self.shared.join(&*file)) else {
                continue;
            };
            // A line is complete once its newline is written.
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            let lines: Vec<&str> = complete.lines().collect();
            for line in lines.iter().skip(*shown) {
                if file == "progress" || suite::is_result_line(line) {
                    ui::note(&format!("[{}:{:02}] {line}", elapsed / 60, elapsed % 60));
                }
            }
            *shown = lines.len().max(*shown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_probe_tolerantly() {
        let json = r#"{"kernel":"6.1.0-57-amd64","attach_mode":"clsact","features":[],
            "programs":[
              {"name":"uplink_egress","loaded":true,"instructions_processed":3068,"verification_time_us":116850,"error":null},
              {"name":"uplink_ingress","loaded":true,"load_time_us":151955},
              {"name":"bridge_ingress","loaded":false,"error":"rejected"}]}"#;
        let probe = Probe::parse(json).unwrap();
        assert_eq!(probe.attach_mode.as_deref(), Some("clsact"));
        assert_eq!(
            probe.programs,
            [
                Program {
                    name: "uplink_egress".into(),
                    loaded: Some(true),
                    instructions: Some(3068),
                    time_us: Some(116850)
                },
                Program {
                    name: "uplink_ingress".into(),
                    loaded: Some(true),
                    instructions: None,
                    time_us: Some(151955)
                },
                Program {
                    name: "bridge_ingress".into(),
                    loaded: Some(false),
                    instructions: None,
                    time_us: None
                },
            ]
        );
        assert_eq!(Probe::parse("{}"), Some(Probe::default()));
        assert_eq!(Probe::parse("error: no such verb"), None);
    }

    #[test]
    fn the_script_quotes_its_paths() {
        let plan = Plan {
            bin: Path::new("/w/target/release/bpfmasq"),
            suite: Path::new("/w w/target/release/deps/portability-01"),
            package_dir: Path::new("/w/tests"),
            suite_timeout_secs: 600,
        };
        let text = script_text(Path::new("/tmp/bpfmasq-vm-x"), &plan);
        assert!(text.contains("out=/tmp/bpfmasq-vm-x\n"), "{text}");
        assert!(
            text.contains("'/w w/target/release/deps/portability-01' --test-threads 1"),
            "{text}"
        );
        assert!(text.contains("for mode in on off;"), "{text}");
        assert!(text.contains("BPFMASQ_E2E_FAST_PATH=$mode"), "{text}");
    }
}
