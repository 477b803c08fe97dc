//! What the running kernel offers the programs, as the loader probed it.
//!
//! The loader writes these bits into the programs' read-only global
//! [`KERNEL_FEATURES`] before loading them. The verifier knows a read-only
//! global's value, so on a kernel that lacks a feature the code needing it
//! is never explored: the program loads, with that part switched off, where
//! it would otherwise be rejected as a whole (unknown helper, unknown
//! `__sk_buff` field).

/// Name of the programs' global the loader sets (`u32`, these bits).
pub const KERNEL_FEATURES: &str = "KERNEL_FEATURES";

/// The fast path can run: the kernel has `bpf_fib_lookup` and
/// `bpf_redirect_neigh` for TC programs and `__sk_buff.gso_size` (Linux 5.10).
pub const FEATURE_FAST_PATH: u32 = 1 << 0;
