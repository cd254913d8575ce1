//! The crate's one public error type, [`Error`], and the parts an [`Error::InvalidSpec`]
//! names: the [`Field`] that was wrong and the [`Reason`] it was refused.

use std::fmt;

use tower::BoxError;

/// Everything that can go wrong when building or querying a [`Registry`](crate::Registry).
///
/// Runtime discovery failures (DNS down, SERVFAIL, a dead pod) are never returned here: they
/// are logged with `tracing` and visible through [`Registry::status`](crate::Registry::status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of a service spec broke the rule Kubernetes applies to it.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidSpec {
        /// Which part of the spec was wrong.
        field: Field,
        /// The value as given.
        value: String,
        /// The rule it broke.
        reason: Reason,
    },

    /// A builder option had a value that cannot work.
    #[error("invalid option `{option}`: {reason}")]
    InvalidConfig {
        /// The builder method or configuration key.
        option: &'static str,
        /// Why the value was refused.
        reason: String,
    },

    /// [`Builder::build`](crate::Builder::build) was called outside a tokio runtime.
    #[error("a tokio runtime is required to start discovery; call build() from within one")]
    NoRuntime,

    /// The system resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("could not read the system DNS configuration")]
    SystemConfig(#[source] BoxError),

    /// The registry does not discover the service asked for.
    #[error("service {0:?} is not in this registry")]
    UnknownService(String),

    /// A service had no endpoints for as long as the caller was willing to wait.
    #[error("service {service} has no endpoints (waited {waited:?})")]
    NoEndpoints {
        /// The service.
        service: String,
        /// How long the caller waited.
        waited: std::time::Duration,
    },

    /// A lookup without a port matched more than one service in the registry.
    #[error("service {query:?} is ambiguous: it matches {matches:?}; add the port")]
    AmbiguousService {
        /// The lookup as given.
        query: String,
        /// Every service it matched.
        matches: Vec<String>,
    },
}

impl Error {
    /// True if a service spec, or a string meant to parse as one, was invalid.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(self, Error::InvalidSpec { .. })
    }

    /// True if a builder option was outside its documented range: a command line can report it
    /// as a usage error.
    pub fn is_invalid_config(&self) -> bool {
        matches!(self, Error::InvalidConfig { .. })
    }

    /// True if the service asked for is not in the registry (or is ambiguous).
    pub fn is_unknown_service(&self) -> bool {
        matches!(
            self,
            Error::UnknownService(_) | Error::AmbiguousService { .. }
        )
    }

    /// True if a service had no endpoints within the time allowed: a caller would answer
    /// `UNAVAILABLE`.
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self, Error::NoEndpoints { .. })
    }

    pub(crate) fn spec(field: Field, value: impl Into<String>, reason: Reason) -> Self {
        Error::InvalidSpec {
            field,
            value: value.into(),
            reason,
        }
    }

    pub(crate) fn config(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            option,
            reason: reason.into(),
        }
    }
}

/// The part of a service spec that an [`Error::InvalidSpec`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The Service's namespace (a DNS-1123 label).
    Namespace,
    /// The Service's name (a DNS-1035 label).
    Name,
    /// The port: a number in `1..=65535` or a port name (an IANA service name).
    Port,
    /// The whole `SERVICE.NAMESPACE:PORT` string.
    Spec,
    /// The registry's cluster domain (a DNS-1123 subdomain).
    ClusterDomain,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Namespace => "namespace",
            Field::Name => "Service name",
            Field::Port => "port",
            Field::Spec => "service spec",
            Field::ClusterDomain => "cluster domain",
        })
    }
}

/// The rule an [`Error::InvalidSpec`] value broke.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The value was empty.
    Empty,
    /// The value was longer than the rule allows.
    TooLong {
        /// The most characters allowed.
        max: usize,
    },
    /// One dot-separated label of a domain was longer than a DNS label may be.
    LabelTooLong {
        /// The label.
        label: String,
        /// The most characters a label may have (63).
        max: usize,
    },
    /// A name the service is looked up by would be longer than DNS allows: a shorter Service
    /// name, namespace or cluster domain is needed.
    DnsNameTooLong {
        /// The name, fully qualified, with its trailing dot.
        name: String,
        /// The most characters a name may have without its trailing dot (253).
        max: usize,
    },
    /// A character outside the allowed set.
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
    /// A DNS-1035 label must start with a lowercase letter.
    MustStartWithLetter,
    /// A DNS-1123 label or port name must start and end with a lowercase letter or digit.
    MustStartAndEndAlphanumeric,
    /// A port name may not hold two hyphens in a row.
    DoubleHyphen,
    /// A port name must hold at least one letter.
    NoLetter,
    /// A port number outside `1..=65535`.
    PortOutOfRange,
    /// The string was not of the form `SERVICE.NAMESPACE:PORT`.
    Format,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("must not be empty"),
            Reason::TooLong { max } => write!(f, "must be at most {max} characters"),
            Reason::LabelTooLong { label, max } => write!(
                f,
                "label {label:?} has {} characters; a DNS label may have at most {max}",
                label.len()
            ),
            Reason::DnsNameTooLong { name, max } => write!(
                f,
                "its DNS name {name:?} has {} characters; DNS allows at most {max} (use a \
                 shorter Service name, namespace or cluster domain)",
                name.trim_end_matches('.').len()
            ),
            Reason::InvalidChar { ch, at } => write!(
                f,
                "character {ch:?} at offset {at} is not allowed: only lowercase letters, digits and '-'"
            ),
            Reason::MustStartWithLetter => {
                f.write_str("must start with a lowercase letter (DNS-1035 label)")
            }
            Reason::MustStartAndEndAlphanumeric => {
                f.write_str("must start and end with a lowercase letter or digit")
            }
            Reason::DoubleHyphen => f.write_str("must not contain \"--\" (IANA service name)"),
            Reason::NoLetter => f.write_str("must contain at least one letter (IANA service name)"),
            Reason::PortOutOfRange => f.write_str("must be a number in 1..=65535"),
            Reason::Format => f.write_str(
                "expected SERVICE.NAMESPACE:PORT, e.g. user-svc.default:8080 or user-svc.default:grpc",
            ),
        }
    }
}

/// An error and the errors under it, outermost first.
pub(crate) fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// An error and its causes, on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
