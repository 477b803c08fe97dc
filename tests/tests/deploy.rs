//! deploy/: the Kubernetes manifests and the systemd unit, checked offline
//! with the tools operators trust (yamllint, kubernetes-validate against
//! Kubernetes 1.37's schemas, systemd-analyze verify), against the flags
//! the built `bpfmasq` really accepts, and the unit's `Type=notify`
//! readiness tried with a real `bpfmasq run` and a real notify socket.

use std::{
    collections::BTreeSet,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bpfmasq_e2e::{
    Lab,
    daemon_support::{Daemon, run_args},
    process::{describe, run},
    product::bin,
};
use serde_json::Value;

/// The Kubernetes release the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.37.0";
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests: {files:?}");
    files
}

/// Runs `program ARGS` and panics with its output unless it succeeds; returns stdout.
fn tool_ok(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    let shown = format!("{command:?}");
    let out = run(&mut command, TOOL_TIMEOUT);
    assert!(out.status.success(), "{shown}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubernetes-validate` from the venv `cargo xtask setup` installs it in.
fn kubernetes_validate() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let tool = Path::new(&home).join(".cache/bpfmasq/kubernetes-validate/bin/kubernetes-validate");
    assert!(
        tool.is_file(),
        "{} is missing: run `cargo xtask setup`",
        tool.display()
    );
    tool
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    let mut command = Command::new(kubernetes_validate());
    command
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files);
    run(&mut command, TOOL_TIMEOUT)
}

/// Every YAML document of `file`, as JSON (python3's yaml, which yamllint brings).
fn documents(file: &Path) -> Vec<Value> {
    let json = tool_ok(
        "python3",
        &[
            "-c".as_ref(),
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
                .as_ref(),
            file.as_os_str(),
        ],
    );
    let docs: Vec<Value> = serde_json::from_str(&json).expect("JSON from python");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn daemonset(variant: &str) -> Value {
    let file = deploy_dir().join(format!("kubernetes/daemonset-{variant}.yaml"));
    let mut docs = documents(&file);
    assert_eq!(docs.len(), 1, "{}", file.display());
    docs.remove(0)
}

fn config_map() -> Value {
    documents(&deploy_dir().join("kubernetes/common.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap in common.yaml")
}

/// The flags `bpfmasq VERB... --help` lists.
fn flags_of(verb: &[&str]) -> BTreeSet<String> {
    let mut args: Vec<&str> = verb.to_vec();
    args.push("--help");
    let mut command = Command::new(bin());
    command.args(&args);
    let out = run(&mut command, TOOL_TIMEOUT);
    assert!(out.status.success(), "bpfmasq {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that every `--flag` in `args` (after the verb words) is one `bpfmasq VERB` takes.
fn assert_flags_accepted(args: &[Value], container: &str) {
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect();
    let verb: Vec<&str> = args
        .iter()
        .copied()
        .take_while(|a| !a.starts_with("--"))
        .collect();
    let known = flags_of(&verb);
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(
            known.contains(flag),
            "container {container} passes {flag}, which `bpfmasq {}` does not take ({known:?})",
            verb.join(" ")
        );
    }
}

#[test]
fn manifests_pass_yamllint() {
    let dir = deploy_dir();
    tool_ok(
        "yamllint",
        &[
            "--strict".as_ref(),
            "--config-file".as_ref(),
            dir.join(".yamllint").as_os_str(),
            dir.as_os_str(),
        ],
    );
}

#[test]
fn manifests_are_valid_kubernetes_objects_and_a_wrong_type_is_caught() {
    let files = manifests();
    let out = validate(&files);
    assert!(out.status.success(), "{}", describe(&out));
    let passed = String::from_utf8_lossy(&out.stdout)
        .matches("passed")
        .count()
        + String::from_utf8_lossy(&out.stderr)
            .matches("passed")
            .count();
    assert_eq!(
        passed,
        4,
        "ServiceAccount, ConfigMap, two DaemonSets: {}",
        describe(&out)
    );

    // The validator really reads them: a string where a boolean belongs fails.
    let broken = std::env::temp_dir().join(format!("bpfmasq-broken-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes/daemonset-privileged.yaml"))
        .expect("the privileged DaemonSet");
    std::fs::write(
        &broken,
        text.replace("hostNetwork: true", "hostNetwork: \"yes\""),
    )
    .expect("writing the broken copy");
    let out = validate(std::slice::from_ref(&broken));
    std::fs::remove_file(&broken).expect("removing the broken copy");
    assert!(
        !out.status.success(),
        "a wrong type passed: {}",
        describe(&out)
    );
}

#[test]
fn manifests_variants_differ_only_in_the_daemons_privileges() {
    let mut privileged = daemonset("privileged");
    let mut minimal = daemonset("capabilities");
    let daemon = |ds: &mut Value| ds["spec"]["template"]["spec"]["containers"][0].take();
    let (mut privileged_daemon, mut minimal_daemon) =
        (daemon(&mut privileged), daemon(&mut minimal));
    assert_eq!(
        privileged, minimal,
        "the variants differ beyond the daemon container"
    );
    assert_eq!(privileged_daemon["securityContext"]["privileged"], true);
    let caps = &minimal_daemon["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        caps["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    // The node's bpffs: Bidirectional needs privileged; the minimal daemon sees it HostToContainer.
    let bpffs = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|v| v["mountPath"] == "/sys/fs/bpf"))
            .map(|v| v["mountPropagation"].clone())
    };
    assert_eq!(bpffs(&privileged_daemon), Some("Bidirectional".into()));
    assert_eq!(bpffs(&minimal_daemon), Some("HostToContainer".into()));
    for c in [&mut privileged_daemon, &mut minimal_daemon] {
        c["securityContext"].take();
        for mount in c["volumeMounts"].as_array_mut().expect("volume mounts") {
            mount["mountPropagation"].take();
        }
    }
    assert_eq!(
        privileged_daemon, minimal_daemon,
        "the daemon containers differ beyond privileges"
    );
}

#[test]
fn manifests_pass_only_flags_bpfmasq_takes_and_configure_every_one() {
    let ds = daemonset("privileged");
    let spec = &ds["spec"]["template"]["spec"];
    let containers = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten());
    let config = config_map();
    for container in containers {
        let name = container["name"].as_str().unwrap_or("?");
        let args = container["args"].as_array().expect("args");
        assert_flags_accepted(args, name);
        // Every $(VAR) comes from the ConfigMap.
        for arg in args.iter().filter_map(Value::as_str) {
            if let Some((_, rest)) = arg.split_once("$(") {
                let var = rest.trim_end_matches(')');
                assert!(
                    config["data"][var].is_string(),
                    "{name} uses $({var}), which the ConfigMap lacks"
                );
            }
        }
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // verify also checks that ExecStart's binary exists: the built one stands in.
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/bpfmasq.service"))
        .expect("deploy/systemd/bpfmasq.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/bpfmasq run "),
        "{unit}"
    );
    let dir = std::env::temp_dir().join(format!("bpfmasq-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let file = dir.join("bpfmasq.service");
    let built = bin();
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/bpfmasq", &built.to_string_lossy()),
    )
    .expect("writing the unit");
    let mut command = Command::new("systemd-analyze");
    command.arg("verify").arg(&file);
    let out = run(&mut command, TOOL_TIMEOUT);
    std::fs::remove_dir_all(&dir).expect("removing the temporary folder");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        out.stderr.is_empty(),
        "systemd-analyze complained: {}",
        describe(&out)
    );

    // The environment file sets what the unit expands, with flags `run` takes.
    let env = std::fs::read_to_string(deploy_dir().join("systemd/bpfmasq.env"))
        .expect("deploy/systemd/bpfmasq.env");
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("bpfmasq.env sets no {key}"))
    };
    for key in ["BPFMASQ_BRIDGE", "BPFMASQ_UPLINK"] {
        assert!(!value(key).is_empty(), "{key} is empty");
        assert!(
            unit.contains(&format!("${{{key}}}")),
            "the unit does not use {key}"
        );
    }
    let run_flags = flags_of(&["run"]);
    for flag in value("BPFMASQ_ARGS")
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
    {
        assert!(
            run_flags.contains(flag),
            "BPFMASQ_ARGS passes {flag}, which run does not take"
        );
    }
}

#[test]
fn systemd_unit_type_notify_hears_ready_once_the_datapath_masquerades() {
    let lab = Lab::up("notify", 1);
    let dir = std::env::temp_dir().join(format!("bpfmasq-notify-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let socket_path = dir.join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");

    let args = run_args(&lab, &[]);
    let mut command = Command::new(bin());
    command.args(&args).env("NOTIFY_SOCKET", &socket_path);
    let mut daemon = Daemon::spawn_command(command, format!("bpfmasq {}", args.join(" ")));
    let mut buf = [0; 4096];
    let received = socket.recv(&mut buf);
    let line = daemon.wait_for_started();
    std::fs::remove_dir_all(&dir).expect("removing the temporary folder");
    let n = received.unwrap_or_else(|e| panic!("no notification: {e}\n{}", daemon.output()));
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(
        message.starts_with("READY=1\n"),
        "the daemon sent {message:?}"
    );
    assert!(
        message.contains("STATUS=bpfmasq run: attached to eth0"),
        "the status should be the daemon's first line ({line}), got {message:?}"
    );
    drop(daemon);
    let out = bpfmasq_e2e::product::bpfmasq(["--netns", &lab.host_ns(), "detach"]);
    assert!(out.status.success(), "detach: {}", describe(&out));
}
