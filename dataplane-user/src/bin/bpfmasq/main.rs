//! The `bpfmasq` binary: parses the command line (`cli`), enters `--netns`,
//! and dispatches to the library with its own option types.

mod cli;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use bpfmasq::{
    cni_config,
    daemon::{self, RunOptions},
    datapath::{
        self,
        options::{AttachOptions, KnownContainer},
        verifier::Rejection,
    },
    inspect, lab,
    netns::NetNs,
};
use clap::Parser as _;
use cli::{Cli, CniConfigCommand, Command, ConntrackCommand, LabCommand};

fn main() -> ExitCode {
    // Like any Unix filter: `bpfmasq conntrack list | head` ends quietly.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let verbose = cli.verbose;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfmasq: {e:#}");
            if let Some(rejection) = e.downcast_ref::<Rejection>()
                && verbose
            {
                eprintln!("{}", rejection.log);
            }
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap renders them; a usage error becomes one
/// line (clap's message without its blank lines and usage footer), exit 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    eprintln!(
        "bpfmasq: {} (see --help)",
        message.trim_start_matches("error: ")
    );
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<ExitCode> {
    // setns only moves the calling thread, and threads inherit it: enter the
    // namespace before the runtime (or anything else) starts a thread.
    if let Some(name) = &cli.netns {
        NetNs::open(name)?.enter()?;
    }
    if let Command::Lab(LabCommand::Exec(args)) = &cli.command {
        return lab::exec(&args.lab.name, &args.node, &args.command);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dispatch(cli))?;
    Ok(ExitCode::SUCCESS)
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Lab(LabCommand::Up(args)) => {
            let spec = lab::LabSpec {
                containers: args.containers,
                far_peer: args.far_peer,
            };
            lab::up_with(&args.lab.name, spec).await
        }
        Command::Lab(LabCommand::Down(args)) => lab::down(&args.name).await,
        Command::Lab(LabCommand::Status(args)) => lab::status(&args.lab.name, args.json).await,
        Command::Lab(LabCommand::Exec(_)) => unreachable!("handled before the runtime starts"),
        Command::Attach(args) => {
            let mut options: AttachOptions = args.into();
            options.known_containers = lab_containers(cli.netns.as_deref())?;
            datapath::attach(cli.netns.as_deref(), &options).await
        }
        Command::Detach(args) => {
            datapath::detach(cli.netns.as_deref(), args.uplink.as_deref(), args.handback).await
        }
        Command::Conntrack(verb) => {
            let netns = cli.netns.as_deref();
            match verb {
                ConntrackCommand::List(a) => {
                    inspect::conntrack_list(netns, &a.instance.into(), &a.filter.into())
                }
                ConntrackCommand::Count(a) => {
                    inspect::conntrack_count(netns, &a.instance.into(), &a.filter.into())
                }
                ConntrackCommand::Flush(a) => {
                    inspect::conntrack_flush(netns, &a.instance.into(), &a.filter.into())
                }
            }
        }
        Command::Stats(args) => {
            inspect::stats(cli.netns.as_deref(), &args.instance.into(), args.watch).await
        }
        Command::Containers(args) => inspect::containers(cli.netns.as_deref(), &args.into()),
        Command::Status(args) => inspect::status(cli.netns.as_deref(), &args.into()),
        Command::Gc(args) => daemon::gc_once(cli.netns.as_deref(), &args.into()),
        Command::Run(args) => {
            let mut options: RunOptions = args.into();
            options.attach.known_containers = lab_containers(cli.netns.as_deref())?;
            daemon::run(cli.netns.as_deref(), &options).await
        }
        Command::Trace(args) => {
            let options = (&args).into();
            inspect::trace(cli.netns.as_deref(), &args.instance.into(), &options).await
        }
        Command::Probe(args) => inspect::probe(args.json),
        Command::CniConfig(CniConfigCommand::Install(args)) => {
            cni_config::install(&args.paths.into(), &args.plugin)
        }
        Command::CniConfig(CniConfigCommand::Remove(args)) => cni_config::remove(&args.into()),
        Command::MountBpffs => datapath::bpffs::ensure_mounted(),
    }
}

/// A lab's containers, when `--netns` is a lab's host: `attach` and `run`
/// record them, so their sources are checked as a CNI runtime's would be.
fn lab_containers(netns: Option<&str>) -> Result<Vec<KnownContainer>> {
    netns.map_or(Ok(Vec::new()), lab::containers_of_host)
}
