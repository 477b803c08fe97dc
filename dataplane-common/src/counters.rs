//! Datapath counters: one `u64` per reason in a per-CPU array. Each counter
//! also belongs to a [`Family`] (what kind of event it counts), and the rest
//! of its name tells it apart inside the family: the metrics endpoint of
//! `bpfmasq run` derives one Prometheus series per counter from this, so a
//! new counter is exported the moment it is declared (its family is part of
//! the declaration).

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $name:literal in $family:ident,)*) => {
        /// Index into the `COUNTERS` map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[$doc])* $variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            /// Stable name used by `bpfmasq stats` and its JSON.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
            /// The kind of event this counter counts.
            pub const fn family(self) -> Family {
                match self { $(Counter::$variant => Family::$family,)* }
            }
        }
    };
}

/// What kind of event a counter counts: several counters of one family
/// differ by one label (a drop's reason, a direction), the rest of their
/// name; a family without a label has exactly one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Whole packets (or first fragments) translated, by direction.
    TranslatedPackets,
    /// ICMP errors quoting a masqueraded packet, translated back.
    TranslatedIcmpErrors,
    /// Fragments after the first, translated (either direction).
    TranslatedFragments,
    /// Packets left to the host stack untouched, by reason.
    PassedPackets,
    /// Packets dropped, by reason.
    Drops,
    /// Packets the fast path forwarded, by direction.
    FastPathPackets,
    /// Packets the fast path declined, by reason.
    Fallbacks,
    /// Incoming fragments held, released or re-entered, by event.
    FragmentEvents,
    /// Flows created.
    FlowsCreated,
    /// Candidate ports skipped because a socket of the host uses them.
    PortsSkippedForHostSockets,
    /// Flows given up to a connection of the host on the same tuple.
    FlowsYieldedToHost,
    /// ICMP errors about a pod's flow leaving through the uplink, translated.
    TranslatedIcmpErrorsOut,
    /// TCP RST/FIN from outside, outside the pod's window: state kept.
    TcpOutOfWindow,
    /// Unreplied flows dropped to make room in a full table.
    FlowsEarlyDropped,
}

/// Where a family's label value sits in its counters' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affix {
    /// The name is `PREFIX` + value (`drop_no_port`: `no_port`).
    Prefix(&'static str),
    /// The name is value + `SUFFIX` (`parked_fragment`: `parked`).
    Suffix(&'static str),
}

/// A family's label: its key and where its value is in a counter's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub key: &'static str,
    pub affix: Affix,
}

impl Family {
    pub const ALL: &'static [Family] = &[
        Family::TranslatedPackets,
        Family::TranslatedIcmpErrors,
        Family::TranslatedFragments,
        Family::PassedPackets,
        Family::Drops,
        Family::FastPathPackets,
        Family::Fallbacks,
        Family::FragmentEvents,
        Family::FlowsCreated,
        Family::PortsSkippedForHostSockets,
        Family::FlowsYieldedToHost,
        Family::TranslatedIcmpErrorsOut,
        Family::TcpOutOfWindow,
        Family::FlowsEarlyDropped,
    ];

    /// The label telling this family's counters apart (`None`: one counter).
    pub const fn label(self) -> Option<Label> {
        let (key, affix) = match self {
            Family::TranslatedPackets => ("direction", Affix::Prefix("translated_")),
            Family::PassedPackets => ("reason", Affix::Prefix("passed_")),
            Family::Drops => ("reason", Affix::Prefix("drop_")),
            Family::FastPathPackets => ("direction", Affix::Prefix("fast_path_")),
            Family::Fallbacks => ("reason", Affix::Prefix("fallback_")),
            Family::FragmentEvents => ("event", Affix::Suffix("_fragment")),
            Family::TranslatedIcmpErrors
            | Family::TranslatedFragments
            | Family::FlowsCreated
            | Family::PortsSkippedForHostSockets
            | Family::FlowsYieldedToHost
            | Family::TranslatedIcmpErrorsOut
            | Family::TcpOutOfWindow
            | Family::FlowsEarlyDropped => return None,
        };
        Some(Label { key, affix })
    }

    /// The family's counters, in [`Counter::ALL`] order.
    pub fn counters(self) -> impl Iterator<Item = Counter> {
        Counter::ALL
            .iter()
            .copied()
            .filter(move |c| c.family() == self)
    }
}

counters! {
    /// Pod packet whose source was rewritten on the way out.
    TranslatedOut = "translated_out" in TranslatedPackets,
    /// Reply whose destination was rewritten back to a pod.
    TranslatedIn = "translated_in" in TranslatedPackets,
    /// Flows created (a port was claimed).
    FlowsCreated = "flows_created" in FlowsCreated,
    /// Pod packet to an excluded destination (pod CIDR, multicast, broadcast, --no-masq).
    PassedExcluded = "passed_excluded" in PassedPackets,
    /// Egress packet not from the pod network (the host's own traffic).
    PassedNotPod = "passed_not_pod" in PassedPackets,
    /// Ingress packet with no flow (for the host itself).
    PassedNoFlow = "passed_no_flow" in PassedPackets,
    /// Not IPv4 (IPv6, ARP, ...): not ours to translate.
    PassedNotIpv4 = "passed_not_ipv4" in PassedPackets,
    /// Dropped: no free port/identifier for a new flow.
    DropNoPort = "drop_no_port" in Drops,
    /// Dropped: the conntrack table is full.
    DropTableFull = "drop_table_full" in Drops,
    /// Dropped: a pod packet with a protocol or ICMP type we cannot translate.
    DropUnsupported = "drop_unsupported" in Drops,
    /// Dropped: a pod's fragment whose datagram cannot be tracked (fragment
    /// table full, or its IP ID towards that peer claimed by another pod).
    DropFragment = "drop_fragment" in Drops,
    /// Dropped: a pod packet with a truncated or malformed header.
    DropMalformed = "drop_malformed" in Drops,
    /// Dropped: the datapath has no configuration (never attached properly).
    DropNoConfig = "drop_no_config" in Drops,
    /// Dropped in uplink_egress: rewriting the packet failed (helper error).
    DropRewriteEgress = "drop_rewrite_egress" in Drops,
    /// ICMP error quoting a masqueraded packet, translated back to its pod.
    TranslatedIcmpError = "translated_icmp_error" in TranslatedIcmpErrors,
    /// Ingress packet with a truncated or malformed header: left to the host
    /// stack, which drops it; never translated.
    PassedMalformed = "passed_malformed" in PassedPackets,
    /// Dropped: an ingress packet whose source is inside the pod network
    /// (spoofed: pods are never reached through the uplink).
    DropSpoofedPodSource = "drop_spoofed_pod_source" in Drops,
    /// A fragment after the first of a tracked datagram, translated.
    TranslatedFragment = "translated_fragment" in TranslatedFragments,
    /// An ingress fragment that arrived before its datagram's first fragment:
    /// held until the first one says where it goes.
    ParkedFragment = "parked_fragment" in FragmentEvents,
    /// A held fragment sent on once its first fragment arrived.
    ReleasedFragment = "released_fragment" in FragmentEvents,
    /// A candidate port skipped because a socket of the host uses it.
    PortSkippedHostSocket = "port_skipped_host_socket" in PortsSkippedForHostSockets,
    /// A flow removed because a connection of the host itself took its
    /// tuple on the NAT address: the replies are the host's.
    FlowYieldedToHost = "flow_yielded_to_host" in FlowsYieldedToHost,
    /// Dropped: an ingress packet addressed straight to a pod from a source
    /// the pod network reaches only through the NAT (not a --no-masq one).
    DropUninvitedToPod = "drop_uninvited_to_pod" in Drops,
    /// Fast path: a pod packet forwarded from the bridge straight to the
    /// uplink, past the host's IP stack (its SNAT still counts as translated_out).
    FastPathOut = "fast_path_out" in FastPathPackets,
    /// Fast path: a translated reply delivered from the uplink straight to
    /// the bridge, past the host's IP stack.
    FastPathIn = "fast_path_in" in FastPathPackets,
    /// Fast path declined, the host stack forwards instead: the TTL expires
    /// here (the host sends the time-exceeded error).
    FallbackTtl = "fallback_ttl" in Fallbacks,
    /// Fast path declined: the IPv4 header carries options.
    FallbackIpOptions = "fallback_ip_options" in Fallbacks,
    /// Fast path declined: an IP fragment.
    FallbackFragment = "fallback_fragment" in Fallbacks,
    /// Fast path declined: a protocol or ICMP type the NAT does not translate.
    FallbackUnsupported = "fallback_unsupported" in Fallbacks,
    /// Fast path declined: a pod packet to a destination never masqueraded
    /// (the host, the pod network, multicast, broadcast, --no-masq).
    FallbackExcluded = "fallback_excluded" in Fallbacks,
    /// Fast path declined: the route lookup says the packet is for the host itself.
    FallbackLocal = "fallback_local" in Fallbacks,
    /// Fast path declined: no usable route (unreachable, blackhole, prohibited,
    /// forwarding disabled): the host answers with its ICMP error.
    FallbackNoRoute = "fallback_no_route" in Fallbacks,
    /// Fast path declined: the route leaves through another interface than
    /// the uplink (outgoing) or the bridge (replies).
    FallbackOtherInterface = "fallback_other_interface" in Fallbacks,
    /// Fast path declined: larger than the route's MTU: the host fragments it
    /// or sends "fragmentation needed".
    FallbackFragNeeded = "fallback_frag_needed" in Fallbacks,
    /// An incoming fragment that could not be held for its first fragment
    /// (16 held for its datagram, larger than 1500 bytes, tables full):
    /// left to the host, as without bpfmasq.
    PassedFragmentNotHeld = "passed_fragment_not_held" in PassedPackets,
    /// Dropped in uplink_ingress: rewriting the packet failed (helper error).
    DropRewriteIngress = "drop_rewrite_ingress" in Drops,
    /// Dropped in bridge_ingress: rewriting the packet for the fast path
    /// failed (helper error).
    DropRewriteBridge = "drop_rewrite_bridge" in Drops,
    /// A fragment the datapath translated and sent back into the uplink's
    /// ingress as a clone (a first fragment and the ones held for it), let
    /// through once, untouched.
    ReenteredFragment = "reentered_fragment" in FragmentEvents,
    /// An ICMP error about a pod's flow leaving through the uplink (the
    /// host's, or the pod's own), its quoted pod address and port turned
    /// into the NAT address and port.
    TranslatedIcmpErrorOut = "translated_icmp_error_out" in TranslatedIcmpErrorsOut,
    /// Dropped: an ICMP error leaving through the uplink that names a pod
    /// (as its source or quoted) but belongs to no flow: never leaked.
    DropIcmpErrorNoFlow = "drop_icmp_error_no_flow" in Drops,
    /// A TCP RST or FIN from outside whose sequence number lies outside the
    /// window the pod advertised: passed on to the pod (its stack judges
    /// it), the flow's state left as it was.
    TcpOutOfWindow = "tcp_out_of_window" in TcpOutOfWindow,
    /// Dropped: a pod's new flow past `--ct-max-per-pod`.
    DropPodFlowLimit = "drop_pod_flow_limit" in Drops,
    /// An unreplied flow removed to make room in a full table for a new
    /// one, as nf_conntrack's early drop does (never an answered flow).
    FlowsEarlyDropped = "flows_early_dropped" in FlowsEarlyDropped,
    /// Dropped on a pod's bridge port: the source is not an address
    /// recorded for that port (a pod sending as another).
    DropSpoofedSourceOnBridge = "drop_spoofed_source_on_bridge" in Drops,
    /// Fast path declined: a source or destination in a range whose
    /// forwarding the host's routing judges itself (0.0.0.0/8, 127.0.0.0/8,
    /// 224.0.0.0/4, 240.0.0.0/4: `dataplane_common::martian`); the host
    /// drops what it deems martian.
    FallbackMartian = "fallback_martian" in Fallbacks,
}

impl Counter {
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub fn is_drop(self) -> bool {
        self.family() == Family::Drops
    }

    /// The counter's label in its family, key and value (`drop_no_port`:
    /// `("reason", "no_port")`); `None` for a family of one counter.
    pub fn label(self) -> Option<(&'static str, &'static str)> {
        let label = self.family().label()?;
        let name = self.name();
        let value = match label.affix {
            Affix::Prefix(prefix) => name.strip_prefix(prefix),
            Affix::Suffix(suffix) => name.strip_suffix(suffix),
        };
        // A name without its family's affix is a declaration error the
        // unit tests catch; the whole name still tells it apart.
        Some((label.key, value.unwrap_or(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
        assert!(Counter::DropNoPort.is_drop());
        assert!(!Counter::TranslatedOut.is_drop());
    }

    #[test]
    fn every_counter_is_one_series_of_its_family() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            let family = c.family();
            match family.label() {
                Some(label) => {
                    let fits = match label.affix {
                        Affix::Prefix(prefix) => c.name().starts_with(prefix),
                        Affix::Suffix(suffix) => c.name().ends_with(suffix),
                    };
                    assert!(
                        fits,
                        "{} does not carry its family's affix {:?}",
                        c.name(),
                        label.affix
                    );
                    let (key, value) = c.label().unwrap();
                    assert_eq!(key, label.key);
                    assert!(
                        !value.is_empty() && value != c.name(),
                        "{}: label value {value}",
                        c.name()
                    );
                }
                None => {
                    assert_eq!(c.label(), None);
                    assert_eq!(
                        family.counters().count(),
                        1,
                        "{family:?} has no label but several counters"
                    );
                }
            }
            for other in &Counter::ALL[i + 1..] {
                assert!(
                    (other.family(), other.label()) != (family, c.label()),
                    "{} and {} would be the same series",
                    c.name(),
                    other.name()
                );
            }
        }
    }

    #[test]
    fn every_family_has_counters_and_is_listed() {
        for c in Counter::ALL {
            assert!(
                Family::ALL.contains(&c.family()),
                "{:?} missing from Family::ALL",
                c.family()
            );
        }
        for family in Family::ALL {
            assert!(
                family.counters().next().is_some(),
                "{family:?} has no counter"
            );
        }
    }

    #[test]
    fn labels_read_from_names() {
        assert_eq!(Counter::DropNoPort.label(), Some(("reason", "no_port")));
        assert_eq!(Counter::TranslatedOut.label(), Some(("direction", "out")));
        assert_eq!(Counter::FastPathIn.label(), Some(("direction", "in")));
        assert_eq!(Counter::ParkedFragment.label(), Some(("event", "parked")));
        assert_eq!(
            Counter::PassedFragmentNotHeld.label(),
            Some(("reason", "fragment_not_held"))
        );
        assert_eq!(Counter::FlowsCreated.label(), None);
    }
}
