//! What the running kernel offers the datapath, found by probing it (never
//! guessed from its version number: distributions backport features, and
//! some configure them out).
//!
//! Each feature either has a fallback (tcx links -> a clsact qdisc; batched
//! map operations -> one system call per key; the fast path -> off, with the
//! reason in `status`) or is required, and then `attach` refuses with one
//! line naming what is missing.

use aya::{
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported, is_program_supported},
};
use dataplane_common::kernel::FEATURE_FAST_PATH;
use serde::Serialize;

use super::{
    batch,
    sys::{Insn, load_classifier},
};

/// One probed feature.
#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// What bpfmasq does without it.
    pub without: Without,
}

/// What becomes of bpfmasq on a kernel that lacks a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Without {
    /// Nothing works: `attach` refuses.
    Refused,
    /// Attached with a clsact qdisc instead of tcx links.
    Clsact,
    /// The fast path stays off; everything else works.
    NoFastPath,
    /// The garbage collector reads and deletes flows one by one.
    KeyByKey,
}

impl Without {
    /// What bpfmasq does without the feature, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Without::Refused => "bpfmasq cannot run",
            Without::Clsact => "clsact qdisc instead",
            Without::NoFastPath => "fast path off",
            Without::KeyByKey => "key by key",
        }
    }
}

/// The running kernel, as far as bpfmasq is concerned.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    pub features: Vec<Feature>,
}

/// Environment variable listing features to treat as missing (name
/// prefixes, comma-separated, e.g. `tcx,bpf_redirect_neigh`): how the tests
/// try the fallbacks on a kernel that has everything.
pub const PRETEND_LACKS_ENV: &str = "BPFMASQ_TEST_KERNEL_LACKS";

/// `offsetof(struct __sk_buff, gso_size)`: fixed by the kernel's UAPI.
const SKB_GSO_SIZE_OFFSET: i16 = 176;

impl Kernel {
    /// Probes the running kernel. Needs the privileges loading programs
    /// needs; a probe that cannot tell counts the feature as missing.
    pub fn probe() -> Self {
        let helper =
            |helper| is_helper_supported(ProgramType::SchedClassifier, helper).unwrap_or(false);
        let tc_programs = is_program_supported(ProgramType::SchedClassifier).unwrap_or(false);
        let features = vec![
            Feature {
                name: "TC BPF programs (cls_bpf)",
                available: tc_programs,
                without: Without::Refused,
            },
            Feature {
                name: "bpf_sk_lookup_tcp/udp helpers (4.20)",
                available: helper(BpfHelper::BPF_FUNC_sk_lookup_tcp)
                    && helper(BpfHelper::BPF_FUNC_sk_lookup_udp),
                without: Without::Refused,
            },
            Feature {
                name: "bpf_fib_lookup helper (4.18)",
                available: helper(BpfHelper::BPF_FUNC_fib_lookup),
                without: Without::NoFastPath,
            },
            Feature {
                name: "bpf_redirect_neigh helper (5.10)",
                available: helper(BpfHelper::BPF_FUNC_redirect_neigh),
                without: Without::NoFastPath,
            },
            Feature {
                name: "__sk_buff.gso_size (5.7)",
                available: tc_programs && reads_skb_field(SKB_GSO_SIZE_OFFSET),
                without: Without::NoFastPath,
            },
            Feature {
                name: "tcx links (6.6)",
                available: has_tcx(),
                without: Without::Clsact,
            },
            Feature {
                name: "batched map operations (5.6)",
                available: batch::is_supported(),
                without: Without::KeyByKey,
            },
        ];
        let mut kernel = Self {
            release: release(),
            features,
        };
        if let Some(lacks) = std::env::var_os(PRETEND_LACKS_ENV) {
            kernel.pretend_lacks(&lacks.to_string_lossy());
        }
        kernel
    }

    /// Marks the features whose names start with one of the comma-separated
    /// `prefixes` as missing (see [`PRETEND_LACKS_ENV`]).
    fn pretend_lacks(&mut self, prefixes: &str) {
        for prefix in prefixes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            for feature in &mut self.features {
                if feature.name.starts_with(prefix) {
                    feature.available = false;
                }
            }
        }
    }

    fn lacks(&self, without: Without) -> impl Iterator<Item = &Feature> {
        self.features
            .iter()
            .filter(move |f| !f.available && f.without == without)
    }

    /// An error naming what the kernel lacks that bpfmasq cannot do without.
    pub fn check_required(&self) -> anyhow::Result<()> {
        let missing: Vec<&str> = self.lacks(Without::Refused).map(|f| f.name).collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "this kernel ({}) lacks {}, which bpfmasq needs (Linux 5.10 or later has everything)",
            self.release,
            missing.join(" and ")
        )
    }

    pub fn has_tcx(&self) -> bool {
        self.lacks(Without::Clsact).next().is_none()
    }

    /// Why the fast path cannot run here, or `None` when it can.
    pub fn fast_path_unavailable(&self) -> Option<String> {
        let missing: Vec<&str> = self.lacks(Without::NoFastPath).map(|f| f.name).collect();
        (!missing.is_empty()).then(|| format!("this kernel lacks {}", missing.join(" and ")))
    }

    /// The bits the programs' `KERNEL_FEATURES` global gets.
    pub fn program_features(&self) -> u32 {
        if self.fast_path_unavailable().is_none() {
            FEATURE_FAST_PATH
        } else {
            0
        }
    }

    /// The attach mode `--link-type auto` gets here.
    pub fn attach_mode(&self) -> &'static str {
        if self.has_tcx() { "tcx" } else { "clsact" }
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// tcx: asking for the programs on loopback's tcx ingress hook fails on a
/// kernel without tcx (EINVAL for the unknown attach type). Every network
/// namespace has a loopback; nothing is changed.
fn has_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

/// Whether a TC program may read the `__sk_buff` field at `offset`: loads
/// `r0 = *(u32 *)(r1 + offset); r0 = 0; exit`, which the verifier rejects
/// for a field this kernel does not know.
fn reads_skb_field(offset: i16) -> bool {
    load_classifier(&[Insn::load_ctx_u32(offset), Insn::mov_r0(0), Insn::EXIT]).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Kernel {
        let feature = |name, without| Feature {
            name,
            available: true,
            without,
        };
        Kernel {
            release: "6.1.0-57-amd64".into(),
            features: vec![
                feature("TC BPF programs (cls_bpf)", Without::Refused),
                feature("bpf_redirect_neigh helper (5.10)", Without::NoFastPath),
                feature("__sk_buff.gso_size (5.7)", Without::NoFastPath),
                feature("tcx links (6.6)", Without::Clsact),
            ],
        }
    }

    #[test]
    fn a_kernel_with_everything_gets_tcx_and_the_fast_path() {
        let kernel = everything();
        assert!(kernel.check_required().is_ok());
        assert_eq!(kernel.attach_mode(), "tcx");
        assert_eq!(kernel.fast_path_unavailable(), None);
        assert_eq!(kernel.program_features(), FEATURE_FAST_PATH);
    }

    #[test]
    fn missing_fast_path_features_turn_only_the_fast_path_off() {
        let mut kernel = everything();
        kernel.pretend_lacks("bpf_redirect_neigh, __sk_buff");
        assert!(kernel.check_required().is_ok());
        assert_eq!(
            kernel.fast_path_unavailable().as_deref(),
            Some("this kernel lacks bpf_redirect_neigh helper (5.10) and __sk_buff.gso_size (5.7)")
        );
        assert_eq!(kernel.program_features(), 0);
        assert_eq!(kernel.attach_mode(), "tcx");
    }

    #[test]
    fn without_tcx_it_is_clsact_and_without_tc_programs_it_is_refused() {
        let mut kernel = everything();
        kernel.pretend_lacks("tcx");
        assert_eq!(kernel.attach_mode(), "clsact");
        kernel.pretend_lacks("TC BPF");
        let error = kernel.check_required().unwrap_err().to_string();
        assert_eq!(
            error,
            "this kernel (6.1.0-57-amd64) lacks TC BPF programs (cls_bpf), which bpfmasq needs \
             (Linux 5.10 or later has everything)"
        );
    }
}
