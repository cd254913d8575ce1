//! The vocabulary of an answer, shared by asking ([`super::resolve`]), the families
//! ([`super::families`]) and the schedule ([`super::schedule`]): which questions a resolution
//! asks, and what each one answered.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// Which address families to discover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum IpFamily {
    /// A and AAAA, queried separately; a dual-stack Service gives both (the default).
    #[default]
    Both,
    /// A records only.
    V4,
    /// AAAA records only.
    V6,
}

impl IpFamily {
    /// Runs `lookup` for each question the family asks, both at once for [`IpFamily::Both`].
    pub(super) async fn each_question<F, Fut, T>(self, lookup: F) -> Vec<(Question, T)>
    where
        F: Fn(Question) -> Fut,
        Fut: Future<Output = T>,
    {
        match self {
            IpFamily::Both => {
                let (v4, v6) = tokio::join!(lookup(Question::V4), lookup(Question::V6));
                vec![(Question::V4, v4), (Question::V6, v6)]
            }
            IpFamily::V4 => vec![(Question::V4, lookup(Question::V4).await)],
            IpFamily::V6 => vec![(Question::V6, lookup(Question::V6).await)],
        }
    }

    pub(super) fn admits(self, ip: IpAddr) -> bool {
        match self {
            IpFamily::Both => true,
            IpFamily::V4 => ip.is_ipv4(),
            IpFamily::V6 => ip.is_ipv6(),
        }
    }
}

/// One question of a resolution: the A query, the AAAA query or the SRV query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Question {
    V4,
    V6,
    Srv,
}

impl Question {
    /// Whether `addr` was found by this question, so that a failed question keeps what it found before.
    pub(super) fn covers(self, addr: &SocketAddr) -> bool {
        match self {
            Question::V4 => addr.is_ipv4(),
            Question::V6 => addr.is_ipv6(),
            Question::Srv => true,
        }
    }
}

/// What one query answered.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// At least one record; `ttl` is the smallest TTL among them.
    Records {
        addrs: Vec<SocketAddr>,
        ttl: Duration,
    },
    /// An authoritative empty answer.
    Empty(Negative),
    /// No usable answer: the name may still exist.
    Failed(Failure),
}

/// An authoritative "nothing here".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Negative {
    /// NXDOMAIN: the name does not exist (Kubernetes: a headless Service with no ready pods).
    NxDomain,
    /// NOERROR with no records of the type asked (e.g. AAAA in an IPv4-only cluster).
    NoData,
}

/// A transient failure, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

/// The classes of transient failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Timeout,
    ServFail,
    Refused,
    Io,
    Other,
}

impl FailureKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::ServFail => "servfail",
            FailureKind::Refused => "refused",
            FailureKind::Io => "io",
            FailureKind::Other => "other",
        }
    }
}
