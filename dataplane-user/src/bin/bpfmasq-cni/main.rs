//! `bpfmasq-cni`: the CNI plugin binary. Reads `CNI_COMMAND` and the
//! configuration on stdin, runs the verb (the library's [`bpfmasq::cni`]),
//! prints its result or the spec's error JSON on stdout; exit 1 on error.

use std::{io::Read as _, process::ExitCode};

use bpfmasq::cni::{self, CniError, Code, Command};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = read(&mut stdin).and_then(|command| run(command, &stdin));
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{}", error.to_json(&cni::answer_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}

/// The verb and the configuration; nothing else is read from outside.
fn read(stdin: &mut Vec<u8>) -> Result<Command, CniError> {
    let command = std::env::var("CNI_COMMAND").map_err(|_| {
        CniError::new(
            Code::INVALID_ENV,
            "CNI_COMMAND is not set: bpfmasq-cni is a CNI plugin, run by a container runtime from a conflist (README: On a container host)",
        )
    })?;
    let command = Command::parse(&command)?;
    if command != Command::Version || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        std::io::stdin()
            .read_to_end(stdin)
            .map_err(|e| CniError::new(Code::DECODE, format!("reading stdin: {e}")))?;
    }
    Ok(command)
}

fn run(command: Command, stdin: &[u8]) -> Result<cni::Output, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::STATE, format!("starting the async runtime: {e}")))?;
    runtime.block_on(cni::invoke(command, stdin, |name| std::env::var(name).ok()))
}
