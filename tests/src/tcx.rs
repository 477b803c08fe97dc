//! Another program on bpfmasq's tcx hooks, as a second eBPF tool on a host
//! would put it there: a two-instruction classifier returning a fixed
//! action, attached first or last. It is detached when dropped.

use std::os::fd::{AsRawFd as _, OwnedFd};

use bpfmasq::datapath::sys::{Insn, bpf, load_classifier};

use crate::{lab::Lab, netns::run_in};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// Position flags of tcx links (bpf_mprog): with no relative program,
/// BEFORE means first and AFTER last.
const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_F_AFTER: u32 = 1 << 4;

/// tcx's return codes.
pub const TCX_PASS: i32 = 0;
pub const TCX_DROP: i32 = 2;

/// The `union bpf_attr` prefix of BPF_LINK_CREATE for tcx.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

#[derive(Clone, Copy, Debug)]
pub enum Hook {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug)]
pub enum Position {
    First,
    Last,
}

/// A foreign program attached with tcx; detached (link closed) on drop.
#[derive(Debug)]
pub struct ForeignProgram {
    _link: OwnedFd,
    _program: OwnedFd,
}

impl ForeignProgram {
    /// Attaches a program that returns `action` for every packet to `iface`
    /// of `node` at `hook`, `position` among the programs already there.
    pub fn attach(
        lab: &Lab,
        node: &str,
        iface: &str,
        (hook, position): (Hook, Position),
        action: i32,
    ) -> Self {
        let program =
            load_classifier(&[Insn::mov_r0(action), Insn::EXIT]).expect("loading the program");
        let name = std::ffi::CString::new(iface).expect("interface name");
        // SAFETY: a NUL-terminated name.
        let ifindex = run_in(&lab.ns(node), || unsafe {
            libc::if_nametoindex(name.as_ptr())
        });
        assert_ne!(ifindex, 0, "no interface {iface} in {}", lab.ns(node));
        let mut attr = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: match hook {
                Hook::Ingress => BPF_TCX_INGRESS,
                Hook::Egress => BPF_TCX_EGRESS,
            },
            flags: match position {
                Position::First => BPF_F_BEFORE,
                Position::Last => BPF_F_AFTER,
            },
            ..Default::default()
        };
        // The ifindex is looked up in the caller's namespace: attach from there.
        let link = run_in(&lab.ns(node), || bpf(BPF_LINK_CREATE, &mut attr))
            .expect("attaching the program with tcx");
        // SAFETY: a file descriptor BPF_LINK_CREATE just returned, owned here.
        let link = unsafe { std::os::fd::FromRawFd::from_raw_fd(link as i32) };
        Self {
            _link: link,
            _program: program,
        }
    }
}
