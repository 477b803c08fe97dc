//! Forwarding the datapath's aya-log messages (rare events such as a full
//! conntrack table) to the daemon's stderr. The programs write them to a
//! ring buffer; the daemon drains it whenever its fd becomes readable.

use anyhow::{Context as _, Result};
use aya_log::EbpfLogger;
use std::io;

use tokio::io::{Interest, unix::AsyncFd};

/// Prints records as `bpfmasq run: datapath <level>: <message>`.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!(
            "bpfmasq run: datapath {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

pub struct DatapathLog {
    ring: AsyncFd<EbpfLogger<StderrLog>>,
}

impl DatapathLog {
    /// Opens the log ring of the loaded program `program_id` (both programs
    /// of one load share it).
    pub fn open(program_id: u32) -> Result<Self> {
        let logger = EbpfLogger::init_from_id_with_logger(program_id, StderrLog)
            .with_context(|| format!("opening the log ring of program {program_id}"))?;
        // SAFETY: the logger owns the ring buffer's fd; it stays open and the
        // same for as long as the AsyncFd owns the logger.
        let ring = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(io::Error::from)
            .context("watching the datapath's log ring")?;
        Ok(Self { ring })
    }

    /// Waits for messages and prints them.
    pub async fn forward(&mut self) -> Result<()> {
        let mut ready = self
            .ring
            .readable_mut()
            .await
            .context("waiting for datapath log messages")?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
        Ok(())
    }
}
