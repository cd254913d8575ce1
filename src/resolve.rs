//! The only file that touches hickory: builds the resolver and turns its answers into
//! [`Answer`]s.
//!
//! # An answer is input from the network
//! Every record is screened before its address can reach a balancer. What does not pass is
//! skipped and logged (one `warn` per answer, naming what was left out), never a panic:
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
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use hickory_resolver::{
    NameServerPool, PoolContext, TlsConfig,
    config::{ConnectionConfig, NameServerConfig, ResolverOpts},
    net::{
        DnsError, NetError, NoRecords,
        runtime::TokioRuntimeProvider,
        xfer::{DnsHandle, FirstAnswer, RetryDnsHandle},
    },
    proto::{
        op::{DnsRequestOptions, DnsResponse, Query as HickoryQuery, ResponseCode},
        rr::{Name, RData, Record, RecordType},
    },
};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::{
    error::Error,
    schedule::{Answer, Failure, FailureKind, Negative, Question},
};

/// Which address families to discover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Runs `lookup` for each part the family asks for, both at once for [`IpFamily::Both`].
    async fn each_part<F, Fut, T>(self, lookup: F) -> Vec<(Question, T)>
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

    fn admits(self, ip: IpAddr) -> bool {
        match self {
            IpFamily::Both => true,
            IpFamily::V4 => ip.is_ipv4(),
            IpFamily::V6 => ip.is_ipv6(),
        }
    }
}

/// How DNS queries travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsTransport {
    /// UDP, retried over TCP when an answer is truncated (the default, as a pod's own
    /// resolver does). hickory opens a fresh UDP socket, on a random port, for every query.
    #[default]
    Udp,
    /// TCP only: one connection per nameserver, kept open and shared by every query. Cheaper
    /// per query where many Services refresh often; every answer, large ones included, comes
    /// the same way.
    Tcp,
}

/// What one resolution found.
#[derive(Debug)]
pub(crate) struct Resolution {
    /// One answer per part queried; the SRV part may come twice: its records, and a failure
    /// of some of its targets.
    pub(crate) answers: Vec<(Question, Answer)>,
    /// An answer was too large for UDP, so it came over TCP (hickory does not say which
    /// transport answered: this is from the answer's size).
    pub(crate) over_tcp: bool,
}

/// What to ask, built once per service.
#[derive(Clone, Debug)]
pub(crate) enum Query {
    /// A and/or AAAA of the Service's FQDN, each address with the pod port.
    Addresses {
        fqdn: String,
        port: u16,
        family: IpFamily,
    },
    /// The SRV record of a named port; targets resolved to addresses.
    Srv { name: String, family: IpFamily },
}

impl Query {
    /// The name asked and the cluster domain it lies in. The registry builds the names as
    /// `<name>.<namespace>.svc.<domain>.` and `_<port>._tcp.<name>.<namespace>.svc.<domain>.`
    /// from validated labels without dots, so the domain is what follows the first three or
    /// five labels.
    fn names(&self) -> Result<(Name, Name), Failure> {
        let (name, prefix) = match self {
            Query::Addresses { fqdn, .. } => (fqdn, 3),
            Query::Srv { name, .. } => (name, 5),
        };
        let asked = Name::from_str(name).map_err(|e| Failure {
            kind: FailureKind::Other,
            message: format!("invalid name {name}: {e}"),
        })?;
        let labels = usize::from(asked.num_labels());
        if labels <= prefix {
            return Err(Failure {
                kind: FailureKind::Other,
                message: format!("{name} has no cluster domain"),
            });
        }
        let domain = asked.trim_to(labels - prefix);
        Ok((asked, domain))
    }
}

/// A DNS client with no cache, bounded per-query time and no search list: hickory's
/// name-server pool (UDP with TCP on truncation, or TCP alone; retries; several nameservers)
/// asked directly, without the resolver's cache, CNAME and hosts-file layers, none of which
/// this crate uses. The screening below follows CNAMEs within an answer, as a cluster's DNS
/// sends them.
#[derive(Clone)]
pub(crate) struct Dns {
    pool: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
    options: DnsRequestOptions,
    /// An outer bound on one lookup, in case the pool's own timers overrun.
    deadline: Duration,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// The DNS knobs a [`Builder`](crate::Builder) passes down.
#[derive(Clone, Debug)]
pub(crate) struct DnsConfig {
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) attempts: usize,
    pub(crate) transport: DnsTransport,
}

impl Dns {
    pub(crate) fn new(config: &DnsConfig) -> Result<Self, Error> {
        let connections = |port: u16| {
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = port;
            match config.transport {
                DnsTransport::Udp => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = port;
                    vec![udp, tcp]
                }
                DnsTransport::Tcp => vec![tcp],
            }
        };
        let (servers, mut opts) = if !config.nameservers.is_empty() {
            let servers = config
                .nameservers
                .iter()
                .map(|sa| NameServerConfig::new(sa.ip(), true, connections(sa.port())))
                .collect();
            (servers, ResolverOpts::default())
        } else {
            // The system's nameservers (what a pod's resolver asks), on their ports.
            let (system, opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| Error::SystemConfig(Box::new(e)))?;
            let servers: Vec<NameServerConfig> = system
                .name_servers()
                .iter()
                .map(|ns| {
                    let port = ns.connections.first().map_or(53, |c| c.port);
                    NameServerConfig::new(ns.ip, ns.trust_negative_responses, connections(port))
                })
                .collect();
            if servers.is_empty() {
                return Err(Error::SystemConfig(
                    "the system's resolver configuration names no nameserver".into(),
                ));
            }
            (servers, opts)
        };
        opts.timeout = config.timeout;
        opts.attempts = config.attempts.saturating_sub(1);
        opts.edns0 = true;
        opts.case_randomization = false;
        let mut options = DnsRequestOptions::default();
        options.use_edns = true;
        options.edns_payload_len = opts.edns_payload_len;
        options.recursion_desired = opts.recursion_desired;
        let tls = TlsConfig::new().map_err(|e| Error::SystemConfig(Box::new(e)))?;
        let attempts = opts.attempts;
        let pool = NameServerPool::from_config(
            servers,
            Arc::new(PoolContext::new(opts, tls)),
            TokioRuntimeProvider::default(),
        );
        // Every try may take the timeout, and a truncated answer retried over TCP shares it.
        let tries = u32::try_from(config.attempts.max(1)).unwrap_or(u32::MAX);
        let deadline = config.timeout.saturating_mul(tries.saturating_add(1));
        Ok(Self {
            pool: RetryDnsHandle::new(pool, attempts),
            options,
            deadline,
        })
    }

    /// Runs one resolution. An address query asks the families of `ask` (see
    /// [`crate::families`]); an SRV query its own.
    pub(crate) async fn resolve(&self, query: &Query, ask: IpFamily) -> Resolution {
        let (asked, domain) = match query.names() {
            Ok(names) => names,
            Err(failure) => {
                let part = match query {
                    Query::Addresses { .. } => Question::V4,
                    Query::Srv { .. } => Question::Srv,
                };
                return Resolution {
                    answers: vec![(part, Answer::Failed(failure))],
                    over_tcp: false,
                };
            }
        };
        let answers = match query {
            Query::Addresses { port, .. } => {
                ask.each_part(|part| self.addresses(&asked, &domain, part, *port))
                    .await
            }
            Query::Srv { family, .. } => self.srv(&asked, &domain, *family).await,
        };
        let name = match query {
            Query::Addresses { fqdn, .. } => fqdn,
            Query::Srv { name, .. } => name,
        };
        let over_tcp = answers.iter().any(|(part, answer)| match answer {
            Answer::Records { addrs, .. } => wire_size(*part, name, addrs.len()) > UDP_PAYLOAD,
            _ => false,
        });
        Resolution { answers, over_tcp }
    }

    async fn lookup(&self, name: &Name, rtype: RecordType) -> Result<DnsResponse, NetError> {
        let query = HickoryQuery::query(name.clone(), rtype);
        let lookup = self.pool.lookup(query, self.options).first_answer();
        match tokio::time::timeout(self.deadline, lookup).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout),
        }
    }

    /// The A or AAAA records of `asked`, screened (see the module docs), each address with
    /// `port`.
    async fn addresses(&self, asked: &Name, domain: &Name, part: Question, port: u16) -> Answer {
        let rtype = match part {
            Question::V6 => RecordType::AAAA,
            _ => RecordType::A,
        };
        let lookup = match self.lookup(asked, rtype).await {
            Ok(lookup) => lookup,
            Err(e) => return classify(&e),
        };
        let mut skipped = Vec::new();
        let screened = screen_addresses(asked, domain, rtype, &lookup.answers, &mut skipped);
        warn_skipped(asked, &skipped);
        match screened {
            Ok(Screened { found: ips, ttl }) => records_or_nodata(
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                ttl,
            ),
            Err(refused) => {
                refused.warn(asked, domain);
                Answer::Empty(Negative::NoData)
            }
        }
    }

    /// SRV of a named port, screened. Targets come from the additional section when it is
    /// there, and are resolved otherwise (hickory may not return it), concurrently.
    ///
    /// A target that fails does not spoil the others: their addresses come back as records,
    /// beside a failed SRV part. The schedule then keeps every address of the last set (it
    /// cannot tell which came from the failed target) and adds the new ones.
    async fn srv(&self, asked: &Name, domain: &Name, family: IpFamily) -> Vec<(Question, Answer)> {
        let lookup = match self.lookup(asked, RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) => return vec![(Question::Srv, classify(&e))],
        };
        let mut skipped = Vec::new();
        let screened = screen_srv(asked, domain, &lookup.answers, &mut skipped);
        let Screened { found: wanted, ttl } = match screened {
            Ok(screened) => screened,
            Err(refused) => {
                warn_skipped(asked, &skipped);
                refused.warn(asked, domain);
                return vec![(Question::Srv, Answer::Empty(Negative::NoData))];
            }
        };
        let mut ips: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
        for r in &lookup.additionals {
            let Some(ip) = r.data.ip_addr() else { continue };
            let Some((target, _)) = wanted.iter().find(|(t, _)| **t == r.name) else {
                continue;
            };
            match unusable(ip) {
                Some(why) => skipped.push(Skipped::Unusable(ip, why)),
                None if family.admits(ip) => ips.entry(*target).or_default().push(ip),
                None => {}
            }
        }
        warn_skipped(asked, &skipped);
        let mut missing: Vec<Name> = wanted
            .iter()
            .filter(|(t, _)| !ips.contains_key(t))
            .map(|(t, _)| (*t).clone())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let (resolved, failures) = self.targets(missing, family, domain).await;
        ips.extend(
            resolved
                .iter()
                .map(|(target, found)| (target, found.clone())),
        );
        let addrs = wanted
            .iter()
            .flat_map(|(target, port)| {
                let found = ips.get(target).into_iter().flatten();
                found.map(|ip| SocketAddr::new(*ip, *port))
            })
            .collect();
        let records = records_or_nodata(addrs, ttl);
        let Some(first) = failures.first() else {
            return vec![(Question::Srv, records)];
        };
        let mut message = first.message.clone();
        if failures.len() > 1 {
            message.push_str(&format!(" (and {} more SRV targets)", failures.len() - 1));
        }
        let failed = Answer::Failed(Failure {
            kind: first.kind,
            message,
        });
        match records {
            Answer::Records { .. } => vec![(Question::Srv, records), (Question::Srv, failed)],
            _ => vec![(Question::Srv, failed)],
        }
    }

    /// Resolves SRV targets, at most [`MAX_TARGET_LOOKUPS`] at a time: the addresses of those
    /// that answered, and the failures of the others.
    async fn targets(
        &self,
        targets: Vec<Name>,
        family: IpFamily,
        domain: &Name,
    ) -> (Vec<(Name, Vec<IpAddr>)>, Vec<Failure>) {
        let mut pending = targets.into_iter();
        let mut running = JoinSet::new();
        let (mut resolved, mut failures) = (Vec::new(), Vec::new());
        loop {
            while running.len() < MAX_TARGET_LOOKUPS {
                let Some(target) = pending.next() else { break };
                let (dns, domain) = (self.clone(), domain.clone());
                running.spawn(
                    async move {
                        let result = dns.target_ips(&target, family, &domain).await;
                        result.map(|ips| (target, ips))
                    }
                    .in_current_span(),
                );
            }
            match running.join_next().await {
                Some(Ok(Ok(found))) => resolved.push(found),
                Some(Ok(Err(failure))) => failures.push(failure),
                // Only a panic ends a lookup task early: its target counts as failed.
                Some(Err(e)) => failures.push(Failure {
                    kind: FailureKind::Other,
                    message: format!("an SRV target lookup ended abnormally: {e}"),
                }),
                None => return (resolved, failures),
            }
        }
    }

    /// The addresses of one SRV target; a target with no records contributes none.
    async fn target_ips(
        &self,
        target: &Name,
        family: IpFamily,
        domain: &Name,
    ) -> Result<Vec<IpAddr>, Failure> {
        let answers = family
            .each_part(|part| self.addresses(target, domain, part, 0))
            .await;
        let mut ips = Vec::new();
        for (_, answer) in answers {
            match answer {
                Answer::Records { addrs, .. } => ips.extend(addrs.iter().map(|a| a.ip())),
                Answer::Empty(_) => {}
                Answer::Failed(failure) => {
                    return Err(Failure {
                        kind: failure.kind,
                        message: format!("SRV target {target}: {}", failure.message),
                    });
                }
            }
        }
        Ok(ips)
    }
}

/// SRV targets resolved at the same time, at most.
const MAX_TARGET_LOOKUPS: usize = 16;

/// The longest CNAME chain followed; a longer one is refused (hickory-server stops at 8).
const MAX_CNAME_HOPS: usize = 8;

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
fn unusable(ip: IpAddr) -> Option<Unusable> {
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
enum Unusable {
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
enum Skipped {
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
enum Refused {
    /// The CNAME chain leads out of the cluster domain, through `from` to `to`.
    LeavesCluster { from: Box<Name>, to: Box<Name> },
    /// The CNAME chain comes back to this name.
    Loop(Box<Name>),
    /// The CNAME chain is longer than [`MAX_CNAME_HOPS`].
    TooLong,
}

impl Refused {
    fn warn(&self, asked: &Name, domain: &Name) {
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
fn warn_skipped(asked: &Name, skipped: &[Skipped]) {
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
struct Screened<T> {
    found: Vec<T>,
    ttl: u32,
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
    let mut owned = Vec::new();
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
fn screen_srv<'r>(
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
fn screen_addresses(
    asked: &Name,
    domain: &Name,
    rtype: RecordType,
    answers: &[Record],
    skipped: &mut Vec<Skipped>,
) -> Result<Screened<IpAddr>, Refused> {
    let Screened { found, mut ttl } = owned_records(asked, domain, rtype, answers, skipped)?;
    let mut ips = Vec::new();
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

/// For the fuzzing harness (`fuzz/`, built with `--cfg fuzzing`) only: screens the answer
/// section of a raw DNS message as the resolver screens an answer about the message's first
/// question (or a Service name), for A, AAAA and SRV, and panics only where the screening
/// broke its own promises: every address kept is owned by the chain and usable.
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

/// The EDNS payload size hickory advertises: a larger answer is truncated over UDP and
/// retried over TCP.
const UDP_PAYLOAD: usize = 1232;

/// An estimate of an answer's size on the wire (hickory does not say which transport
/// answered): header, question, OPT record, and each record with a compressed owner name.
fn wire_size(part: Question, name: &str, records: usize) -> usize {
    let per_record = match part {
        Question::V4 => 2 + 10 + 4,
        Question::V6 => 2 + 10 + 16,
        // SRV rdata plus a target about as long as the name, and the target's A record.
        Question::Srv => (2 + 10 + 6 + name.len()) + (2 + 10 + 4),
    };
    12 + name.len() + 2 + 4 + 11 + records * per_record
}

fn records_or_nodata(mut addrs: Vec<SocketAddr>, ttl: u32) -> Answer {
    if addrs.is_empty() {
        return Answer::Empty(Negative::NoData);
    }
    addrs.sort_unstable();
    addrs.dedup();
    Answer::Records {
        addrs,
        ttl: Duration::from_secs(u64::from(ttl)),
    }
}

/// Sorts a resolver error into authoritative-empty or transient.
fn classify(err: &NetError) -> Answer {
    let kind = match err {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            return Answer::Empty(if *response_code == ResponseCode::NXDomain {
                Negative::NxDomain
            } else {
                Negative::NoData
            });
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => FailureKind::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => FailureKind::Refused,
        NetError::Timeout => FailureKind::Timeout,
        NetError::Io(_) | NetError::NoConnections => FailureKind::Io,
        _ => FailureKind::Other,
    };
    Answer::Failed(Failure {
        kind,
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SRV};

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
                Query::Addresses {
                    fqdn: ASKED.into(),
                    port: 80,
                    family: IpFamily::Both,
                },
                "cluster.local.",
            ),
            (
                Query::Srv {
                    name: format!("_grpc._tcp.{ASKED}"),
                    family: IpFamily::Both,
                },
                "cluster.local.",
            ),
            (
                Query::Addresses {
                    fqdn: "a.b.svc.k8s.corp.example.".into(),
                    port: 80,
                    family: IpFamily::Both,
                },
                "k8s.corp.example.",
            ),
            (
                Query::Srv {
                    name: "_http._tcp.a.b.svc.local.".into(),
                    family: IpFamily::V4,
                },
                "local.",
            ),
        ];
        for (query, domain) in cases {
            let (_, got) = query.names().unwrap();
            assert_eq!(got, name(domain), "{query:?}");
            assert!(got.is_fqdn());
        }
        let bare = Query::Addresses {
            fqdn: "a.b.svc.".into(),
            port: 80,
            family: IpFamily::Both,
        };
        assert!(bare.names().is_err());
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

    #[test]
    fn wire_size_matches_measured_truncation_points() {
        // hickory-server truncates an A answer for this name at 73 records with EDNS 1232.
        let name = "big.ns27.svc.cluster.local.";
        assert!(wire_size(Question::V4, name, 70) <= UDP_PAYLOAD);
        assert!(wire_size(Question::V4, name, 75) > UDP_PAYLOAD);
        assert!(wire_size(Question::V6, name, 45) > UDP_PAYLOAD);
        assert!(wire_size(Question::V4, name, 3) < 200);
    }
}
