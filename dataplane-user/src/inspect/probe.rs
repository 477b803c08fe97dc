//! `bpfmasq probe`: what the running kernel offers bpfmasq. The features it
//! probes (and what bpfmasq does without each), the attach mode and fast
//! path `attach` would get, and each program loaded for real: what the
//! verifier spent on it, or why it refused it. Nothing is attached.

use std::{fs, path::PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::{
    datapath::{
        bpffs,
        instance::PIN_ROOT,
        kernel::{Feature, Kernel},
        loader,
    },
    privileges::{require_datapath_capabilities, require_root},
};

#[derive(Debug, Serialize)]
struct Program {
    name: &'static str,
    loaded: bool,
    instructions_processed: Option<u32>,
    load_time_us: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    attach_mode: &'static str,
    fast_path: bool,
    /// Why the fast path cannot run here.
    fast_path_unavailable: Option<String>,
    features: Vec<Feature>,
    programs: Vec<Program>,
}

/// A throwaway pin folder for the probe's maps, removed on drop.
struct ScratchPins(PathBuf);

impl Drop for ScratchPins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn probe(json: bool) -> Result<()> {
    require_root("bpfmasq probe")?;
    require_datapath_capabilities("bpfmasq probe")?;
    let kernel = Kernel::probe();
    bpffs::ensure_mounted()?;
    // Beside bpfmasq's own folder, where no instance is looked for (and
    // bpffs allows no dots in names).
    let scratch = ScratchPins(PathBuf::from(format!(
        "{PIN_ROOT}-probe-{}",
        std::process::id()
    )));
    fs::create_dir_all(&scratch.0)?;
    let loads = loader::verify_all(&scratch.0, &kernel)?;
    drop(scratch);
    let programs = loader::PROGRAMS
        .into_iter()
        .zip(loads)
        .map(|(name, load)| match load {
            Ok(budget) => Program {
                name,
                loaded: true,
                instructions_processed: budget.instructions_processed,
                load_time_us: Some(budget.load_time.as_micros() as u64),
                error: None,
            },
            Err(e) => Program {
                name,
                loaded: false,
                instructions_processed: None,
                load_time_us: None,
                error: Some(format!("{e:#}")),
            },
        })
        .collect();
    let report = Report {
        kernel: kernel.release.clone(),
        attach_mode: kernel.attach_mode(),
        fast_path_unavailable: kernel.fast_path_unavailable(),
        fast_path: kernel.fast_path_unavailable().is_none(),
        features: kernel.features,
        programs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(report: &Report) {
    println!("kernel       {}", report.kernel);
    println!("attach mode  {}", report.attach_mode);
    match &report.fast_path_unavailable {
        None => println!("fast path    available"),
        Some(reason) => println!("fast path    unavailable: {reason}"),
    }
    println!("features");
    for feature in &report.features {
        let state = if feature.available {
            "yes".to_owned()
        } else {
            format!("no ({})", feature.without.describe())
        };
        println!("  {:<40} {state}", feature.name);
    }
    println!("programs (verifier: instructions processed, load time)");
    for program in &report.programs {
        match (&program.error, program.instructions_processed) {
            (Some(error), _) => println!("  {:<16} rejected: {error}", program.name),
            (None, insns) => println!(
                "  {:<16} {:>7} insns  {:>6.1} ms",
                program.name,
                insns.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                program.load_time_us.unwrap_or(0) as f64 / 1000.0
            ),
        }
    }
}
