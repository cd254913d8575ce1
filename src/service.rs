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
/// assert_eq!(svc, HeadlessService::new("user-svc.default", 8080)?);
/// assert_eq!(svc.to_string(), "user-svc.default:8080");
///
/// let err = HeadlessService::new("1user.default", 8080).unwrap_err();
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
    /// A Service whose pods listen on `port`. `service` is `SERVICE.NAMESPACE`, in the order
    /// of its DNS name and of the string form.
    ///
    /// ```
    /// # use k8s_headless_svc::HeadlessService;
    /// let user = HeadlessService::new("user-svc.default", 8080)?;
    /// assert_eq!(user.namespace(), "default");
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn new(service: &str, port: u16) -> Result<Self, Error> {
        let (name, namespace) = split_name(service)?;
        let port = NonZeroU16::new(port)
            .ok_or_else(|| Error::spec(Field::Port, port.to_string(), Reason::PortOutOfRange))?;
        Self::with_port(name.into(), namespace.into(), Port::Number(port))
    }

    /// A Service whose port is discovered from the SRV record of its named port. `service` is
    /// `SERVICE.NAMESPACE`, as for [`HeadlessService::new`].
    ///
    /// ```
    /// # use k8s_headless_svc::HeadlessService;
    /// let user = HeadlessService::named_port("user-svc.default", "grpc")?;
    /// assert_eq!(user.to_string(), "user-svc.default:grpc");
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn named_port(service: &str, port_name: impl Into<String>) -> Result<Self, Error> {
        let (name, namespace) = split_name(service)?;
        let port_name = port_name.into();
        validate_port_name(&port_name)?;
        Self::with_port(name.into(), namespace.into(), Port::Named(port_name))
    }

    fn with_port(name: String, namespace: String, port: Port) -> Result<Self, Error> {
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
    /// let user = HeadlessService::new("user-svc.default", 8080)?;
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
            Self::with_port(name.into(), namespace.into(), Port::Number(number))
        } else {
            validate_port_name(port)?;
            Self::with_port(name.into(), namespace.into(), Port::Named(port.into()))
        }
    }
}

/// Splits `SERVICE.NAMESPACE` into its two labels, without validating them.
fn split_name(service: &str) -> Result<(&str, &str), Error> {
    service
        .split_once('.')
        .ok_or_else(|| Error::spec(Field::Spec, service, Reason::Format))
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

// === serde, as the string forms ===

/// Serde through the string forms (`user-svc.default:8080`, `cluster.local`), so that a
/// deserialized value is validated exactly as a parsed one.
#[cfg(feature = "serde")]
mod serde_impls {
    use std::{fmt::Display, str::FromStr};

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    use super::{ClusterDomain, HeadlessService};

    fn parse<'de, D: Deserializer<'de>, T: FromStr<Err = crate::Error>>(
        d: D,
    ) -> Result<T, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }

    fn print<S: Serializer>(value: &impl Display, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    impl<'de> Deserialize<'de> for HeadlessService {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse(d)
        }
    }

    impl Serialize for HeadlessService {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            print(self, s)
        }
    }

    impl<'de> Deserialize<'de> for ClusterDomain {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse(d)
        }
    }

    impl Serialize for ClusterDomain {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            print(self, s)
        }
    }
}

#[cfg(test)]
mod tests;
