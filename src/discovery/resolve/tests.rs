use hickory_resolver::proto::rr::{
    RData, Record,
    rdata::{A, AAAA, CNAME, SRV},
};

use super::screen::*;
use super::*;

const ASKED: &str = "user-svc.ns.svc.cluster.local.";
const ALIAS: &str = "pods.ns.svc.cluster.local.";
const OTHER: &str = "other.ns.svc.cluster.local.";
const EVIL: &str = "api.example.com.";

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(owner: &str, address: &str, ttl: u32) -> Record {
    let data = match ip(address) {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name(owner), ttl, data)
}

fn cname(owner: &str, target: &str, ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

fn screen(
    rtype: RecordType,
    answers: &[Record],
) -> (Result<Screened<IpAddr>, Refused>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let got = screen_addresses(
        &name(ASKED),
        &name("cluster.local."),
        rtype,
        answers,
        &mut skipped,
    );
    (got, skipped)
}

#[test]
fn unusable_addresses_by_range() {
    use Unusable::*;
    let cases: &[(&str, Option<Unusable>)] = &[
        ("10.1.2.3", None),
        ("192.168.0.1", None),
        ("127.0.0.1", None),
        ("127.0.120.2", None),
        ("::1", None),
        ("fd00::1", None),
        ("2001:db8::1", None),
        ("64:ff9b::a01:203", None),
        ("240.0.0.1", None),
        ("0.0.0.0", Some(Unspecified)),
        ("0.1.2.3", Some(Unspecified)),
        ("::", Some(Unspecified)),
        ("224.0.0.1", Some(Multicast)),
        ("239.255.255.250", Some(Multicast)),
        ("ff02::1", Some(Multicast)),
        ("ff0e::1", Some(Multicast)),
        ("255.255.255.255", Some(Broadcast)),
        ("169.254.169.254", Some(LinkLocal)),
        ("169.254.0.1", Some(LinkLocal)),
        ("fe80::1", Some(LinkLocal)),
        ("febf::ffff", Some(LinkLocal)),
        ("::ffff:10.1.2.3", Some(Ipv4InIpv6)),
        ("::ffff:127.0.0.1", Some(Ipv4InIpv6)),
        ("::10.1.2.3", Some(Ipv4InIpv6)),
        ("::2", Some(Ipv4InIpv6)),
    ];
    for (address, want) in cases {
        assert_eq!(unusable(ip(address)), *want, "{address}");
    }
}

#[test]
fn query_names_give_the_cluster_domain() {
    let cases = [
        (
            ServiceQuery::addresses(ASKED, 80, IpFamily::Both),
            "cluster.local.",
        ),
        (
            ServiceQuery::srv(&format!("_grpc._tcp.{ASKED}"), IpFamily::Both),
            "cluster.local.",
        ),
        (
            ServiceQuery::addresses("a.b.svc.k8s.corp.example.", 80, IpFamily::Both),
            "k8s.corp.example.",
        ),
        (
            ServiceQuery::srv("_http._tcp.a.b.svc.local.", IpFamily::V4),
            "local.",
        ),
    ];
    for (query, domain) in cases {
        let query = query.unwrap();
        assert_eq!(query.domain, name(domain), "{query:?}");
        assert!(query.domain.is_fqdn());
    }
    assert!(ServiceQuery::addresses("a.b.svc.", 80, IpFamily::Both).is_err());
}

#[test]
fn only_the_chain_end_owns_addresses() {
    struct Case {
        what: &'static str,
        answers: Vec<Record>,
        want: Vec<&'static str>,
        skipped: Vec<Skipped>,
    }
    let cases = vec![
        Case {
            what: "plain",
            answers: vec![addr(ASKED, "10.0.0.1", 5)],
            want: vec!["10.0.0.1"],
            skipped: vec![],
        },
        Case {
            what: "owner names compare without case",
            answers: vec![addr("User-Svc.NS.svc.Cluster.Local.", "10.0.0.1", 5)],
            want: vec!["10.0.0.1"],
            skipped: vec![],
        },
        Case {
            what: "strangers beside the name",
            answers: vec![
                addr(OTHER, "10.0.0.2", 5),
                addr(ASKED, "10.0.0.1", 5),
                addr(EVIL, "10.0.0.3", 5),
            ],
            want: vec!["10.0.0.1"],
            skipped: vec![
                Skipped::Stranger(name(OTHER), RecordType::A),
                Skipped::Stranger(name(EVIL), RecordType::A),
            ],
        },
        Case {
            what: "a CNAME in the cluster, its end's addresses only",
            answers: vec![
                addr(ALIAS, "10.0.0.3", 5),
                cname(ASKED, ALIAS, 5),
                addr(ASKED, "10.0.0.4", 5),
            ],
            want: vec!["10.0.0.3"],
            skipped: vec![Skipped::Stranger(name(ASKED), RecordType::A)],
        },
        Case {
            what: "a second CNAME of one owner is not followed",
            answers: vec![
                cname(ASKED, ALIAS, 5),
                cname(ASKED, EVIL, 5),
                addr(ALIAS, "10.0.0.3", 5),
                addr(EVIL, "10.0.0.9", 5),
            ],
            want: vec!["10.0.0.3"],
            skipped: vec![
                Skipped::Stranger(name(ASKED), RecordType::CNAME),
                Skipped::Stranger(name(EVIL), RecordType::A),
            ],
        },
        Case {
            what: "a CNAME off the chain leading out changes nothing",
            answers: vec![cname(OTHER, EVIL, 5), addr(ASKED, "10.0.0.1", 5)],
            want: vec!["10.0.0.1"],
            skipped: vec![Skipped::Stranger(name(OTHER), RecordType::CNAME)],
        },
        Case {
            what: "AAAA in an answer to A",
            answers: vec![addr(ASKED, "fd00::1", 5), addr(ASKED, "10.0.0.1", 5)],
            want: vec!["10.0.0.1"],
            skipped: vec![Skipped::OtherType(name(ASKED), RecordType::AAAA)],
        },
        Case {
            what: "unusable addresses",
            answers: vec![
                addr(ASKED, "0.0.0.0", 5),
                addr(ASKED, "169.254.169.254", 5),
                addr(ASKED, "255.255.255.255", 5),
                addr(ASKED, "224.0.0.1", 5),
                addr(ASKED, "127.0.0.1", 5),
            ],
            want: vec!["127.0.0.1"],
            skipped: vec![
                Skipped::Unusable(ip("0.0.0.0"), Unusable::Unspecified),
                Skipped::Unusable(ip("169.254.169.254"), Unusable::LinkLocal),
                Skipped::Unusable(ip("255.255.255.255"), Unusable::Broadcast),
                Skipped::Unusable(ip("224.0.0.1"), Unusable::Multicast),
            ],
        },
        Case {
            what: "duplicates stay (records_or_nodata removes them)",
            answers: vec![addr(ASKED, "10.0.0.1", 5), addr(ASKED, "10.0.0.1", 9)],
            want: vec!["10.0.0.1", "10.0.0.1"],
            skipped: vec![],
        },
    ];
    for case in cases {
        let (got, skipped) = screen(RecordType::A, &case.answers);
        let got = got.unwrap_or_else(|e| panic!("{}: refused {e:?}", case.what));
        let want: Vec<IpAddr> = case.want.iter().map(|a| ip(a)).collect();
        assert_eq!(got.found, want, "{}", case.what);
        assert_eq!(skipped, case.skipped, "{}", case.what);
    }
}

#[test]
fn chains_that_leave_loop_or_run_long_are_refused() {
    let mut long = Vec::new();
    let hop = |i: usize| format!("hop{i}.ns.svc.cluster.local.");
    // One hop more than allowed.
    long.push(cname(ASKED, &hop(0), 5));
    for i in 0..MAX_CNAME_HOPS {
        long.push(cname(&hop(i), &hop(i + 1), 5));
    }
    long.push(addr(&hop(MAX_CNAME_HOPS), "10.0.0.1", 5));
    let cases = [
        (
            vec![cname(ASKED, EVIL, 5), addr(EVIL, "10.0.0.9", 5)],
            Refused::LeavesCluster {
                from: Box::new(name(ASKED)),
                to: Box::new(name(EVIL)),
            },
        ),
        (
            vec![
                cname(ASKED, "relay.example.net.", 5),
                cname("relay.example.net.", ALIAS, 5),
                addr(ALIAS, "10.0.0.9", 5),
            ],
            Refused::LeavesCluster {
                from: Box::new(name(ASKED)),
                to: Box::new(name("relay.example.net.")),
            },
        ),
        (
            vec![
                addr(EVIL, "10.0.0.9", 5),
                cname(ALIAS, EVIL, 5),
                cname(ASKED, ALIAS, 5),
            ],
            Refused::LeavesCluster {
                from: Box::new(name(ALIAS)),
                to: Box::new(name(EVIL)),
            },
        ),
        // A name that merely ends like the domain is outside it.
        (
            vec![cname(ASKED, "evilcluster.local.", 5)],
            Refused::LeavesCluster {
                from: Box::new(name(ASKED)),
                to: Box::new(name("evilcluster.local.")),
            },
        ),
        (
            vec![
                cname(ASKED, ALIAS, 5),
                cname(ALIAS, ASKED, 5),
                addr(ASKED, "10.0.0.1", 5),
            ],
            Refused::Loop(Box::new(name(ASKED))),
        ),
        (
            vec![cname(ASKED, ASKED, 5)],
            Refused::Loop(Box::new(name(ASKED))),
        ),
        (long, Refused::TooLong),
    ];
    for (answers, want) in cases {
        let (got, _) = screen(RecordType::A, &answers);
        assert_eq!(got, Err(want), "{answers:?}");
    }
    // As many hops as allowed: followed.
    let mut chain = vec![cname(ASKED, &hop(0), 5)];
    for i in 0..MAX_CNAME_HOPS - 1 {
        chain.push(cname(&hop(i), &hop(i + 1), 5));
    }
    chain.push(addr(&hop(MAX_CNAME_HOPS - 1), "10.0.0.1", 5));
    let (got, skipped) = screen(RecordType::A, &chain);
    let want = Screened {
        found: vec![ip("10.0.0.1")],
        ttl: 5,
    };
    assert_eq!(got, Ok(want));
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[test]
fn ttl_is_the_smallest_of_chain_and_records_with_the_top_bit_as_zero() {
    let cases: &[(Vec<Record>, u32)] = &[
        (vec![addr(ASKED, "10.0.0.1", 0)], 0),
        (
            vec![addr(ASKED, "10.0.0.1", i32::MAX as u32)],
            i32::MAX as u32,
        ),
        (vec![addr(ASKED, "10.0.0.1", 1 << 31)], 0),
        (vec![addr(ASKED, "10.0.0.1", u32::MAX)], 0),
        (
            vec![addr(ASKED, "10.0.0.1", 30), addr(ASKED, "10.0.0.2", 7)],
            7,
        ),
        (vec![cname(ASKED, ALIAS, 3), addr(ALIAS, "10.0.0.1", 30)], 3),
        (
            vec![cname(ASKED, ALIAS, u32::MAX), addr(ALIAS, "10.0.0.1", 30)],
            0,
        ),
        // A dropped record's TTL does not count.
        (
            vec![addr(ASKED, "0.0.0.0", 1), addr(ASKED, "10.0.0.1", 30)],
            30,
        ),
    ];
    for (answers, want) in cases {
        let (got, _) = screen(RecordType::A, answers);
        assert_eq!(got.unwrap().ttl, *want, "{answers:?}");
    }
}

#[test]
fn srv_records_without_a_place_to_call_are_skipped() {
    let srv = |owner: &str, port: u16, target: &str, ttl: u32| {
        let data = RData::SRV(SRV::new(0, 100, port, name(target)));
        Record::from_rdata(name(owner), ttl, data)
    };
    let pod = |i: u8| format!("pod-{i}.{ASKED}");
    let answers = vec![
        srv(ASKED, 8080, &pod(0), 30),
        srv(ASKED, 0, &pod(1), 1),
        srv(ASKED, 8080, ".", 1),
        srv(ASKED, 8080, "pod.example.com.", 1),
        srv(OTHER, 8080, &pod(2), 1),
        srv(ASKED, 9090, &pod(0), 20),
        addr(ASKED, "10.0.0.1", 1),
    ];
    let mut skipped = Vec::new();
    let Screened { found: wanted, ttl } = screen_srv(
        &name(ASKED),
        &name("cluster.local."),
        &answers,
        &mut skipped,
    )
    .unwrap();
    let (pod0, pod1) = (name(&pod(0)), name(&pod(1)));
    assert_eq!(wanted, vec![(&pod0, 8080), (&pod0, 9090)]);
    assert_eq!(ttl, 20);
    assert_eq!(
        skipped,
        vec![
            Skipped::Stranger(name(OTHER), RecordType::SRV),
            Skipped::OtherType(name(ASKED), RecordType::A),
            Skipped::SrvPortZero(pod1),
            Skipped::SrvNoTarget,
            Skipped::SrvTargetOutside(name("pod.example.com.")),
        ]
    );
}

#[test]
fn skipped_records_log_in_one_line_each() {
    let cases = [
        (
            Skipped::Stranger(name(OTHER), RecordType::A),
            format!("A owned by {OTHER}"),
        ),
        (
            Skipped::Unusable(ip("169.254.169.254"), Unusable::LinkLocal),
            "169.254.169.254 (link-local)".to_owned(),
        ),
        (
            Skipped::SrvNoTarget,
            "SRV with target \".\" (not available)".to_owned(),
        ),
    ];
    for (skipped, want) in cases {
        assert_eq!(skipped.to_string(), want);
    }
}
