use super::*;
use proptest::prelude::*;

struct Case {
    input: &'static str,
    want: Result<&'static str, (Field, Reason)>,
}

fn reason_of(err: Error) -> (Field, Reason) {
    match err {
        Error::InvalidSpec { field, reason, .. } => (field, reason),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn parse_table() {
    use Reason::*;
    let long = Box::leak(format!("{}.default:80", "a".repeat(64)).into_boxed_str());
    let cases = [
        Case {
            input: "user-svc.default:8080",
            want: Ok("user-svc.default:8080"),
        },
        Case {
            input: "a.b:1",
            want: Ok("a.b:1"),
        },
        Case {
            input: "a.b:65535",
            want: Ok("a.b:65535"),
        },
        Case {
            input: "user-svc.kube-system:grpc",
            want: Ok("user-svc.kube-system:grpc"),
        },
        Case {
            input: "user-svc.0ns:http-2",
            want: Ok("user-svc.0ns:http-2"),
        },
        Case {
            input: "user-svc.default:0",
            want: Err((Field::Port, PortOutOfRange)),
        },
        Case {
            input: "user-svc.default:65536",
            want: Err((Field::Port, PortOutOfRange)),
        },
        Case {
            input: "user-svc.default:99999999999",
            want: Err((Field::Port, PortOutOfRange)),
        },
        Case {
            input: "user-svc.default",
            want: Err((Field::Spec, Format)),
        },
        Case {
            input: "user-svc:8080",
            want: Err((Field::Spec, Format)),
        },
        Case {
            input: "",
            want: Err((Field::Spec, Format)),
        },
        Case {
            input: ".default:80",
            want: Err((Field::Name, Empty)),
        },
        Case {
            input: "svc.:80",
            want: Err((Field::Namespace, Empty)),
        },
        Case {
            input: "1svc.default:80",
            want: Err((Field::Name, MustStartWithLetter)),
        },
        Case {
            input: "svc-.default:80",
            want: Err((Field::Name, MustStartAndEndAlphanumeric)),
        },
        Case {
            input: "User.default:80",
            want: Err((Field::Name, InvalidChar { ch: 'U', at: 0 })),
        },
        Case {
            input: "us_er.default:80",
            want: Err((Field::Name, InvalidChar { ch: '_', at: 2 })),
        },
        Case {
            input: "svc.def.ault:80",
            want: Err((Field::Namespace, InvalidChar { ch: '.', at: 3 })),
        },
        Case {
            input: "svc.-ns:80",
            want: Err((Field::Namespace, MustStartAndEndAlphanumeric)),
        },
        Case {
            input: long,
            want: Err((Field::Name, TooLong { max: 63 })),
        },
        Case {
            input: "svc.ns:",
            want: Err((Field::Port, Empty)),
        },
        Case {
            input: "svc.ns:-grpc",
            want: Err((Field::Port, MustStartAndEndAlphanumeric)),
        },
        Case {
            input: "svc.ns:a--b",
            want: Err((Field::Port, DoubleHyphen)),
        },
        Case {
            input: "svc.ns:12-34",
            want: Err((Field::Port, NoLetter)),
        },
        Case {
            input: "svc.ns:abcdefghijklmnop",
            want: Err((Field::Port, TooLong { max: 15 })),
        },
        Case {
            input: "svc.ns:GRPC",
            want: Err((Field::Port, InvalidChar { ch: 'G', at: 0 })),
        },
        Case {
            input: "svc.ns:grpc:80",
            want: Err((Field::Namespace, InvalidChar { ch: ':', at: 2 })),
        },
    ];
    for case in cases {
        let got = case.input.parse::<HeadlessService>();
        match (got, case.want) {
            (Ok(svc), Ok(want)) => assert_eq!(svc.to_string(), want, "{}", case.input),
            (Err(err), Err(want)) => assert_eq!(reason_of(err), want, "{}", case.input),
            (got, want) => panic!("{}: got {got:?}, want {want:?}", case.input),
        }
    }
}

#[test]
fn constructors_validate_each_field() {
    let err = HeadlessService::new("user-svc.default", 0).unwrap_err();
    assert_eq!(reason_of(err), (Field::Port, Reason::PortOutOfRange));
    let err = HeadlessService::new("user-svc.Default", 80).unwrap_err();
    assert_eq!(
        reason_of(err),
        (Field::Namespace, Reason::InvalidChar { ch: 'D', at: 0 })
    );
    let err = HeadlessService::named_port("user-svc.default", "").unwrap_err();
    assert_eq!(reason_of(err), (Field::Port, Reason::Empty));
    // A namespace may start with a digit (DNS-1123); a Service name may not (DNS-1035).
    assert!(HeadlessService::new("svc.1ns", 80).is_ok());
    assert!(HeadlessService::new("1svc.ns", 80).is_err());
}

#[test]
fn error_names_field_value_and_rule() {
    let err = "User.default:80".parse::<HeadlessService>().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Service name"), "{msg}");
    assert!(msg.contains("\"User\""), "{msg}");
    assert!(msg.contains("'U'"), "{msg}");
}

#[test]
fn fqdn_and_srv_name() {
    let domain: ClusterDomain = "corp.example.".parse().unwrap();
    let svc = HeadlessService::new("user-svc.prod", 8080).unwrap();
    assert_eq!(svc.fqdn(&domain), "user-svc.prod.svc.corp.example.");
    assert_eq!(svc.srv_name(&domain), None);
    let svc = HeadlessService::named_port("user-svc.prod", "grpc").unwrap();
    assert_eq!(
        svc.srv_name(&domain).as_deref(),
        Some("_grpc._tcp.user-svc.prod.svc.corp.example.")
    );
}

#[test]
fn cluster_domain_rules() {
    assert_eq!(ClusterDomain::default().as_str(), "cluster.local");
    for bad in ["", ".", "a..b", "-a.b", "a.b-", "A.b", "a_b.c"] {
        assert!(bad.parse::<ClusterDomain>().is_err(), "{bad:?}");
    }
    let long = vec!["a".repeat(63); 4].join(".");
    assert!(long.parse::<ClusterDomain>().is_err());
    assert!("k8s.corp-1.example".parse::<ClusterDomain>().is_ok());
}

#[test]
fn dns_name_length_table() {
    let name = format!("s{}", "a".repeat(62));
    let ns = "n".repeat(63);
    // 63 + 1 + 63 + 1 + "svc" + 1 = 132 characters before the domain.
    let domain = |len: usize| -> ClusterDomain {
        let first = len.min(63);
        let d = if len > 63 {
            format!("{}.{}", "d".repeat(first - 2), "e".repeat(len - first + 1))
        } else {
            "d".repeat(len)
        };
        assert_eq!(d.len(), len);
        d.parse().unwrap()
    };
    struct Case {
        port: &'static str,
        domain: usize,
        fits: bool,
    }
    let cases = [
        Case {
            port: "80",
            domain: 121,
            fits: true,
        },
        Case {
            port: "80",
            domain: 122,
            fits: false,
        },
        // `_grpc._tcp.` is 11 more characters.
        Case {
            port: "grpc",
            domain: 110,
            fits: true,
        },
        Case {
            port: "grpc",
            domain: 111,
            fits: false,
        },
    ];
    for case in cases {
        let svc: HeadlessService = format!("{name}.{ns}:{}", case.port).parse().unwrap();
        let domain = domain(case.domain);
        match svc.check_dns_name(&domain) {
            Ok(()) => assert!(case.fits, "{}: {} fits", case.port, case.domain),
            Err(Error::InvalidSpec {
                field: Field::Spec,
                value,
                reason: Reason::DnsNameTooLong { name, max: 253 },
            }) => {
                assert!(!case.fits, "{}: {} refused", case.port, case.domain);
                assert_eq!(value, svc.to_string());
                assert_eq!(name.len(), 255, "254 characters and the trailing dot");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[test]
fn cluster_domain_label_errors_name_the_label() {
    let long = "x".repeat(64);
    let err = format!("a.{long}.b").parse::<ClusterDomain>().unwrap_err();
    assert_eq!(
        reason_of(err),
        (
            Field::ClusterDomain,
            Reason::LabelTooLong {
                label: long,
                max: 63
            }
        )
    );
}

fn dns1035() -> impl Strategy<Value = String> {
    "[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
}
fn dns1123() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
}

proptest! {
    #[test]
    fn display_parse_round_trip(name in dns1035(), ns in dns1123(), port in 1u16..) {
        let svc = HeadlessService::new(&format!("{}.{}", name, ns), port).unwrap();
        let back: HeadlessService = svc.to_string().parse().unwrap();
        prop_assert_eq!(back, svc);
    }

    #[test]
    fn named_round_trip(name in dns1035(), ns in dns1123(), port in "[a-z]([a-z0-9]|-[a-z0-9]){0,6}") {
        let svc = HeadlessService::named_port(&format!("{}.{}", name, ns), port).unwrap();
        let back: HeadlessService = svc.to_string().parse().unwrap();
        prop_assert_eq!(back, svc);
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<HeadlessService>();
        let _ = s.parse::<ClusterDomain>();
    }
}
