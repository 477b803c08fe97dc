//! Datapath counters: one `u64` per reason in a per-CPU array.

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
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
        }
    };
}

counters! {
    /// Pod packet whose source was rewritten on the way out.
    TranslatedOut = "translated_out",
    /// Reply whose destination was rewritten back to a pod.
    TranslatedIn = "translated_in",
    /// Flows created (a port was claimed).
    FlowsCreated = "flows_created",
    /// Pod packet to an excluded destination (pod CIDR, multicast, broadcast, --no-masq).
    PassedExcluded = "passed_excluded",
    /// Egress packet not from the pod network (the host's own traffic).
    PassedNotPod = "passed_not_pod",
    /// Ingress packet with no flow (for the host itself).
    PassedNoFlow = "passed_no_flow",
    /// Not IPv4 (IPv6, ARP, ...): not ours to translate.
    PassedNotIpv4 = "passed_not_ipv4",
    /// Dropped: no free port/identifier for a new flow.
    DropNoPort = "drop_no_port",
    /// Dropped: the conntrack table is full.
    DropTableFull = "drop_table_full",
    /// Dropped: a pod packet with a protocol or ICMP type we cannot translate.
    DropUnsupported = "drop_unsupported",
    /// Dropped: a pod's fragment whose datagram cannot be tracked (fragment
    /// table full, or its IP ID towards that peer claimed by another pod).
    DropFragment = "drop_fragment",
    /// Dropped: a pod packet with a truncated or malformed header.
    DropMalformed = "drop_malformed",
    /// Dropped: the datapath has no configuration (never attached properly).
    DropNoConfig = "drop_no_config",
    /// Dropped in uplink_egress: rewriting the packet failed (helper error).
    DropRewriteEgress = "drop_rewrite_egress",
    /// ICMP error quoting a masqueraded packet, translated back to its pod.
    TranslatedIcmpError = "translated_icmp_error",
    /// Ingress packet with a truncated or malformed header: left to the host
    /// stack, which drops it; never translated.
    PassedMalformed = "passed_malformed",
    /// Dropped: an ingress packet whose source is inside the pod network
    /// (spoofed: pods are never reached through the uplink).
    DropSpoofedPodSource = "drop_spoofed_pod_source",
    /// A fragment after the first of a tracked datagram, translated.
    TranslatedFragment = "translated_fragment",
    /// An ingress fragment that arrived before its datagram's first fragment:
    /// held until the first one says where it goes.
    ParkedFragment = "parked_fragment",
    /// A held fragment sent on once its first fragment arrived.
    ReleasedFragment = "released_fragment",
    /// A candidate port skipped because a socket of the host uses it.
    PortSkippedHostSocket = "port_skipped_host_socket",
    /// A flow removed because a connection of the host itself took its
    /// tuple on the NAT address: the replies are the host's.
    FlowYieldedToHost = "flow_yielded_to_host",
    /// Dropped: an ingress packet addressed straight to a pod from a source
    /// the pod network reaches only through the NAT (not a --no-masq one).
    DropUninvitedToPod = "drop_uninvited_to_pod",
    /// Fast path: a pod packet forwarded from the bridge straight to the
    /// uplink, past the host's IP stack (its SNAT still counts as translated_out).
    FastPathOut = "fast_path_out",
    /// Fast path: a translated reply delivered from the uplink straight to
    /// the bridge, past the host's IP stack.
    FastPathIn = "fast_path_in",
    /// Fast path declined, the host stack forwards instead: the TTL expires
    /// here (the host sends the time-exceeded error).
    FallbackTtl = "fallback_ttl",
    /// Fast path declined: the IPv4 header carries options.
    FallbackIpOptions = "fallback_ip_options",
    /// Fast path declined: an IP fragment.
    FallbackFragment = "fallback_fragment",
    /// Fast path declined: a protocol or ICMP type the NAT does not translate.
    FallbackUnsupported = "fallback_unsupported",
    /// Fast path declined: a pod packet to a destination never masqueraded
    /// (the host, the pod network, multicast, broadcast, --no-masq).
    FallbackExcluded = "fallback_excluded",
    /// Fast path declined: the route lookup says the packet is for the host itself.
    FallbackLocal = "fallback_local",
    /// Fast path declined: no usable route (unreachable, blackhole, prohibited,
    /// forwarding disabled): the host answers with its ICMP error.
    FallbackNoRoute = "fallback_no_route",
    /// Fast path declined: the route leaves through another interface than
    /// the uplink (outgoing) or the bridge (replies).
    FallbackOtherInterface = "fallback_other_interface",
    /// Fast path declined: larger than the route's MTU: the host fragments it
    /// or sends "fragmentation needed".
    FallbackFragNeeded = "fallback_frag_needed",
    /// An incoming fragment that could not be held for its first fragment
    /// (16 held for its datagram, larger than 1500 bytes, tables full):
    /// left to the host, as without bpfmasq.
    PassedFragmentNotHeld = "passed_fragment_not_held",
    /// Dropped in uplink_ingress: rewriting the packet failed (helper error).
    DropRewriteIngress = "drop_rewrite_ingress",
    /// Dropped in bridge_ingress: rewriting the packet for the fast path
    /// failed (helper error).
    DropRewriteBridge = "drop_rewrite_bridge",
    /// A fragment the datapath translated and sent back into the uplink's
    /// ingress as a clone (a first fragment and the ones held for it), let
    /// through once, untouched.
    ReenteredFragment = "reentered_fragment",
    /// An ICMP error about a pod's flow leaving through the uplink (the
    /// host's, or the pod's own), its quoted pod address and port turned
    /// into the NAT address and port.
    TranslatedIcmpErrorOut = "translated_icmp_error_out",
    /// Dropped: an ICMP error leaving through the uplink that names a pod
    /// (as its source or quoted) but belongs to no flow: never leaked.
    DropIcmpErrorNoFlow = "drop_icmp_error_no_flow",
    /// A TCP RST or FIN from outside whose sequence number lies outside the
    /// window the pod advertised: passed on to the pod (its stack judges
    /// it), the flow's state left as it was.
    TcpOutOfWindow = "tcp_out_of_window",
    /// Dropped: a pod's new flow past `--ct-max-per-pod`.
    DropPodFlowLimit = "drop_pod_flow_limit",
    /// An unreplied flow removed to make room in a full table for a new
    /// one, as nf_conntrack's early drop does (never an answered flow).
    FlowsEarlyDropped = "flows_early_dropped",
}

impl Counter {
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub fn is_drop(self) -> bool {
        self.name().starts_with("drop_")
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
}
