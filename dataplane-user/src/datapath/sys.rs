//! The bpf(2) system call, for the few commands aya 0.14 has no API for
//! (batched map access, feature probes, tiny hand-written programs).

use std::{
    ffi::CStr,
    io,
    mem::size_of,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// Issues bpf(2) command `cmd` with `attr`, a `#[repr(C)]` prefix of
/// `union bpf_attr` for that command; returns the call's non-negative result
/// (a new file descriptor for the commands that create one).
pub fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd` (the caller's
    // contract); any buffer it points to outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// One eBPF instruction, as `struct bpf_insn` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// `exit` (BPF_JMP | BPF_EXIT).
    pub const EXIT: Self = Self::new(0x95, 0, 0, 0);

    const fn new(code: u8, regs: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs,
            off,
            imm,
        }
    }

    /// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K): the program's return value.
    pub const fn mov_r0(imm: i32) -> Self {
        Self::new(0xb7, 0, 0, imm)
    }

    /// `r0 = *(u32 *)(r1 + offset)`: reads a context field.
    pub const fn load_ctx_u32(offset: i16) -> Self {
        // BPF_LDX | BPF_MEM | BPF_W; dst r0, src r1 (the context).
        Self::new(0x61, 1 << 4, offset, 0)
    }
}

/// The `union bpf_attr` prefix of BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// Loads `insns` as a TC classifier; the program lives as long as the fd.
pub fn load_classifier(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license: &CStr = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a file descriptor BPF_PROG_LOAD just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
