//! Screening: every record of an answer is checked before its address can reach a balancer.
//! What does not pass is skipped and logged (one `warn` per answer, naming what was left out),
//! never a panic:
//! - **Records owned by another name.** The answer section arrives as the server sent it. Only
//!   the records owned by the name asked count, or, when that name is a CNAME, those owned by
//!   the end of its chain.
//! - **Addresses nobody can call** (see [`unusable`]): unspecified (`0.0.0.0/8`, `::`),
//!   multicast, broadcast, link-local (`169.254.0.0/16`, `fe80::/10`) and IPv4 written as
//!   IPv6 (`::ffff:a.b.c.d`, `::a.b.c.d`). Loopback is kept.
//! - **A chain that leaves the cluster.** A CNAME to a name outside the cluster domain (a
//!   Service of type ExternalName, say) would send calls, in plaintext, out of the cluster.
//!   The whole answer is refused: it counts as an answer with no records, so a Service whose
//!   name turns into such a CNAME drains like one whose pods are gone (after the empty answer
//!   is confirmed). A CNAME loop, or a chain longer than [`MAX_CNAME_HOPS`], is refused too.
//! - **SRV records** (named ports) with port 0, with the target `.` (RFC 2782: "not available
//!   here") or with a target outside the cluster domain.
//! - **TTLs** with the top bit set count as 0 (RFC 2181 §8); every other TTL is used as sent
//!   (the schedule clamps it when it follows TTLs).
//!
//! An answer left with no usable record is an empty answer (NOERROR, no data), and the
//! schedule confirms it before it drains anything, as for NXDOMAIN.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// The longest CNAME chain followed; a longer one is refused (hickory-server stops at 8).
pub(super) const MAX_CNAME_HOPS: usize = 8;

// === screening ===

/// Why an address cannot be a pod's, or `None` if it can.
///
/// Dropped: unspecified (`0.0.0.0/8`, "this network", and `::`), multicast (`224.0.0.0/4`,
/// `ff00::/8`), broadcast (`255.255.255.255`), link-local (`169.254.0.0/16`, `fe80::/10`) and
/// IPv4 written as IPv6, mapped (`::ffff:a.b.c.d`) or compatible (`::a.b.c.d`): a dual-stack
/// socket would reach an IPv4 address that no A record gave.
///
/// Link-local is dropped because no pod has such an address (pod IPs come from the cluster's
/// pod CIDR), an IPv6 one cannot be called without a scope a DNS record cannot carry, and
/// `169.254.169.254` is the cloud metadata service: a call there is the classic way a forged
/// answer turns into a leak.
///
/// Kept: loopback (`127.0.0.0/8`, `::1`). A cluster's DNS never answers it for a pod; a local
/// or test DNS server does, and the tests and the demo run their pods on loopback. The
/// reserved `240.0.0.0/4` is kept too (some clusters number pods from it); only its last
/// address, broadcast, is dropped.
pub(super) fn unusable(ip: IpAddr) -> Option<Unusable> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => Some(Unusable::Unspecified),
        IpAddr::V4(v4) if v4.is_broadcast() => Some(Unusable::Broadcast),
        IpAddr::V4(v4) if v4.is_multicast() => Some(Unusable::Multicast),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Unusable::LinkLocal),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Unusable::Unspecified),
        IpAddr::V6(v6) if v6.is_multicast() => Some(Unusable::Multicast),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Unusable::LinkLocal),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() || ipv4_compatible(v6) => {
            Some(Unusable::Ipv4InIpv6)
        }
        IpAddr::V6(_) => None,
    }
}

/// `::a.b.c.d` (deprecated by RFC 4291), other than `::` and `::1`.
fn ipv4_compatible(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback()
}

/// The classes of [`unusable`] addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unusable {
    Unspecified,
    Multicast,
    Broadcast,
    LinkLocal,
    Ipv4InIpv6,
}

impl Unusable {
    fn as_str(self) -> &'static str {
        match self {
            Unusable::Unspecified => "unspecified",
            Unusable::Multicast => "multicast",
            Unusable::Broadcast => "broadcast",
            Unusable::LinkLocal => "link-local",
            Unusable::Ipv4InIpv6 => "IPv4 written as IPv6",
        }
    }
}

/// A record of an answer left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Skipped {
    /// Owned by a name other than the end of the asked name's CNAME chain (a CNAME off the
    /// chain included).
    Stranger(Name, RecordType),
    /// Of a type not asked for (an AAAA in an answer to A, say).
    OtherType(Name, RecordType),
    /// An address nobody can call.
    Unusable(IpAddr, Unusable),
    /// An SRV record with port 0.
    SrvPortZero(Name),
    /// An SRV record with the target `.`: the service is not available here.
    SrvNoTarget,
    /// An SRV record whose target is outside the cluster domain.
    SrvTargetOutside(Name),
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::Stranger(owner, rtype) => write!(f, "{rtype} owned by {owner}"),
            Skipped::OtherType(owner, rtype) => write!(f, "{rtype} of {owner}, not asked for"),
            Skipped::Unusable(ip, why) => write!(f, "{ip} ({})", why.as_str()),
            Skipped::SrvPortZero(target) => write!(f, "SRV {target} with port 0"),
            Skipped::SrvNoTarget => f.write_str("SRV with target \".\" (not available)"),
            Skipped::SrvTargetOutside(target) => {
                write!(f, "SRV target {target} outside the cluster domain")
            }
        }
    }
}

/// Why a whole answer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The CNAME chain leads out of the cluster domain, through `from` to `to`.
    LeavesCluster { from: Box<Name>, to: Box<Name> },
    /// The CNAME chain comes back to this name.
    Loop(Box<Name>),
    /// The CNAME chain is longer than [`MAX_CNAME_HOPS`].
    TooLong,
}

impl Refused {
    pub(super) fn warn(&self, asked: &Name, domain: &Name) {
        match self {
            Refused::LeavesCluster { from, to } => tracing::warn!(
                name = %asked,
                cname = %to,
                "{from} is a CNAME to {to}, outside the cluster domain {domain}: \
                 its addresses are refused (calls would leave the cluster)"
            ),
            Refused::Loop(at) => {
                tracing::warn!(name = %asked, "CNAME loop at {at}: the answer is refused")
            }
            Refused::TooLong => tracing::warn!(
                name = %asked,
                "CNAME chain longer than {MAX_CNAME_HOPS}: the answer is refused"
            ),
        }
    }
}

/// One `warn` for everything an answer had that was left out, however much.
pub(super) fn warn_skipped(asked: &Name, skipped: &[Skipped]) {
    const SHOWN: usize = 8;
    if skipped.is_empty() {
        return;
    }
    let mut list = skipped
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if skipped.len() > SHOWN {
        list.push_str(&format!("; and {} more", skipped.len() - SHOWN));
    }
    tracing::warn!(
        name = %asked,
        skipped = skipped.len(),
        "records of the answer left out: {list}"
    );
}

/// TTLs with the top bit set count as 0 (RFC 2181 §8).
fn rfc2181_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

/// What an answer gives the name asked, once screened: what was found, and the smallest TTL
/// among the records used and the CNAMEs followed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Screened<T> {
    pub(super) found: Vec<T>,
    pub(super) ttl: u32,
}

/// The records of `rtype` that an answer gives `asked`: those owned by the end of the CNAME
/// chain starting at `asked` (`asked` itself when it is no CNAME), with the smallest TTL of
/// the CNAMEs followed. Every other record goes to `skipped`. A chain that leaves `domain`,
/// loops or runs too long refuses the whole answer.
fn owned_records<'r>(
    asked: &Name,
    domain: &Name,
    rtype: RecordType,
    answers: &'r [Record],
    skipped: &mut Vec<Skipped>,
) -> Result<Screened<&'r Record>, Refused> {
    // Follow the chain: the first CNAME of each owner, wherever it sits in the answer.
    let mut chain: Vec<&Name> = vec![asked];
    let mut followed: Vec<usize> = Vec::new();
    let mut ttl = u32::MAX;
    loop {
        let end = chain[chain.len() - 1];
        let next = answers.iter().enumerate().find_map(|(i, r)| match &r.data {
            RData::CNAME(cname) if r.name == *end => Some((i, r, &cname.0)),
            _ => None,
        });
        let Some((i, r, target)) = next else { break };
        if !domain.zone_of(target) {
            return Err(Refused::LeavesCluster {
                from: Box::new(end.clone()),
                to: Box::new(target.clone()),
            });
        }
        if chain.contains(&target) {
            return Err(Refused::Loop(Box::new(target.clone())));
        }
        if chain.len() > MAX_CNAME_HOPS {
            return Err(Refused::TooLong);
        }
        chain.push(target);
        followed.push(i);
        ttl = ttl.min(rfc2181_ttl(r.ttl));
    }
    let end = chain[chain.len() - 1];
    let mut owned = Vec::with_capacity(answers.len());
    for (i, r) in answers.iter().enumerate() {
        if followed.contains(&i) {
            continue;
        }
        if r.name != *end || r.record_type() == RecordType::CNAME {
            skipped.push(Skipped::Stranger(r.name.clone(), r.record_type()));
        } else if r.record_type() != rtype {
            skipped.push(Skipped::OtherType(r.name.clone(), r.record_type()));
        } else {
            owned.push(r);
        }
    }
    Ok(Screened { found: owned, ttl })
}

/// The `(target, port)` of every usable SRV record an answer gives `asked`, and their smallest
/// TTL (that of the CNAMEs followed included). Port 0, the target `.` and targets outside
/// `domain` go to `skipped`.
pub(super) fn screen_srv<'r>(
    asked: &Name,
    domain: &Name,
    answers: &'r [Record],
    skipped: &mut Vec<Skipped>,
) -> Result<Screened<(&'r Name, u16)>, Refused> {
    let Screened { found, mut ttl } =
        owned_records(asked, domain, RecordType::SRV, answers, skipped)?;
    let mut wanted = Vec::new();
    for r in found {
        let RData::SRV(srv) = &r.data else {
            skipped.push(Skipped::OtherType(r.name.clone(), r.record_type()));
            continue;
        };
        if srv.port == 0 {
            skipped.push(Skipped::SrvPortZero(srv.target.clone()));
        } else if srv.target.is_root() {
            skipped.push(Skipped::SrvNoTarget);
        } else if !domain.zone_of(&srv.target) {
            skipped.push(Skipped::SrvTargetOutside(srv.target.clone()));
        } else {
            ttl = ttl.min(rfc2181_ttl(r.ttl));
            wanted.push((&srv.target, srv.port));
        }
    }
    Ok(Screened { found: wanted, ttl })
}

/// The usable addresses an answer to `rtype` (A or AAAA) gives `asked`, and their smallest TTL
/// (that of the CNAMEs followed included).
pub(super) fn screen_addresses(
    asked: &Name,
    domain: &Name,
    rtype: RecordType,
    answers: &[Record],
    skipped: &mut Vec<Skipped>,
) -> Result<Screened<IpAddr>, Refused> {
    let Screened { found, mut ttl } = owned_records(asked, domain, rtype, answers, skipped)?;
    let mut ips = Vec::with_capacity(found.len());
    for r in found {
        let Some(ip) = r.data.ip_addr() else {
            skipped.push(Skipped::OtherType(r.name.clone(), r.record_type()));
            continue;
        };
        match unusable(ip) {
            Some(why) => skipped.push(Skipped::Unusable(ip, why)),
            None => {
                ttl = ttl.min(rfc2181_ttl(r.ttl));
                ips.push(ip);
            }
        }
    }
    Ok(Screened { found: ips, ttl })
}

/// For the fuzzing harness (`fuzz/`, built with `--cfg fuzzing`) only: screens a raw DNS
/// message's answer section as the resolver screens an answer about the message's first
/// question (or a Service name), for A, AAAA and SRV, and panics only where screening broke its
/// own promises: every address kept is owned by the chain and usable.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_screen(message: &[u8]) {
    use std::str::FromStr;

    let Ok(message) = hickory_resolver::proto::op::Message::from_vec(message) else {
        return;
    };
    let domain = Name::from_str("cluster.local.").expect("a valid name");
    let asked = message
        .queries
        .first()
        .map(|q| q.name().clone())
        .unwrap_or_else(|| Name::from_str("user-svc.default.svc.cluster.local.").expect("valid"));
    let answers = &message.answers;
    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut skipped = Vec::new();
        if let Ok(Screened { found, .. }) =
            screen_addresses(&asked, &domain, rtype, answers, &mut skipped)
        {
            for ip in found {
                assert!(unusable(ip).is_none(), "kept an unusable address {ip}");
                assert_eq!(
                    ip.is_ipv4(),
                    rtype == RecordType::A,
                    "kept {ip} for {rtype}"
                );
            }
        }
        warn_skipped(&asked, &skipped);
    }
    let mut skipped = Vec::new();
    if let Ok(Screened { found, .. }) = screen_srv(&asked, &domain, answers, &mut skipped) {
        for (target, port) in found {
            assert!(port != 0 && !target.is_root() && domain.zone_of(target));
        }
    }
}
