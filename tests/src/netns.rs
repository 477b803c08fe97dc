//! Running code inside a named network namespace.

use bpfmasq::netns::NetNs;

/// Runs `f` on a fresh thread inside the network namespace `ns` and returns
/// its result. Sockets created by `f` stay in `ns` and may be used from any
/// thread afterwards. Panics if `ns` cannot be entered or `f` panics.
pub fn run_in<T, F>(ns: &str, f: F) -> T
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let netns = NetNs::open(ns).unwrap_or_else(|e| panic!("{e:#}"));
    netns.run(f).unwrap_or_else(|e| panic!("{e:#}"))
}
