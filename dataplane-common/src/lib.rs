//! Types shared by the bpfmasq eBPF programs (kernel side) and the `bpfmasq`
//! loader (user side). Everything here is `#[repr(C)]`, `no_std` and free of
//! pointers, so the same bytes are valid in a BPF map and in userspace.
//!
//! Byte order convention: addresses and ports are stored exactly as they
//! appear on the wire (network byte order), held in native integers. The eBPF
//! side can then compare and copy header fields without swapping; the user
//! side converts with `u32::from_ne_bytes(ip.octets())` and friends.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod flow;
pub mod fragments;
pub mod kernel;
pub mod maps;
pub mod martian;
pub mod pods;
pub mod ports;
pub mod tcp_window;
pub mod trace;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], has no padding holes that the
    // kernel could read uninitialised (explicit `_pad` fields), and is valid
    // for any bit pattern.
    unsafe impl aya::Pod for crate::config::NatConfig {}
    unsafe impl aya::Pod for crate::config::DatapathRecord {}
    unsafe impl aya::Pod for crate::conntrack::Timeouts {}
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowEntry {}
    unsafe impl aya::Pod for crate::fragments::DatagramKey {}
    unsafe impl aya::Pod for crate::fragments::DatagramEntry {}
    unsafe impl aya::Pod for crate::fragments::ParkedKey {}
    unsafe impl aya::Pod for crate::fragments::ParkedFragment {}
    unsafe impl aya::Pod for crate::fragments::SourceBudget {}
    unsafe impl aya::Pod for crate::pods::PodRecord {}
    unsafe impl aya::Pod for crate::trace::TraceEvent {}
}
