//! What a runtime hands the plugin (CNI spec 1.1): the `CNI_*` environment,
//! the network configuration on stdin with bpfmasq's keys and the previous
//! plugin's result, and the versions bpfmasq speaks.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::error::{CniError, Code};
use crate::datapath::options::PortRange;

/// The spec versions bpfmasq accepts: podman 4's default network pins
/// 0.4.0 (the first with CHECK); GC and STATUS came with 1.1.0.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The version VERSION reports and errors use when the configuration gave none.
pub const CURRENT_VERSION: &str = "1.1.0";

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        Ok(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::new(
                    Code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND `{other}` is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                ));
            }
        })
    }
}

/// The container a verb is about (ADD, DEL, CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: String,
}

/// Reads the container's identity from the environment (`var` looks a
/// variable up, so tests need not touch the process environment).
pub fn attachment(var: impl Fn(&str) -> Option<String>) -> Result<Attachment, CniError> {
    let required = |name: &str| {
        var(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CniError::new(Code::INVALID_ENV, format!("{name} is not set")))
    };
    Ok(Attachment {
        container_id: required("CNI_CONTAINERID")?,
        ifname: required("CNI_IFNAME")?,
    })
}

/// The network configuration bpfmasq reads from stdin (the spec's keys,
/// bpfmasq's own and the runtime-supplied ones it uses; others are ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// Interface traffic leaves through (default: the default route's).
    pub uplink: Option<String>,
    /// Address to masquerade to (default: the uplink's primary IPv4 address).
    pub nat_address: Option<String>,
    /// Destinations never masqueraded, besides the pod network and multicast.
    #[serde(default)]
    pub no_masq: Vec<String>,
    /// `LO-HI`: ports translated flows may use.
    pub port_range: Option<String>,
    /// Forward in eBPF past the host's stack (default: on).
    pub fast_path: Option<bool>,
    /// Maximum number of tracked flows.
    pub ct_max: Option<u32>,
    /// Maximum number of flows one pod address may hold (default: no limit).
    pub ct_max_per_pod: Option<u32>,
    /// The previous plugin's result (ADD, CHECK; DEL may have it).
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments the runtime still knows; everything else goes.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// bpfmasq's keys, checked: what the datapath is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginOptions {
    pub uplink: Option<String>,
    pub nat_address: Option<Ipv4Addr>,
    pub no_masq: Vec<Ipv4Net>,
    pub port_range: Option<PortRange>,
    pub fast_path: bool,
    pub ct_max: u32,
    pub ct_max_per_pod: u32,
}

/// `ctMax` when the configuration gives none (as `bpfmasq attach`).
pub const DEFAULT_CT_MAX: u32 = 262_144;

impl NetConf {
    /// Parses stdin; an unsupported `cniVersion` is code 1.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DECODE,
                format!("the network configuration is not valid JSON for bpfmasq-cni: {e}"),
            )
        })?;
        check_version(&conf.cni_version)?;
        Ok(conf)
    }

    /// bpfmasq's keys, validated (code 7 on a bad one).
    pub fn options(&self) -> Result<PluginOptions, CniError> {
        let invalid = |msg: String| CniError::new(Code::INVALID_CONFIG, msg);
        let nat_address = self
            .nat_address
            .as_deref()
            .map(|a| {
                a.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(format!("natAddress `{a}` is not an IPv4 address")))
            })
            .transpose()?;
        let no_masq = self
            .no_masq
            .iter()
            .map(|c| {
                c.parse::<Ipv4Net>().map_err(|_| {
                    invalid(format!(
                        "noMasq entry `{c}` is not an IPv4 CIDR (e.g. 10.0.0.0/8)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let port_range = self
            .port_range
            .as_deref()
            .map(|r| {
                r.parse::<PortRange>()
                    .map_err(|e| invalid(format!("portRange: {e}")))
            })
            .transpose()?;
        let ct_max = self.ct_max.unwrap_or(DEFAULT_CT_MAX);
        if !(16..=16_777_216).contains(&ct_max) {
            return Err(invalid(format!("ctMax {ct_max} is outside 16-16777216")));
        }
        if let Some(uplink) = &self.uplink
            && (uplink.is_empty() || uplink.len() >= 16)
        {
            return Err(invalid(format!(
                "uplink `{uplink}` is not an interface name"
            )));
        }
        Ok(PluginOptions {
            uplink: self.uplink.clone(),
            nat_address,
            no_masq,
            port_range,
            fast_path: self.fast_path.unwrap_or(true),
            ct_max,
            ct_max_per_pod: self.ct_max_per_pod.unwrap_or(0),
        })
    }

    /// The previous result, parsed; `None` when absent or null.
    pub fn prev_result(&self) -> Result<Option<PrevResult>, CniError> {
        match &self.prev_result {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| {
                    CniError::new(Code::DECODE, format!("prevResult is not a CNI result: {e}"))
                }),
        }
    }
}

/// Code 1 unless `version` is one bpfmasq speaks.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(CniError::new(
        Code::INCOMPATIBLE_VERSION,
        format!(
            "cniVersion `{version}` is not supported; bpfmasq-cni speaks {}",
            SUPPORTED_VERSIONS.join(", ")
        ),
    ))
}

/// VERSION's answer.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The parts of a CNI result (0.4.0 and 1.x share them) bpfmasq reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Interface {
    pub name: String,
    /// The container's netns path; empty or absent for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl Interface {
    pub fn on_host(&self) -> bool {
        self.sandbox.as_deref().is_none_or(str::is_empty)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IpConfig {
    /// `ADDR/PREFIX`, IPv4 or IPv6.
    pub address: String,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

impl PrevResult {
    /// IPv4 addresses (with their subnet) on the container's `ifname`.
    pub fn container_ipv4(&self, ifname: &str) -> Vec<Ipv4Net> {
        self.ips
            .iter()
            .filter(|ip| {
                ip.interface.is_none_or(|i| {
                    self.interfaces
                        .get(i)
                        .is_some_and(|iface| iface.name == ifname && !iface.on_host())
                })
            })
            .filter_map(|ip| ip.address.parse::<Ipv4Net>().ok())
            .collect()
    }

    /// Names of the host-side interfaces (no sandbox): the bridge and the
    /// container's host veth, in the result's order.
    pub fn host_interfaces(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .filter(|i| i.on_host())
            .map(|i| i.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN_PREV: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni-podman0", "mac": "aa:bb:cc:dd:ee:ff"},
            {"name": "veth12345678", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/netns-1"}
        ],
        "ips": [
            {"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
            {"version": "6", "interface": 2, "address": "fd00::5/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        NetConf::parse(
            format!(r#"{{"cniVersion": "1.0.0", "name": "n", "type": "bpfmasq-cni"{extra}}}"#)
                .as_bytes(),
        )
    }

    #[test]
    fn accepts_the_versions_from_0_4_0_to_1_1_0() {
        for v in SUPPORTED_VERSIONS {
            check_version(v).unwrap();
        }
        for v in ["0.3.1", "0.2.0", "2.0.0", ""] {
            assert_eq!(
                check_version(v).unwrap_err().code,
                Code::INCOMPATIBLE_VERSION
            );
        }
        let e = NetConf::parse(br#"{"cniVersion": "0.3.1", "name": "n"}"#).unwrap_err();
        assert_eq!(e.code, Code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn version_lists_what_it_supports() {
        let info = version_info();
        assert_eq!(info["cniVersion"], "1.1.0");
        assert_eq!(info["supportedVersions"][0], "0.4.0");
    }

    #[test]
    fn parses_bpfmasq_keys_with_defaults() {
        let o = conf("").unwrap().options().unwrap();
        assert_eq!(o.uplink, None);
        assert!(o.fast_path);
        assert_eq!(o.ct_max, DEFAULT_CT_MAX);
        let o = conf(
            r#", "uplink": "eth1", "natAddress": "192.0.2.1", "noMasq": ["10.0.0.0/8"],
               "portRange": "40000-50000", "fastPath": false, "ctMax": 1000"#,
        )
        .unwrap()
        .options()
        .unwrap();
        assert_eq!(o.uplink.as_deref(), Some("eth1"));
        assert_eq!(o.nat_address, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(o.no_masq, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            o.port_range,
            Some(PortRange {
                min: 40000,
                max: 50000
            })
        );
        assert!(!o.fast_path);
        assert_eq!(o.ct_max, 1000);
    }

    #[test]
    fn refuses_bad_values_as_invalid_config() {
        for bad in [
            r#", "noMasq": ["10.0.0.0/33"]"#,
            r#", "noMasq": ["banana"]"#,
            r#", "natAddress": "1.2.3""#,
            r#", "portRange": "9-1""#,
            r#", "ctMax": 1"#,
            r#", "uplink": "an-interface-name-too-long""#,
        ] {
            let e = conf(bad).unwrap().options().unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{bad}");
        }
        assert_eq!(conf(r#", "noMasq": 5"#).unwrap_err().code, Code::DECODE);
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, Code::DECODE);
    }

    #[test]
    fn reads_the_container_address_and_host_interfaces_from_prev_result() {
        let conf = conf(&format!(r#", "prevResult": {PODMAN_PREV}"#)).unwrap();
        let prev = conf.prev_result().unwrap().unwrap();
        assert_eq!(
            prev.container_ipv4("eth0"),
            vec!["10.88.0.5/16".parse::<Ipv4Net>().unwrap()]
        );
        assert!(prev.container_ipv4("eth1").is_empty());
        assert_eq!(prev.host_interfaces(), vec!["cni-podman0", "veth12345678"]);
    }

    #[test]
    fn a_missing_or_null_prev_result_is_none() {
        assert!(conf("").unwrap().prev_result().unwrap().is_none());
        assert!(
            conf(r#", "prevResult": null"#)
                .unwrap()
                .prev_result()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn reads_valid_attachments_and_the_environment() {
        let conf =
            conf(r#", "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]"#)
                .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }]
        );
        let env = |k: &str| match k {
            "CNI_CONTAINERID" => Some("abc".to_owned()),
            "CNI_IFNAME" => Some("eth0".to_owned()),
            _ => None,
        };
        assert_eq!(attachment(env).unwrap().ifname, "eth0");
        let e = attachment(|_| None).unwrap_err();
        assert_eq!(e.code, Code::INVALID_ENV);
        assert_eq!(Command::parse("BOGUS").unwrap_err().code, Code::INVALID_ENV);
    }
}
