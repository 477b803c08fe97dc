//! The [`Datapath`] guard: `bpfmasq attach` on a lab's host, `detach` when
//! the guard drops; plus reading the datapath's counters and flows.

use std::process::Output;

use serde_json::Value;

use crate::{
    lab::Lab,
    process::describe,
    product::{bpfmasq, try_bpfmasq},
    topology::{BRIDGE, UPLINK},
};

/// The arguments of `bpfmasq --netns NAME-host attach --bridge cni0 --uplink eth0 EXTRA...`.
pub fn attach_args(lab: &Lab, extra: &[&str]) -> Vec<String> {
    uplink_verb_args(lab, "attach", extra)
}

/// `bpfmasq --netns NAME-host VERB --bridge cni0 --uplink eth0 EXTRA...`, for
/// the verbs that take attach's flags (`attach`, `run`). Unless `extra`
/// chooses, `--fast-path` follows [`FAST_PATH_ENV`], so the whole suite runs
/// once with the fast path on and once with it off.
pub fn uplink_verb_args(lab: &Lab, verb: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--netns",
        &lab.host_ns(),
        verb,
        "--bridge",
        BRIDGE,
        "--uplink",
        UPLINK,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    if let Some(mode) = fast_path_mode()
        && !extra.contains(&"--fast-path")
    {
        args.extend(["--fast-path".to_owned(), mode]);
    }
    args
}

/// Environment variable choosing `--fast-path on|off` for every attach and
/// run of the suite (unset: bpfmasq's default).
pub const FAST_PATH_ENV: &str = "BPFMASQ_E2E_FAST_PATH";

/// The `--fast-path` value [`FAST_PATH_ENV`] asks for; panics on anything
/// but `on`/`off`, so a typo never silently tests the default.
pub fn fast_path_mode() -> Option<String> {
    let mode = std::env::var(FAST_PATH_ENV).ok()?;
    assert!(
        mode == "on" || mode == "off",
        "{FAST_PATH_ENV}={mode}: expected on or off"
    );
    Some(mode)
}

/// Runs `attach` with `extra` arguments and returns its output, attaching no guard:
/// for tests that expect it to fail.
pub fn try_attach(lab: &Lab, extra: &[&str]) -> Output {
    bpfmasq(attach_args(lab, extra))
}

/// A datapath attached to a lab's uplink; detached when dropped.
#[derive(Debug)]
pub struct Datapath<'lab> {
    lab: &'lab Lab,
    attached: bool,
}

impl<'lab> Datapath<'lab> {
    /// Attaches with the default options.
    pub fn attach(lab: &'lab Lab) -> Self {
        Self::attach_with(lab, &[])
    }

    /// Attaches with `extra` arguments (e.g. `["--port-range", "40000-40009"]`);
    /// panics with bpfmasq's output when that fails.
    pub fn attach_with(lab: &'lab Lab, extra: &[&str]) -> Self {
        let out = try_attach(lab, extra);
        // Guard first: a failed attach may still have left something to detach.
        let guard = Self {
            lab,
            attached: true,
        };
        assert!(
            out.status.success(),
            "`bpfmasq {}` failed: {}",
            attach_args(lab, extra).join(" "),
            describe(&out)
        );
        guard
    }

    /// The guard for a datapath attached some other way (e.g. `attach
    /// --takeover`, whose output the caller reads): detached when dropped.
    pub fn adopt(lab: &'lab Lab) -> Self {
        Self {
            lab,
            attached: true,
        }
    }

    /// Drops the guard without detaching: the datapath was detached some
    /// other way (e.g. `detach --handback`).
    pub fn forget(mut self) {
        self.attached = false;
    }

    /// The datapath counter `name` now (`bpfmasq stats`); panics if there is
    /// no such counter.
    pub fn counter(&self, name: &str) -> u64 {
        counter(&self.stats(), name).unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Asserts that counter `name` reached `at_least`, showing the datapath
    /// otherwise.
    pub fn assert_counter_at_least(&self, name: &str, at_least: u64) {
        let value = self.counter(name);
        assert!(
            value >= at_least,
            "counter {name} is {value}, expected at least {at_least}\n{}",
            self.diagnostics()
        );
    }

    /// Detaches now, asserting success; returns `detach`'s output.
    pub fn detach(mut self) -> Output {
        self.attached = false;
        let out = bpfmasq(self.detach_args());
        assert!(
            out.status.success(),
            "`bpfmasq {}` failed: {}",
            self.detach_args().join(" "),
            describe(&out)
        );
        out
    }

    fn detach_args(&self) -> Vec<String> {
        ["--netns", &self.lab.host_ns(), "detach", "--uplink", UPLINK]
            .map(String::from)
            .to_vec()
    }

    /// `stats --json`, parsed; panics if the command fails or prints no JSON.
    pub fn stats(&self) -> Value {
        self.json(&["stats", "--json"])
    }

    /// `conntrack list --json`, parsed; panics if the command fails or prints no JSON.
    pub fn conntrack(&self) -> Value {
        self.json(&["conntrack", "list", "--json"])
    }

    fn json(&self, verb: &[&str]) -> Value {
        host_json(self.lab, verb)
    }

    /// The datapath's counters and flows as text, for assertion messages; never panics.
    pub fn diagnostics(&self) -> String {
        let host = self.lab.host_ns();
        [
            ["stats", "--json"].as_slice(),
            ["conntrack", "list", "--json"].as_slice(),
        ]
        .iter()
        .map(|verb| {
            let mut args = vec!["--netns", &host];
            args.extend_from_slice(verb);
            let shown = args.join(" ");
            match try_bpfmasq(&args) {
                Ok(out) => format!("`bpfmasq {shown}`: {}", describe(&out)),
                Err(e) => format!("`bpfmasq {shown}`: {e}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for Datapath<'_> {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        match try_bpfmasq(self.detach_args()) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "`bpfmasq {}` failed: {}",
                self.detach_args().join(" "),
                describe(&out)
            ),
            Err(e) => eprintln!("`bpfmasq {}`: {e}", self.detach_args().join(" ")),
        }
    }
}

/// The sum of every number recorded for the counter `name`, anywhere in
/// `value`: under a key called `name`, or in an object whose `"name"` is
/// `name` and whose `"value"` (or `"count"`) is a number. The JSON shapes are
/// not final; the counter names are. `None` if no number is found.
pub fn counter(value: &Value, name: &str) -> Option<u64> {
    match value {
        Value::Object(map) => {
            let named = (map.get("name").and_then(Value::as_str) == Some(name))
                .then(|| {
                    map.get("value")
                        .or_else(|| map.get("count"))
                        .and_then(Value::as_u64)
                })
                .flatten();
            let own = map.get(name).and_then(Value::as_u64).or(named);
            let nested = map
                .iter()
                .filter(|(key, _)| key.as_str() != name)
                .filter_map(|(_, v)| counter(v, name));
            own.into_iter().chain(nested).reduce(|a, b| a + b)
        }
        Value::Array(items) => items
            .iter()
            .filter_map(|v| counter(v, name))
            .reduce(|a, b| a + b),
        _ => None,
    }
}

/// `bpfmasq --netns NAME-host VERB...`, parsed as JSON; panics if the command
/// fails or prints no JSON.
pub fn host_json(lab: &Lab, verb: &[&str]) -> Value {
    let mut args = vec!["--netns".to_owned(), lab.host_ns()];
    args.extend(verb.iter().map(|s| s.to_string()));
    let out = bpfmasq(&args);
    assert!(
        out.status.success(),
        "`bpfmasq {}` failed: {}",
        args.join(" "),
        describe(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`bpfmasq {}` printed no valid JSON ({e}): {}",
            args.join(" "),
            describe(&out)
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::counter;

    #[test]
    fn counters_are_found_at_any_depth() {
        let stats =
            json!({"translated_out": 3, "per_cpu": [{"translated_out": 2}], "drop_no_port": 0});
        assert_eq!(counter(&stats, "translated_out"), Some(5));
        assert_eq!(counter(&stats, "drop_no_port"), Some(0));
        assert_eq!(counter(&stats, "translated_in"), None);
        let list = json!([{"name": "translated_in", "value": 1}]);
        assert_eq!(counter(&list, "translated_in"), Some(1));
        assert_eq!(counter(&list, "translated_out"), None);
    }
}
