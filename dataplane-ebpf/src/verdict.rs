//! The one return convention of every program: each stage returns
//! `Result<Verdict, Drop>`. `Ok` says what becomes of the packet and names
//! the counter that says why; `Err` is a drop carrying its counter. So
//! every `?` in a stage is a counted drop by construction: a pod's packet
//! that cannot be translated never leaves with its pod source, because no
//! branch can forget to drop it.
//!
//! A packet's verdict is counted once, by [`finish`], at the end of its
//! program; events that are not a verdict (a port skipped, a flow created)
//! are counted where they happen. While a trace runs, the same counter is
//! what the trace reports ([`finish_then`], `crate::trace`).
//!
//! A packet that goes on returns `TC_ACT_UNSPEC` (tcx's `TCX_NEXT`, the
//! same number): the hook's next program (tcx) or filter (clsact) still
//! sees it, where `TC_ACT_OK` would end the chain for everything attached
//! after bpfmasq. With nothing after it the packet simply goes on.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use dataplane_common::{counters::Counter, trace};

use crate::{conntrack::FlowError, counters::count, rewrite::RewriteError};

/// What becomes of a packet the datapath keeps going.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Left to the host stack, untouched.
    Pass(Counter),
    /// Rewritten by the NAT and passed on; only such a packet may be
    /// forwarded by the datapath itself (the fast path).
    Translated(Counter),
    /// Consumed by the datapath: held, or sent on as clones. Not a drop.
    Taken(Counter),
    /// Forwarded by a redirect helper, whose action this is.
    Redirected(i32, Counter),
    /// Not this program's business (another host's frame on the bridge,
    /// the fast path off): passed on, and counted nowhere.
    Ignored,
}

/// A packet dropped, and the counter that says why.
#[derive(Clone, Copy)]
pub struct Drop(pub Counter);

/// What a stage did with the packet.
pub type Outcome = Result<Verdict, Drop>;

impl From<FlowError> for Drop {
    fn from(error: FlowError) -> Self {
        Drop(match error {
            FlowError::NoPort => Counter::DropNoPort,
            FlowError::TableFull => Counter::DropTableFull,
            FlowError::PodLimit => Counter::DropPodFlowLimit,
        })
    }
}

impl From<RewriteError> for Drop {
    /// A helper failed half-way: the packet may be half-rewritten, so it
    /// must not go on. Counted as egress's; [`finish`] moves it to the
    /// counter of the program it happened in.
    fn from(_: RewriteError) -> Self {
        Drop(Counter::DropRewriteEgress)
    }
}

/// The program a packet is in: counters shared by several programs are
/// kept apart by it. The values are `dataplane_common::trace`'s program
/// numbers.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Program {
    UplinkEgress = trace::PROGRAM_UPLINK_EGRESS,
    UplinkIngress = trace::PROGRAM_UPLINK_INGRESS,
    BridgeIngress = trace::PROGRAM_BRIDGE_INGRESS,
    PodPortIngress = trace::PROGRAM_POD_PORT_INGRESS,
}

/// Counts the outcome (once) and turns it into the TC action.
#[inline(always)]
pub fn finish(program: Program, outcome: Outcome) -> i32 {
    finish_then(program, outcome, |_, _| {})
}

/// Like [`finish`], then hands the counter and the action to `then` (a
/// trace's report); `Ignored` packets are neither counted nor handed on.
#[inline(always)]
pub fn finish_then(program: Program, outcome: Outcome, then: impl FnOnce(Counter, i32)) -> i32 {
    let (action, counter) = match outcome {
        Ok(Verdict::Pass(counter) | Verdict::Translated(counter)) => (TC_ACT_UNSPEC, counter),
        Ok(Verdict::Taken(counter)) => (TC_ACT_SHOT, counter),
        Ok(Verdict::Redirected(action, counter)) => (action, counter),
        Ok(Verdict::Ignored) => return TC_ACT_UNSPEC,
        Err(Drop(counter)) => (TC_ACT_SHOT, counter),
    };
    let counter = keyed(program, counter);
    count(counter);
    then(counter, action);
    action
}

/// `counter`, told apart by program where several programs count it.
#[inline(always)]
fn keyed(program: Program, counter: Counter) -> Counter {
    match (counter, program) {
        (Counter::DropRewriteEgress, Program::UplinkIngress) => Counter::DropRewriteIngress,
        (Counter::DropRewriteEgress, Program::BridgeIngress) => Counter::DropRewriteBridge,
        _ => counter,
    }
}
