//! bpfmasq's user side: the loader, the lab and what the CLI verbs do. The
//! binary (`src/bin/bpfmasq/`) parses arguments, converts them once into
//! this library's option types ([`datapath::options::AttachOptions`],
//! [`daemon::RunOptions`], [`inspect::Query`]...) and dispatches here; the
//! end-to-end tests reuse [`netns`] to run sockets inside lab namespaces.
//! [`cni`] is the CNI plugin `bpfmasq-cni` (a thin binary over it).

pub mod cni;
pub mod cni_config;
pub mod daemon;
pub mod datapath;
pub mod inspect;
pub mod lab;
pub mod metrics;
pub mod netfilter;
pub mod netlink;
pub mod netns;
pub mod privileges;
pub mod takeover;
