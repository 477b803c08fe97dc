//! CNI errors: what a verb returns when it fails, printed by the plugin as
//! the spec's error JSON (`cniVersion`, `code`, `msg`, `details`) on stdout
//! with a non-zero exit. Codes below 100 are the spec's; 100 and up are
//! bpfmasq's own (listed in the README's container-host section).

use std::fmt;

use serde::Serialize;

/// A CNI error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Code(pub u32);

impl Code {
    /// The configuration's `cniVersion` is not one bpfmasq speaks.
    pub const INCOMPATIBLE_VERSION: Self = Self(1);
    /// A required `CNI_*` variable is missing or malformed.
    pub const INVALID_ENV: Self = Self(4);
    /// The configuration on stdin is not JSON of the expected shape.
    pub const DECODE: Self = Self(6);
    /// A configuration value is wrong (unknown uplink, malformed CIDR...).
    pub const INVALID_CONFIG: Self = Self(7);
    /// STATUS: the datapath cannot serve new containers.
    pub const NOT_AVAILABLE: Self = Self(50);
    /// Loading or attaching the datapath failed.
    pub const ATTACH_FAILED: Self = Self(100);
    /// CHECK: no datapath is attached for this network's uplink.
    pub const NOT_ATTACHED: Self = Self(101);
    /// CHECK: the container has no record (it was never added, or forgotten).
    pub const NO_RECORD: Self = Self(102);
    /// Reading or writing the pinned state (container records, flows) failed.
    pub const STATE: Self = Self(103);
    /// The uplink already serves another bridge (one bridge per uplink).
    pub const UPLINK_BUSY: Self = Self(104);
}

/// A failed verb: the spec's error object.
#[derive(Debug, Serialize)]
pub struct CniError {
    pub code: Code,
    /// One line saying what failed.
    pub msg: String,
    /// The underlying cause, when there is one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// `msg`, with an error's whole chain as the details.
    pub fn caused(code: Code, msg: impl Into<String>, cause: &anyhow::Error) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: format!("{cause:#}"),
        }
    }

    /// The spec's error JSON for a configuration of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code.0)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Turns any error into a [`CniError`] with `code` and a leading message.
pub trait OrCni<T> {
    fn or_cni(self, code: Code, msg: &str) -> Result<T, CniError>;
}

impl<T> OrCni<T> for anyhow::Result<T> {
    fn or_cni(self, code: Code, msg: &str) -> Result<T, CniError> {
        self.map_err(|e| CniError::caused(code, msg, &e))
    }
}
