//! The bench's own lab (one container sends; the registered containers are
//! rules or map entries only), its servers in the outside namespace, its
//! scratch folder, and the route the `routed` variant adds. Everything is
//! removed when [`BenchLab`] drops: servers killed, lab down, folder gone.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::runtime::Handle;

use super::proc::{NsCommand, Proto, Server, wait_bound};
use bpfmasq::{
    lab::{self, HOST_UPLINK_ADDR, Node, OUTSIDE_ADDR, POD_SUBNET, ns_name},
    netlink::{Netlink, Route},
    netns::NetNs,
};

pub const HTTP_PORT: u16 = 80;
pub const IPERF_PORT: u16 = 5201;
pub const SOCKPERF_UDP_PORT: u16 = 11111;
pub const SOCKPERF_TCP_PORT: u16 = 11112;
/// How long a server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(10);

/// Which CPU the client side and the server side are pinned to.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Cpus {
    pub client: usize,
    pub server: usize,
}

/// A lab built for one bench run.
pub struct BenchLab {
    pub name: String,
    pub host: NetNs,
    pub out: NetNs,
    /// The container traffic comes from (`c1`, 10.85.0.2).
    pub client: NetNs,
    pub cpus: Cpus,
    pub scratch: Scratch,
    runtime: Handle,
    servers: Vec<Server>,
    iperf: Option<Server>,
}

impl BenchLab {
    /// `lab up --containers 1` under `name`; removed again if anything
    /// after that fails.
    pub fn up(name: &str, cpus: Cpus, runtime: Handle, scratch: Scratch) -> Result<Self> {
        runtime.block_on(lab::up(name, 1))?;
        let guard = DownOnDrop {
            name: name.to_owned(),
            runtime: runtime.clone(),
            armed: true,
        };
        let open = |node| NetNs::open(&ns_name(name, node));
        let lab = Self {
            name: name.to_owned(),
            host: open(Node::Host)?,
            out: open(Node::Out)?,
            client: open(Node::Container(1))?,
            cpus,
            scratch,
            runtime,
            servers: Vec::new(),
            iperf: None,
        };
        guard.disarm();
        Ok(lab)
    }

    /// Starts nginx, the sockperf servers and iperf3 in the outside
    /// namespace, pinned to the server CPU, and waits until they listen.
    pub fn start_servers(&mut self) -> Result<()> {
        let conf = self.scratch.path().join("nginx.conf");
        fs::write(&conf, nginx_conf(self.scratch.path()))
            .with_context(|| format!("writing {}", conf.display()))?;
        let conf = conf.to_string_lossy().into_owned();
        let error_log = self.scratch.path().join("nginx-error.log");
        let error_log = error_log.to_string_lossy().into_owned();
        let cpu = Some(self.cpus.server);
        let outside = OUTSIDE_ADDR.to_string();
        let nginx = NsCommand::new(&self.out, cpu, "nginx", &["-c", &conf, "-e", &error_log])
            .spawn_server(&self.scratch.path().join("nginx.log"))?;
        self.servers.push(nginx);
        for (port, tcp) in [(SOCKPERF_UDP_PORT, false), (SOCKPERF_TCP_PORT, true)] {
            let port_s = port.to_string();
            let mut args = vec!["sr", "-i", outside.as_str(), "-p", port_s.as_str()];
            if tcp {
                args.push("--tcp");
            }
            let log = self.scratch.path().join(format!("sockperf-{port}.log"));
            self.servers
                .push(NsCommand::new(&self.out, cpu, "sockperf", &args).spawn_server(&log)?);
        }
        self.start_iperf()?;
        wait_bound(&self.out, Proto::Tcp, HTTP_PORT, SERVER_START)?;
        wait_bound(&self.out, Proto::Udp, SOCKPERF_UDP_PORT, SERVER_START)?;
        wait_bound(&self.out, Proto::Tcp, SOCKPERF_TCP_PORT, SERVER_START)?;
        self.check_servers()
    }

    fn start_iperf(&mut self) -> Result<()> {
        let outside = OUTSIDE_ADDR.to_string();
        let port = IPERF_PORT.to_string();
        let log = self.scratch.path().join("iperf3.log");
        self.iperf = None;
        let server = NsCommand::new(
            &self.out,
            Some(self.cpus.server),
            "iperf3",
            &["-s", "-B", outside.as_str(), "-p", port.as_str()],
        )
        .spawn_server(&log)?;
        self.iperf = Some(server);
        wait_bound(&self.out, Proto::Tcp, IPERF_PORT, SERVER_START)
    }

    /// A fresh iperf3 server, after a failed test may have left it stuck.
    pub fn restart_iperf(&mut self) -> Result<()> {
        self.start_iperf()
    }

    /// Fails if a server died.
    pub fn check_servers(&mut self) -> Result<()> {
        for server in self.servers.iter_mut().chain(self.iperf.as_mut()) {
            server.check_alive()?;
        }
        Ok(())
    }

    /// The command lines of the servers, for the JSON record.
    pub fn server_commands(&self) -> Vec<String> {
        self.servers
            .iter()
            .chain(self.iperf.as_ref())
            .map(|s| s.shown().to_owned())
            .collect()
    }

    /// The `routed` variant's route: the outside peer reaches the pod
    /// network through the host, no NAT needed.
    pub fn add_return_route(&self) -> Result<()> {
        self.runtime.block_on(async {
            Netlink::connect_in(&self.out)?
                .add_route(return_route())
                .await
        })
    }

    pub fn delete_return_route(&self) -> Result<()> {
        self.runtime.block_on(async {
            Netlink::connect_in(&self.out)?
                .delete_route(return_route())
                .await
        })
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        self.iperf = None;
        self.servers.clear();
        if let Err(e) = self.runtime.block_on(lab::down(&self.name)) {
            eprintln!("bpfmasq-bench: removing lab `{}`: {e:#}", self.name);
        }
    }
}

/// Runs `lab down` unless disarmed (a lab whose handles could not be opened).
struct DownOnDrop {
    name: String,
    runtime: Handle,
    armed: bool,
}

impl DownOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.runtime.block_on(lab::down(&self.name));
        }
    }
}

fn return_route() -> Route {
    Route {
        destination: Some(POD_SUBNET),
        gateway: HOST_UPLINK_ADDR,
        advmss: None,
    }
}

/// A minimal nginx: one worker, no logging, a 3-byte answer to everything.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log crit;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen {OUTSIDE_ADDR}:{HTTP_PORT} backlog=4096;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

/// A private folder for generated files and logs, removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
