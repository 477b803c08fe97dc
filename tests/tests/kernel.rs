//! What bpfmasq says about, and does on, the kernel it runs on: `probe`
//! loads every program for real and reports its verifier budget; a program
//! the kernel rejects is one line of error (the full verifier log kept in a
//! file), with nothing left half-attached; a kernel without tcx or the fast
//! path's helpers gets clsact and no fast path, and says so. (The lab's
//! guard removes the datapath with the lab.)
//!
//! The rejected program is made on purpose: with `BPFMASQ_TEST_REJECT` set,
//! the loader turns on a branch of `uplink_egress` that uses a number as a
//! pointer, which every verifier refuses (unset, the verifier removes it).

use std::{path::Path, process::Command};

use bpfmasq_e2e::{
    Lab, bin,
    datapath::{attach_args, counter, host_json},
    icmp::ping,
    kernel,
    lab::files_under,
    process::{self, describe},
    product::COMMAND_TIMEOUT,
    refusal::assert_refused,
    topology::{OUT, OUTSIDE_ADDR},
};
use serde_json::Value;

/// The loader's switch for the deliberately invalid program.
const TEST_REJECT_ENV: &str = "BPFMASQ_TEST_REJECT";
/// Features the probe is told to treat as missing.
const PRETEND_LACKS_ENV: &str = "BPFMASQ_TEST_KERNEL_LACKS";
const LOG_FILE: &str = "/run/bpfmasq/verifier-uplink_egress.log";

/// `bpfmasq ARGS` with the deliberately invalid `uplink_egress`.
fn bpfmasq_with_invalid_program(args: &[String]) -> std::process::Output {
    process::run(
        Command::new(bin()).env(TEST_REJECT_ENV, "1").args(args),
        COMMAND_TIMEOUT,
    )
}

/// A rejected program is one line naming the kernel, the program, the
/// verifier's complaint and the log file; the log is there, `--verbose`
/// prints it, and nothing was attached (pods still cannot reach the peer).
#[test]
fn a_program_the_kernel_rejects_is_one_line_and_nothing_is_attached() {
    let lab = Lab::up("reject", 1);
    let args = attach_args(&lab, &[]);
    let out = bpfmasq_with_invalid_program(&args);
    let command = format!("BPFMASQ_TEST_REJECT=1 bpfmasq {}", args.join(" "));
    let kernel = kernel::release();
    assert_refused(
        &out,
        &command,
        &[
            &format!("the kernel ({kernel}) rejected program uplink_egress: "),
            "invalid mem access",
            " at insn ",
            &format!("full verifier log in {LOG_FILE}"),
        ],
    );
    let log = std::fs::read_to_string(LOG_FILE).expect("the verifier log file");
    assert!(
        log.contains("invalid mem access"),
        "{LOG_FILE} does not hold the verifier's log: {log}"
    );

    let mut verbose = args.clone();
    verbose.insert(0, "--verbose".to_owned());
    let out = bpfmasq_with_invalid_program(&verbose);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.lines().count() > 10 && stderr.contains("processed "),
        "--verbose should print the whole verifier log: {}",
        describe(&out)
    );

    let pinned = files_under(&lab.pins_dir());
    assert!(
        pinned.is_empty(),
        "the rejected attach left pins: {pinned:?}"
    );
    let ping = ping(&lab, "c1", OUTSIDE_ADDR, 1, 2);
    assert!(
        !ping.status.success(),
        "c1 reached {OUT} although nothing should masquerade: {}",
        describe(&ping)
    );
}

/// `probe --json` loads every program: each is accepted, with what the
/// verifier spent on it where the kernel reports it (5.16 and later), and
/// its scratch pins are gone afterwards.
#[test]
fn probe_loads_every_program_and_reports_its_verifier_budget() {
    let out = process::run(
        Command::new(bin()).args(["probe", "--json"]),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "bpfmasq probe failed: {}",
        describe(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    assert_eq!(report["kernel"], kernel::release().as_str(), "{report:#}");
    let programs = report["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "uplink_egress",
            "uplink_ingress",
            "bridge_ingress",
            "pod_port_ingress"
        ]
    );
    for program in programs {
        assert_eq!(program["loaded"], true, "{program:#}");
        if let Some(insns) = program["instructions_processed"].as_u64() {
            assert!(insns > 0 && insns < 1_000_000, "{program:#}");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .expect("/sys/fs/bpf")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("bpfmasq-probe"))
        .collect();
    assert!(leftovers.is_empty(), "probe left {leftovers:?}");
    assert!(Path::new("/sys/fs/bpf").is_dir());
}

/// On a kernel without tcx links and without `bpf_redirect_neigh` (pretended
/// here: the probe is told they are missing), attach uses a clsact qdisc and
/// leaves the fast path off saying why, `status` shows both, and pods'
/// traffic is masqueraded all the same, by the host's forwarding.
#[test]
fn without_tcx_and_fast_path_helpers_it_attaches_with_clsact_and_no_fast_path() {
    let lab = Lab::up("lacks", 1);
    let lacking = |args: &[String]| {
        process::run(
            Command::new(bin())
                .env(PRETEND_LACKS_ENV, "tcx,bpf_redirect_neigh")
                .args(args),
            COMMAND_TIMEOUT,
        )
    };
    let args = attach_args(&lab, &["--fast-path", "on"]);
    let out = lacking(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("(Clsact)")
            && stdout.contains("fast path off (this kernel lacks bpf_redirect_neigh"),
        "attach should choose clsact and say why the fast path is off: {}",
        describe(&out)
    );

    let status_args: Vec<String> = ["--netns", &lab.host_ns(), "status", "--json"]
        .map(String::from)
        .to_vec();
    let out = lacking(&status_args);
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json ({e}): {}", describe(&out)));
    assert_eq!(status["link_type"], "clsact", "{status:#}");
    assert_eq!(status["fast_path"], false, "{status:#}");
    let off = status["features_off"].to_string();
    assert!(
        off.contains("tcx links") && off.contains("bpf_redirect_neigh"),
        "status should list what the kernel lacks: {status:#}"
    );

    let ping = ping(&lab, "c1", OUTSIDE_ADDR, 2, 5);
    assert!(
        ping.status.success(),
        "c1 could not reach {OUT}: {}",
        describe(&ping)
    );
    let stats = host_json(&lab, &["stats", "--json"]);
    assert!(
        counter(&stats, "translated_out").unwrap_or(0) >= 2,
        "{stats:#}"
    );
    assert_eq!(counter(&stats, "fast_path_out"), Some(0), "{stats:#}");
}
