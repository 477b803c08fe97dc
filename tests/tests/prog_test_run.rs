//! The TC programs alone on hand-built frames (BPF_PROG_TEST_RUN, see
//! `bpfmasq_e2e::test_run`): the simplest exact check of header rewriting,
//! checksums, verdicts and counters, without a network. Each test loads its
//! own copy of the programs and says in one sentence what it sends and what
//! must come out.
//!
//! The tests sit in module `test_run` so that `cargo xtask test` runs them
//! once: they choose the fast path themselves, whatever
//! `BPFMASQ_E2E_FAST_PATH` says, and its second pass skips them.

mod test_run {
    use std::net::Ipv4Addr;

    use bpfmasq::datapath::options::PortRange;
    use bpfmasq_e2e::{
        frame::{
            ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PORT_UNREACH, IPPROTO_UDP,
            Ipv4View, Packet, TCP_SYN,
        },
        test_run::{
            FULL_RANGE, GOES_ON, NAT, Programs, TC_ACT_SHOT, checked, checksums_hold, frame,
            frame_to_this_host, header_checked,
        },
        topology::OUTSIDE_ADDR,
    };
    use dataplane_common::{
        counters::Counter,
        maps::{PROG_BRIDGE_INGRESS, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS},
    };

    const POD1: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 2);
    const POD2: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 3);
    const PEER: Ipv4Addr = OUTSIDE_ADDR;
    const GRE: u8 = 47;
    /// A range of one port, 2000: every translated source port is known.
    const ONLY_2000: PortRange = PortRange {
        min: 2000,
        max: 2000,
    };
    /// Where the second fragment of a datagram cut for a 1500-byte MTU starts.
    const SECOND_FRAGMENT_AT: u16 = 1480;
    /// Quote the whole packet in an ICMP error.
    const WHOLE: usize = usize::MAX;

    /// A pod's UDP query leaves from the NAT address with its source port
    /// kept, and the peer's answer comes back to the pod, every checksum
    /// valid.
    #[test]
    fn udp_is_masqueraded_and_reversed_with_valid_checksums() {
        let mut p = Programs::load("udp", FULL_RANGE);
        let query = Packet::udp(POD1, PEER, 40000, 53);
        let out = p.let_through(PROG_UPLINK_EGRESS, &query);
        let out = checked(&out);
        assert_eq!(
            (out.src(), out.dst(), out.ports()),
            (NAT, PEER, Some((40000, 53))),
            "source port kept when free"
        );

        let answer = Packet::udp(PEER, NAT, 53, 40000);
        let back = p.let_through(PROG_UPLINK_INGRESS, &answer);
        let back = checked(&back);
        assert_eq!(
            (back.src(), back.dst(), back.ports()),
            (PEER, POD1, Some((53, 40000)))
        );
        assert_eq!(p.counter(Counter::TranslatedOut), 1);
        assert_eq!(p.counter(Counter::TranslatedIn), 1);
    }

    /// A pod's UDP packet sent without checksum (0) leaves masqueraded and
    /// still without one.
    #[test]
    fn udp_zero_checksum_stays_zero() {
        let mut p = Programs::load("udp0", FULL_RANGE);
        let unchecked = Packet::udp(POD1, PEER, 40001, 9)
            .payload(1)
            .udp_no_checksum();
        let out = p.let_through(PROG_UPLINK_EGRESS, &unchecked);
        let out = checked(&out);
        assert_eq!(
            out.udp_checksum(),
            Some(0),
            "a zero UDP checksum means none"
        );
        assert_eq!(out.src(), NAT);
    }

    /// Two pods opening TCP from the same port to the same peer port: the
    /// second gets another NAT port, and the peer's reply to that port
    /// reaches the second pod.
    #[test]
    fn second_pod_with_same_port_gets_another_port() {
        let mut p = Programs::load("tcp", FULL_RANGE);
        let syn_from = |pod| Packet::tcp(pod, PEER, 45000, 80, TCP_SYN);
        let first = p.let_through(PROG_UPLINK_EGRESS, &syn_from(POD1));
        let second = p.let_through(PROG_UPLINK_EGRESS, &syn_from(POD2));
        let (first, second) = (checked(&first), checked(&second));
        assert_eq!((first.src(), first.ports()), (NAT, Some((45000, 80))));
        assert_eq!(second.src(), NAT);
        let (second_port, _) = second.ports().expect("TCP ports");
        assert_ne!(
            second_port, 45000,
            "the NAT tuple was taken: a new port is needed"
        );

        let reply = Packet::tcp(PEER, NAT, 80, second_port, TCP_SYN);
        let back = p.let_through(PROG_UPLINK_INGRESS, &reply);
        let back = checked(&back);
        assert_eq!(
            (back.dst(), back.ports()),
            (POD2, Some((80, 45000))),
            "reply reaches the second pod"
        );
    }

    /// A pod's echo request leaves with the NAT address and a NAT
    /// identifier, and the reply to that identifier comes back to the pod
    /// with its own.
    #[test]
    fn icmp_echo_identifier_is_translated_both_ways() {
        let mut p = Programs::load("icmp", ONLY_2000);
        let request = Packet::icmp_echo(POD1, PEER, ICMP_ECHO_REQUEST, 77);
        let out = p.let_through(PROG_UPLINK_EGRESS, &request);
        let out = checked(&out);
        assert_eq!((out.src(), out.echo_id()), (NAT, Some(2000)));

        let reply = Packet::icmp_echo(PEER, NAT, ICMP_ECHO_REPLY, 2000);
        let back = p.let_through(PROG_UPLINK_INGRESS, &reply);
        let back = checked(&back);
        assert_eq!((back.dst(), back.echo_id()), (POD1, Some(77)));
    }

    /// With one NAT port and it taken, a second pod's packet is dropped and
    /// counted, never sent with its pod source.
    #[test]
    fn exhausted_range_drops_instead_of_leaking() {
        let mut p = Programs::load(
            "exhaust",
            PortRange {
                min: 3000,
                max: 3000,
            },
        );
        let query_from = |pod| Packet::udp(pod, PEER, 5000, 53);
        p.let_through(PROG_UPLINK_EGRESS, &query_from(POD1));
        assert_eq!(
            p.verdict(PROG_UPLINK_EGRESS, &query_from(POD2)),
            TC_ACT_SHOT,
            "no port left: the packet must be dropped, not sent with its pod source"
        );
        assert_eq!(p.counter(Counter::DropNoPort), 1);
    }

    /// A pod's GRE packet, whole or a first fragment, has no ports to
    /// translate: both are dropped and counted.
    #[test]
    fn untranslatable_pod_packets_are_dropped_and_counted() {
        let mut p = Programs::load("drops", FULL_RANGE);
        let gre = Packet::other(POD1, PEER, GRE).payload(8);
        assert_eq!(p.verdict(PROG_UPLINK_EGRESS, &gre), TC_ACT_SHOT);
        let gre_fragment = gre.first_fragment();
        assert_eq!(p.verdict(PROG_UPLINK_EGRESS, &gre_fragment), TC_ACT_SHOT);
        assert_eq!(p.counter(Counter::DropUnsupported), 2);
    }

    /// A pod's fragmented UDP datagram leaves masqueraded even with its
    /// last fragment first, another pod's fragment that would merge with it
    /// at the peer is dropped, the reply's fragments come back to the pod
    /// in order, and a reply fragment ahead of its first one is held.
    #[test]
    fn fragments_are_translated_whatever_their_order() {
        let mut p = Programs::load("frags", FULL_RANGE);
        let first_fragment = |src, dst, sport, dport| {
            Packet::udp(src, dst, sport, dport)
                .payload(32)
                .first_fragment()
        };
        let last_fragment_from =
            |src, dst| Packet::other(src, dst, IPPROTO_UDP).last_fragment(SECOND_FRAGMENT_AT);
        // Outgoing, the later fragment first: it carries no ports, only its
        // source address changes.
        let later = last_fragment_from(POD1, PEER);
        let out = p.let_through(PROG_UPLINK_EGRESS, &later);
        let out = header_checked(&out);
        assert_eq!((out.src(), out.dst()), (NAT, PEER));
        let sent = frame(&later);
        let sent = Ipv4View::of_frame(&sent).expect("an IPv4 frame");
        assert_eq!(out.transport(), sent.transport(), "the data are left alone");
        let out = p.let_through(PROG_UPLINK_EGRESS, &first_fragment(POD1, PEER, 4000, 53));
        let out = checked(&out);
        assert_eq!((out.src(), out.ports()), (NAT, Some((4000, 53))));
        // Another pod's datagram with the same IP ID to the same peer would
        // merge with this one at the peer: dropped instead.
        let clash = last_fragment_from(POD2, PEER);
        assert_eq!(p.verdict(PROG_UPLINK_EGRESS, &clash), TC_ACT_SHOT);
        assert_eq!(p.counter(Counter::DropFragment), 1);

        // Incoming, in order: the first fragment tells where the later ones go.
        let back = p.let_through(PROG_UPLINK_INGRESS, &first_fragment(PEER, NAT, 53, 4000));
        let back = checked(&back);
        assert_eq!((back.dst(), back.ports()), (POD1, Some((53, 4000))));
        let reply_later = last_fragment_from(PEER, NAT);
        let back = p.let_through(PROG_UPLINK_INGRESS, &reply_later);
        let back = header_checked(&back);
        assert_eq!((back.src(), back.dst()), (PEER, POD1));
        assert_eq!(p.counter(Counter::TranslatedFragment), 2);

        // A later fragment of another datagram, before its first one: held
        // (released by the first fragment: covered end to end, as releasing
        // re-enters a real interface).
        let early = reply_later.ip_id(0x4321);
        assert_eq!(p.verdict(PROG_UPLINK_INGRESS, &early), TC_ACT_SHOT);
        assert_eq!(p.counter(Counter::ParkedFragment), 1);
    }

    /// The host's own packet, a pod's multicast and a peer's packet of no
    /// flow all go on unchanged, each counted as passed for its reason.
    #[test]
    fn host_and_excluded_traffic_pass_untouched() {
        let mut p = Programs::load("pass", FULL_RANGE);
        let host = frame(&Packet::udp(NAT, PEER, 1234, 53));
        assert_eq!(p.run(PROG_UPLINK_EGRESS, &host), (GOES_ON, host.clone()));
        let multicast = frame(&Packet::udp(POD1, Ipv4Addr::new(239, 1, 1, 1), 1234, 5353));
        assert_eq!(
            p.run(PROG_UPLINK_EGRESS, &multicast),
            (GOES_ON, multicast.clone())
        );
        let stray = frame(&Packet::udp(PEER, NAT, 53, 9999));
        assert_eq!(p.run(PROG_UPLINK_INGRESS, &stray), (GOES_ON, stray.clone()));
        assert_eq!(p.counter(Counter::PassedNotPod), 1);
        assert_eq!(p.counter(Counter::PassedExcluded), 1);
        assert_eq!(p.counter(Counter::PassedNoFlow), 1);
    }

    /// The peer's port unreachable quoting a pod's masqueraded query goes
    /// to the pod with the quote as the pod sent it, every checksum valid;
    /// one quoting a packet of no flow goes on untouched.
    #[test]
    fn icmp_error_quoting_a_masqueraded_packet_goes_back_to_the_pod() {
        /// The pod's query as it left the uplink (NAT port 2000).
        const AS_SENT: Packet = Packet::udp(NAT, PEER, 2000, 53);
        /// A packet of no flow.
        const STRANGER: Packet = Packet::udp(NAT, PEER, 2001, 53);
        let unreachable = |quoted| {
            Packet::icmp_error(
                PEER,
                NAT,
                ICMP_DEST_UNREACH,
                ICMP_PORT_UNREACH,
                quoted,
                WHOLE,
            )
        };
        let mut p = Programs::load("icmperr", ONLY_2000);
        let query = Packet::udp(POD1, PEER, 40000, 53);
        let out = p.let_through(PROG_UPLINK_EGRESS, &query);
        let out = checked(&out);
        assert_eq!(
            (out.src(), out.ports()),
            (NAT, Some((2000, 53))),
            "left as AS_SENT"
        );

        let back = p.let_through(PROG_UPLINK_INGRESS, &unreachable(&AS_SENT));
        let outer = checked(&back);
        assert_eq!(outer.dst(), POD1, "outer destination back to the pod");
        let quoted = checksums_hold(outer.quoted().expect("a quoted packet"));
        assert_eq!(
            (quoted.src(), quoted.dst(), quoted.ports()),
            (POD1, PEER, Some((40000, 53))),
            "quoted packet as the pod sent it"
        );
        assert_eq!(p.counter(Counter::TranslatedIcmpError), 1);

        // An error quoting nothing of ours is left to the host, untouched.
        let unrelated = frame(&unreachable(&STRANGER));
        assert_eq!(
            p.run(PROG_UPLINK_INGRESS, &unrelated),
            (GOES_ON, unrelated.clone())
        );
    }

    /// With the fast path on, each pod packet routed through this host that
    /// the fast path cannot forward goes on to the host's stack unchanged,
    /// counted with the reason, and none is forwarded.
    #[test]
    fn the_fast_path_leaves_what_it_cannot_forward_untouched_and_says_why() {
        let mut p = Programs::load_with("fastpath", FULL_RANGE, true);
        let query = Packet::udp(POD1, PEER, 5000, 53);
        let cases = [
            // The host must send time exceeded.
            (query.ttl(1), Counter::FallbackTtl),
            (query.options(&[1, 1, 1, 1]), Counter::FallbackIpOptions),
            (query.first_fragment(), Counter::FallbackFragment),
            // Pod to pod: not masqueraded.
            (Packet::udp(POD1, POD2, 5000, 53), Counter::FallbackExcluded),
            (
                Packet::other(POD1, PEER, GRE).payload(8),
                Counter::FallbackUnsupported,
            ),
            (
                Packet::icmp_echo(POD1, PEER, ICMP_ECHO_REPLY, 7),
                Counter::FallbackUnsupported,
            ),
            // The route lookup skips the host's martian rules.
            (
                Packet::udp(POD1, Ipv4Addr::UNSPECIFIED, 5000, 53),
                Counter::FallbackMartian,
            ),
            (
                Packet::udp(POD1, Ipv4Addr::new(0, 1, 2, 3), 5000, 53),
                Counter::FallbackMartian,
            ),
            (
                Packet::udp(POD1, Ipv4Addr::new(127, 0, 0, 1), 5000, 53),
                Counter::FallbackMartian,
            ),
            (
                Packet::udp(POD1, Ipv4Addr::new(240, 1, 2, 3), 5000, 53),
                Counter::FallbackMartian,
            ),
        ];
        for (n, (packet, reason)) in cases.iter().enumerate() {
            let f = frame_to_this_host(packet);
            let (verdict, out) = p.run(PROG_BRIDGE_INGRESS, &f);
            assert_eq!(verdict, GOES_ON, "{reason:?}: to the host stack");
            assert_eq!(out, f, "{reason:?}: the frame must be left as it was");
            assert!(p.counter(*reason) >= 1, "{reason:?} not counted (case {n})");
        }
        assert_eq!(p.counter(Counter::FastPathOut), 0);
    }

    /// With the fast path off, a pod packet routed through this host goes
    /// through the bridge program unchanged and uncounted.
    #[test]
    fn with_the_fast_path_off_the_bridge_program_passes_everything() {
        let mut p = Programs::load("fastoff", FULL_RANGE);
        let f = frame_to_this_host(&Packet::udp(POD1, PEER, 5000, 53));
        let (verdict, out) = p.run(PROG_BRIDGE_INGRESS, &f);
        assert_eq!((verdict, out), (GOES_ON, f));
        let counted: u64 = Counter::ALL.iter().map(|&c| p.counter(c)).sum();
        assert_eq!(counted, 0, "the dormant program counted something");
    }
}
