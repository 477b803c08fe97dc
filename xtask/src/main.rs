//! `cargo xtask`: everything around bpfmasq that is not bpfmasq itself.
//!
//! One module per concept: [`setup`] prepares the machine, [`build`] builds the
//! binary, [`image`] the OCI image (static binaries `FROM scratch`), [`test`] runs every test (and, through [`kernels`], the portability
//! suite on Debian's kernels in VMs), [`demo`] shows the datapath at work in a
//! throwaway lab, [`lint`] checks formatting and clippy. [`cmd`] runs commands
//! and echoes them, [`ui`] prints the headings, [`workspace`] knows the paths.

mod bench;
mod build;
mod cmd;
mod demo;
mod image;
mod kernels;
mod lint;
mod setup;
mod test;
mod ui;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, test and demo bpfmasq",
    long_about = "Set up, build, test and demo bpfmasq.\n\n\
                  After cloning, as root:\n  \
                  cargo xtask demo    # see masquerade work in a throwaway lab\n  \
                  cargo xtask test    # run every test (unit and end-to-end)\n\n\
                  Each command runs the ones it needs first (demo and test run setup and build)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need; quick and harmless when already done.
    ///
    /// Checks, and installs only what is missing: the Debian packages the tests and the demo
    /// use (apt), rust-src for the nightly toolchain, bpf-linker built against the
    /// nightly's own LLVM, the BPF filesystem at /sys/fs/bpf, the musl target (the image's
    /// static binaries), kubernetes-validate from PyPI in ~/.cache/bpfmasq/kubernetes-validate
    /// (the manifests' test), and what the kernel matrix
    /// boots its VMs with (qemu-system-x86, kmod, busybox-static, python3-venv; virtme-ng
    /// from PyPI in ~/.cache/bpfmasq/virtme-ng). Installing packages and mounting need root;
    /// the nightly toolchain itself must already be installed. (build, demo, bench and lint
    /// check all but the VM tools; the kernel matrix checks those when it runs.)
    Setup,
    /// Run setup, then build target/release/bpfmasq (with its eBPF object embedded).
    Build,
    /// Run setup and build, then every test: unit and end-to-end tests, then the kernel
    /// matrix (needs root).
    ///
    /// Builds the OCI image (as `cargo xtask image`), then runs `cargo test --release
    /// --workspace --exclude dataplane-ebpf` with BPFMASQ_BIN pointing at the built binary and
    /// BPFMASQ_IMAGE at the image's archive, the end-to-end tests with the fast path on, then off.
    /// They create and remove their own network namespaces; they never touch the host's
    /// own network.
    ///
    /// Then the kernel matrix: Debian's own kernels (5.10 from bullseye, 6.1 from bookworm,
    /// 6.12 from trixie; the newest generic linux-image-*-amd64-unsigned of each, unpacked
    /// in ~/.cache/bpfmasq/kernels, never installed) booted one after the other with
    /// virtme-ng (KVM where it works, else TCG), each running `bpfmasq probe --json` and the
    /// portability suite (tests/tests/portability.rs) with the fast path on, then off. Ends
    /// with a table: tests per mode, minutes, and what verifying each program cost. About 5
    /// minutes a kernel under TCG on 2 cores; a failed kernel's logs stay in
    /// target/kernels-logs/<kernel>/.
    ///
    /// `--kernels` runs the matrix alone, `--host-only` skips it. Arguments are passed to
    /// `cargo test`, for example a test name filter, and after a second `--` to the test
    /// harness: `cargo xtask test -- nat_ -- --nocapture` (a selection runs on this machine
    /// only, without the matrix).
    Test(test::TestArgs),
    /// Run setup, then build the OCI image bpfmasq:<version> offline with podman.
    ///
    /// Builds every binary of the dataplane-user package statically (x86_64-unknown-linux-musl,
    /// the eBPF object embedded) into an image FROM scratch whose entrypoint is /bpfmasq. The
    /// image is tagged bpfmasq:<version> and bpfmasq:latest in podman's storage and saved as
    /// an OCI archive, target/image/bpfmasq-<version>.tar, for other nodes or a registry
    /// (`podman load -i`, `ctr -n k8s.io images import`, `skopeo copy oci-archive:...`).
    /// Needs root for podman's storage; see deploy/ and README for running it.
    Image,
    /// Run setup and build, then show bpfmasq masquerading a lab's traffic (needs root).
    ///
    /// Creates a lab in network namespaces (a host with a container bridge, two containers
    /// and an outside peer), attaches bpfmasq, sends ping, HTTP and UDP from the containers
    /// to the peer, prints the NAT table and counters, shows that no iptables or nftables
    /// NAT rule exists, and always removes the lab again (also on failure or Ctrl-C).
    Demo(demo::DemoArgs),
    /// Run setup and build, then `bpfmasq-bench` with ARGS: bpfmasq against iptables and
    /// nftables masquerade on one lab, interleaved (needs root; see BENCHMARKS.md).
    ///
    /// `cargo xtask bench -- --quick` is the two-minute smoke run; without arguments the
    /// full run (about 11 minutes on 2 CPUs) writes bench-results/bench.svg.
    Bench(bench::BenchArgs),
    /// Check formatting (rustfmt) and lints (clippy, for the user-side crates and the eBPF crate).
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run_all(),
        Command::Build => build::run().map(drop),
        Command::Image => image::run().map(drop),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Lint => lint::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ui::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
