//! The validated spec of one headless Service: namespace, name and port.

use std::{fmt, num::NonZeroU16, str::FromStr};

use crate::error::{Error, Field, Reason};

/// One Kubernetes headless Service to discover, validated as Kubernetes validates it.
///
/// - the name is a DNS-1035 label (`[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters);
/// - the namespace is a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63);
/// - the port is a number in `1..=65535`, or the name of a Service port (an IANA service
///   name, at most 15 characters), discovered through its SRV record.
///
/// It parses from and prints as `SERVICE.NAMESPACE:PORT`:
///
/// ```
/// use k8s_headless_svc::HeadlessService;
///
/// let svc: HeadlessService = "user-svc.default:8080".parse()?;
/// assert_eq!(svc, HeadlessService::new("default", "user-svc", 8080)?);
/// assert_eq!(svc.to_string(), "user-svc.default:8080");
///
/// let err = HeadlessService::new("default", "1user", 8080).unwrap_err();
/// assert!(err.to_string().contains("must start with a lowercase letter"));
/// # Ok::<(), k8s_headless_svc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadlessService {
    namespace: String,
    name: String,
    port: Port,
}

/// The port of a [`HeadlessService`]: the pods' port number, or a named Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    /// The port the pods listen on; the addresses come from the Service's A/AAAA records.
    Number(NonZeroU16),
    /// A named port of the Service (`ports[].name`); addresses and port come from the SRV
    /// record `_<name>._tcp.<service>.<namespace>.svc.<cluster-domain>`.
    Named(String),
}

// === impl HeadlessService ===

impl HeadlessService {
    /// A Service whose pods listen on `port`.
    ///
    /// ```
    /// # use k8s_headless_svc::HeadlessService;
    /// let user = HeadlessService::new("default", "user-svc", 8080)?;
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: u16,
    ) -> Result<Self, Error> {
        let port = NonZeroU16::new(port)
            .ok_or_else(|| Error::spec(Field::Port, port.to_string(), Reason::PortOutOfRange))?;
        Self::with_port(namespace.into(), name.into(), Port::Number(port))
    }

    /// A Service whose port is discovered from the SRV record of its named port.
    ///
    /// ```
    /// # use k8s_headless_svc::HeadlessService;
    /// let user = HeadlessService::named_port("default", "user-svc", "grpc")?;
    /// assert_eq!(user.to_string(), "user-svc.default:grpc");
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn named_port(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port_name: impl Into<String>,
    ) -> Result<Self, Error> {
        let port_name = port_name.into();
        validate_port_name(&port_name)?;
        Self::with_port(namespace.into(), name.into(), Port::Named(port_name))
    }

    fn with_port(namespace: String, name: String, port: Port) -> Result<Self, Error> {
        validate_dns1035_label(&name).map_err(|r| Error::spec(Field::Name, &name, r))?;
        validate_dns1123_label(&namespace)
            .map_err(|r| Error::spec(Field::Namespace, &namespace, r))?;
        Ok(Self {
            namespace,
            name,
            port,
        })
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Service's port.
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// The name looked up for the pods' addresses, fully qualified with a trailing dot so that a
    /// pod's `ndots:5` search list does not multiply the queries.
    ///
    /// ```
    /// # use k8s_headless_svc::{ClusterDomain, HeadlessService};
    /// let user = HeadlessService::new("default", "user-svc", 8080)?;
    /// assert_eq!(user.fqdn(&ClusterDomain::default()), "user-svc.default.svc.cluster.local.");
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn fqdn(&self, domain: &ClusterDomain) -> String {
        format!("{}.{}.svc.{}.", self.name, self.namespace, domain.0)
    }

    /// The SRV name of a named port, `_<port>._tcp.<name>.<namespace>.svc.<domain>.`; `None`
    /// for a numbered port.
    pub fn srv_name(&self, domain: &ClusterDomain) -> Option<String> {
        match &self.port {
            Port::Number(_) => None,
            Port::Named(port) => Some(format!("_{port}._tcp.{}", self.fqdn(domain))),
        }
    }

    /// Checks that the name this service is looked up by fits in DNS with `domain`: at most
    /// [`MAX_DNS_NAME`] characters without the trailing dot (255 octets on the wire). Each
    /// label already fits, as the name, the namespace, the port name and the domain are
    /// checked on their own; together they may not.
    pub(crate) fn check_dns_name(&self, domain: &ClusterDomain) -> Result<(), Error> {
        let name = self.srv_name(domain).unwrap_or_else(|| self.fqdn(domain));
        if name.trim_end_matches('.').len() > MAX_DNS_NAME {
            return Err(Error::spec(
                Field::Spec,
                self.to_string(),
                Reason::DnsNameTooLong {
                    name,
                    max: MAX_DNS_NAME,
                },
            ));
        }
        Ok(())
    }

    /// True if `name.namespace` names this service, whatever its port.
    pub(crate) fn is_named(&self, name: &str, namespace: &str) -> bool {
        self.name == name && self.namespace == namespace
    }
}

impl fmt::Display for HeadlessService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}:{}", self.name, self.namespace, self.port)
    }
}

impl FromStr for HeadlessService {
    type Err = Error;

    /// Parses `SERVICE.NAMESPACE:PORT`, where `PORT` is a number or a port name.
    fn from_str(s: &str) -> Result<Self, Error> {
        let (name, namespace, port) = split_spec(s)?;
        let port = port.ok_or_else(|| Error::spec(Field::Spec, s, Reason::Format))?;
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            let number = port
                .parse::<u16>()
                .ok()
                .and_then(NonZeroU16::new)
                .ok_or_else(|| Error::spec(Field::Port, port, Reason::PortOutOfRange))?;
            Self::with_port(namespace.into(), name.into(), Port::Number(number))
        } else {
            Self::named_port(namespace, name, port)
        }
    }
}

/// Splits `SERVICE.NAMESPACE[:PORT]` into its parts, without validating them.
pub(crate) fn split_spec(s: &str) -> Result<(&str, &str, Option<&str>), Error> {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let (name, namespace) = host
        .split_once('.')
        .ok_or_else(|| Error::spec(Field::Spec, s, Reason::Format))?;
    Ok((name, namespace, port))
}

// === impl Port ===

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => n.fmt(f),
            Port::Named(name) => f.write_str(name),
        }
    }
}

// === ClusterDomain ===

/// The cluster's DNS domain, `cluster.local` unless the cluster was set up otherwise
/// (kubelet's `--cluster-domain`). A DNS-1123 subdomain; one trailing dot is accepted.
///
/// ```
/// # use k8s_headless_svc::ClusterDomain;
/// let domain: ClusterDomain = "corp.example".parse()?;
/// assert_eq!(domain.as_str(), "corp.example");
/// assert!("Cluster.Local".parse::<ClusterDomain>().is_err());
/// # Ok::<(), k8s_headless_svc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterDomain(String);

impl ClusterDomain {
    /// The domain without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterDomain {
    fn default() -> Self {
        ClusterDomain("cluster.local".to_owned())
    }
}

impl fmt::Display for ClusterDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterDomain {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let domain = s.strip_suffix('.').unwrap_or(s);
        let invalid = |reason| Error::spec(Field::ClusterDomain, s, reason);
        if domain.is_empty() {
            return Err(invalid(Reason::Empty));
        }
        if domain.len() > MAX_DNS_NAME {
            return Err(invalid(Reason::TooLong { max: MAX_DNS_NAME }));
        }
        let mut offset = 0;
        for label in domain.split('.') {
            validate_dns1123_label(label).map_err(|reason| match reason {
                Reason::InvalidChar { ch, at } => invalid(Reason::InvalidChar {
                    ch,
                    at: at + offset,
                }),
                Reason::TooLong { max } => invalid(Reason::LabelTooLong {
                    label: label.to_owned(),
                    max,
                }),
                other => invalid(other),
            })?;
            offset += label.len() + 1;
        }
        Ok(ClusterDomain(domain.to_owned()))
    }
}

// === validation ===

/// The longest DNS name, in characters without the trailing dot: 255 octets on the wire,
/// less the first label's length octet and the root (RFC 1035 §2.3.4).
pub(crate) const MAX_DNS_NAME: usize = 253;

/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

fn check_chars(s: &str, max: usize) -> Result<(), Reason> {
    if s.is_empty() {
        return Err(Reason::Empty);
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(Reason::InvalidChar { ch, at });
    }
    if s.len() > max {
        return Err(Reason::TooLong { max });
    }
    Ok(())
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespaces).
pub(crate) fn validate_dns1123_label(s: &str) -> Result<(), Reason> {
    check_chars(s, MAX_LABEL)?;
    if s.starts_with('-') || s.ends_with('-') {
        return Err(Reason::MustStartAndEndAlphanumeric);
    }
    Ok(())
}

/// A DNS-1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (Service names).
pub(crate) fn validate_dns1035_label(s: &str) -> Result<(), Reason> {
    validate_dns1123_label(s)?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Reason::MustStartWithLetter);
    }
    Ok(())
}

/// An IANA service name, as Kubernetes requires of port names: at most 15 characters of
/// `[a-z0-9-]`, starting and ending alphanumeric, no `--`, at least one letter.
fn validate_port_name(s: &str) -> Result<(), Error> {
    let check = || {
        check_chars(s, 15)?;
        if s.starts_with('-') || s.ends_with('-') {
            return Err(Reason::MustStartAndEndAlphanumeric);
        }
        if s.contains("--") {
            return Err(Reason::DoubleHyphen);
        }
        if !s.chars().any(|c| c.is_ascii_lowercase()) {
            return Err(Reason::NoLetter);
        }
        Ok(())
    };
    check().map_err(|reason| Error::spec(Field::Port, s, reason))
}

#[cfg(test)]
mod tests {
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
        let err = HeadlessService::new("default", "user-svc", 0).unwrap_err();
        assert_eq!(reason_of(err), (Field::Port, Reason::PortOutOfRange));
        let err = HeadlessService::new("Default", "user-svc", 80).unwrap_err();
        assert_eq!(
            reason_of(err),
            (Field::Namespace, Reason::InvalidChar { ch: 'D', at: 0 })
        );
        let err = HeadlessService::named_port("default", "user-svc", "").unwrap_err();
        assert_eq!(reason_of(err), (Field::Port, Reason::Empty));
        // A namespace may start with a digit (DNS-1123); a Service name may not (DNS-1035).
        assert!(HeadlessService::new("1ns", "svc", 80).is_ok());
        assert!(HeadlessService::new("ns", "1svc", 80).is_err());
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
        let svc = HeadlessService::new("prod", "user-svc", 8080).unwrap();
        assert_eq!(svc.fqdn(&domain), "user-svc.prod.svc.corp.example.");
        assert_eq!(svc.srv_name(&domain), None);
        let svc = HeadlessService::named_port("prod", "user-svc", "grpc").unwrap();
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
            let svc = HeadlessService::new(ns, name, port).unwrap();
            let back: HeadlessService = svc.to_string().parse().unwrap();
            prop_assert_eq!(back, svc);
        }

        #[test]
        fn named_round_trip(name in dns1035(), ns in dns1123(), port in "[a-z]([a-z0-9]|-[a-z0-9]){0,6}") {
            let svc = HeadlessService::named_port(ns, name, port).unwrap();
            let back: HeadlessService = svc.to_string().parse().unwrap();
            prop_assert_eq!(back, svc);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<HeadlessService>();
            let _ = s.parse::<ClusterDomain>();
        }
    }
}
