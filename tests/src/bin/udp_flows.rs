//! One lab node's UDP flows in a process of their own, driven by the
//! end-to-end tests: see `bpfmasq_e2e::udp_flows_process`.

fn main() -> std::process::ExitCode {
    bpfmasq_e2e::udp_flows_process::child_main()
}
