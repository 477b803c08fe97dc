//! bpfmasq's user side: the loader, the lab and the CLI verbs. The binary
//! (`main.rs`) only parses arguments and dispatches here; the end-to-end
//! tests reuse [`netns`] to run sockets inside lab namespaces.

pub mod bench;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod inspect;
pub mod lab;
pub mod netlink;
pub mod netns;
pub mod privileges;
