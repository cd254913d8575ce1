//! Asking DNS: the one place that talks to hickory. It builds the client, asks the questions a
//! [`ServiceQuery`] needs (A and AAAA, or SRV and its targets) and turns each answer, once
//! [`screen`]ed, into an [`Answer`] for the schedule.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_resolver::{
    NameServerPool, PoolContext, TlsConfig,
    config::{ConnectionConfig, NameServerConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider, xfer::RetryDnsHandle},
    proto::{
        op::{DnsRequestOptions, DnsResponse, Query as HickoryQuery, ResponseCode},
        rr::{Name, RecordType},
    },
};
use tokio::task::JoinSet;
use tracing::Instrument;

mod client;
mod screen;

#[cfg(fuzzing)]
pub use screen::fuzz_screen;
use screen::{Screened, Skipped, screen_addresses, screen_srv, unusable, warn_skipped};

use super::answer::{Answer, Failure, FailureKind, IpFamily, Negative, Question};
use crate::error::Error;

/// How DNS queries travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
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
    /// One answer per question queried; the SRV question may come twice: its records, and a failure
    /// of some of its targets.
    pub(crate) answers: Vec<(Question, Answer)>,
    /// An answer was truncated over UDP and came again over TCP.
    pub(crate) truncated: bool,
    /// An answer held more endpoints than the cap: how many, before it was cut.
    pub(crate) cut: Option<usize>,
}

/// What a resolution notes on its way, beside its answers; the questions of one resolution
/// run at once, so each writes here through a shared reference.
#[derive(Debug, Default)]
struct Notes {
    /// An answer was truncated over UDP and came again over TCP.
    truncated: AtomicBool,
    /// The largest count of endpoints an answer held over the cap.
    cut: AtomicUsize,
}

impl Notes {
    fn cut(&self, count: usize) {
        self.cut.fetch_max(count, Ordering::Relaxed);
    }
}

/// What to ask, built once per service: the name, parsed once, the cluster domain it lies in,
/// and what to ask of it.
#[derive(Clone, Debug)]
pub(crate) struct ServiceQuery {
    asked: Name,
    domain: Name,
    kind: QueryKind,
}

/// Which records a [`ServiceQuery`] asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum QueryKind {
    /// A and/or AAAA of the Service's FQDN, each address with the pod port.
    Addresses { port: u16, family: IpFamily },
    /// The SRV record of a named port; targets resolved to addresses.
    Srv { family: IpFamily },
}

impl ServiceQuery {
    /// The A/AAAA query of `<name>.<namespace>.svc.<domain>.`.
    pub(crate) fn addresses(fqdn: &str, port: u16, family: IpFamily) -> Result<Self, String> {
        Self::parse(fqdn, 3, QueryKind::Addresses { port, family })
    }

    /// The SRV query of `_<port>._tcp.<name>.<namespace>.svc.<domain>.`.
    pub(crate) fn srv(name: &str, family: IpFamily) -> Result<Self, String> {
        Self::parse(name, 5, QueryKind::Srv { family })
    }

    pub(crate) fn kind(&self) -> QueryKind {
        self.kind
    }

    /// The registry builds the names from validated labels without dots, so the cluster
    /// domain is what follows the first `prefix` labels.
    fn parse(name: &str, prefix: usize, kind: QueryKind) -> Result<Self, String> {
        let asked = Name::from_str(name).map_err(|e| format!("invalid name {name}: {e}"))?;
        let labels = usize::from(asked.num_labels());
        if labels <= prefix {
            return Err(format!("{name} has no cluster domain"));
        }
        let domain = asked.trim_to(labels - prefix);
        Ok(Self {
            asked,
            domain,
            kind,
        })
    }
}

/// A DNS client with no cache, bounded per-query time and no search list: hickory's UDP client
/// and its name-server pool for TCP (see [`client`]), without the
/// resolver's cache, CNAME and hosts-file layers, none of which this crate uses. The screening
/// below follows CNAMEs within an answer, as a cluster's DNS sends them.
#[derive(Clone)]
pub(crate) struct Dns {
    client: Arc<client::Client>,
    /// An outer bound on one lookup, in case the client's own timers overrun.
    deadline: Duration,
    /// The most endpoints, SRV records and SRV targets one answer may give.
    max_endpoints: usize,
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
pub(crate) struct DnsSettings {
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) attempts: usize,
    pub(crate) transport: DnsTransport,
    /// The most endpoints one answer may give a Service.
    pub(crate) max_endpoints: usize,
}

impl Dns {
    pub(crate) fn new(config: &DnsSettings) -> Result<Self, Error> {
        let (servers, mut opts) = if !config.nameservers.is_empty() {
            (config.nameservers.clone(), ResolverOpts::default())
        } else {
            // The cluster's resolver, as the pod's /etc/resolv.conf names it.
            let (system, opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| Error::SystemConfig(Box::new(e)))?;
            let servers: Vec<SocketAddr> = system
                .name_servers()
                .iter()
                .map(|ns| {
                    let port = ns.connections.first().map_or(53, |c| c.port);
                    SocketAddr::new(ns.ip, port)
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
        let tcp_configs: Vec<NameServerConfig> = servers
            .iter()
            .map(|sa| {
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = sa.port();
                NameServerConfig::new(sa.ip(), true, vec![tcp])
            })
            .collect();
        let tcp = NameServerPool::from_config(
            tcp_configs,
            Arc::new(PoolContext::new(opts, tls)),
            TokioRuntimeProvider::default(),
        );
        let udp: &[SocketAddr] = match config.transport {
            DnsTransport::Udp => &servers,
            DnsTransport::Tcp => &[],
        };
        // Every try may take the timeout, and a truncated answer retried over TCP shares it.
        let tries = config.attempts.max(1).saturating_mul(servers.len());
        let tries = u32::try_from(tries).unwrap_or(u32::MAX);
        let deadline = config.timeout.saturating_mul(tries.saturating_add(1));
        Ok(Self {
            client: Arc::new(client::Client::new(
                udp,
                config.timeout,
                config.attempts,
                RetryDnsHandle::new(tcp, attempts),
                options,
            )),
            deadline,
            max_endpoints: config.max_endpoints.max(1),
        })
    }

    /// Runs one resolution. An address query asks the families of `ask` (see
    /// [`super::families`]); an SRV query its own.
    pub(crate) async fn resolve(&self, query: &ServiceQuery, ask: IpFamily) -> Resolution {
        let (asked, domain) = (&query.asked, &query.domain);
        let notes = Notes::default();
        let answers = match query.kind {
            QueryKind::Addresses { port, .. } => {
                ask.each_question(|question| self.addresses(asked, domain, question, port, &notes))
                    .await
            }
            QueryKind::Srv { family } => self.srv(asked, domain, family, &notes).await,
        };
        Resolution {
            answers,
            truncated: notes.truncated.into_inner(),
            cut: Some(notes.cut.into_inner()).filter(|n| *n > 0),
        }
    }

    /// The answer to `rtype` of `name`; `notes` hears when it was truncated over UDP.
    async fn lookup(
        &self,
        name: &Name,
        rtype: RecordType,
        notes: &Notes,
    ) -> Result<DnsResponse, NetError> {
        let query = HickoryQuery::query(name.clone(), rtype);
        match tokio::time::timeout(self.deadline, self.client.lookup(query)).await {
            Ok(Ok(answered)) => {
                if answered.truncated {
                    notes.truncated.store(true, Ordering::Relaxed);
                }
                Ok(answered.response)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetError::Timeout),
        }
    }

    /// The A or AAAA records of `asked`, screened (see the module docs), each address with
    /// `port`.
    async fn addresses(
        &self,
        asked: &Name,
        domain: &Name,
        question: Question,
        port: u16,
        notes: &Notes,
    ) -> Answer {
        let rtype = match question {
            Question::V6 => RecordType::AAAA,
            _ => RecordType::A,
        };
        let lookup = match self.lookup(asked, rtype, notes).await {
            Ok(lookup) => lookup,
            Err(e) => return classify(&e),
        };
        let mut skipped = Vec::new();
        let screened = screen_addresses(asked, domain, rtype, &lookup.answers, &mut skipped);
        warn_skipped(asked, &skipped);
        match screened {
            Ok(Screened { found: ips, ttl }) => self.records_or_nodata(
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                ttl,
                notes,
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
    /// beside a failed SRV question. The schedule then keeps every address of the last set (it
    /// cannot tell which came from the failed target) and adds the new ones.
    async fn srv(
        &self,
        asked: &Name,
        domain: &Name,
        family: IpFamily,
        notes: &Notes,
    ) -> Vec<(Question, Answer)> {
        let lookup = match self.lookup(asked, RecordType::SRV, notes).await {
            Ok(lookup) => lookup,
            Err(e) => return vec![(Question::Srv, classify(&e))],
        };
        let mut skipped = Vec::new();
        let screened = screen_srv(asked, domain, &lookup.answers, &mut skipped);
        let Screened {
            found: mut wanted,
            ttl,
        } = match screened {
            Ok(screened) => screened,
            Err(refused) => {
                warn_skipped(asked, &skipped);
                refused.warn(asked, domain);
                return vec![(Question::Srv, Answer::Empty(Negative::NoData))];
            }
        };
        // At most the cap of records, the same ones every time; so at most that many targets,
        // each found in O(1) among the additional records.
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.len() > self.max_endpoints {
            notes.cut(wanted.len());
            wanted.truncate(self.max_endpoints);
        }
        let targets: HashSet<&Name> = wanted.iter().map(|(t, _)| *t).collect();
        let mut ips: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
        for r in &lookup.additionals {
            let Some(ip) = r.data.ip_addr() else { continue };
            let Some(target) = targets.get(&r.name) else {
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
        let records = self.records_or_nodata(addrs, ttl, notes);
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

    /// The records of one answer, sorted and without duplicates, at most the cap of them (the
    /// lowest, so that the same ones are kept every time); `notes` hears of a cut.
    fn records_or_nodata(&self, mut addrs: Vec<SocketAddr>, ttl: u32, notes: &Notes) -> Answer {
        if addrs.is_empty() {
            return Answer::Empty(Negative::NoData);
        }
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.len() > self.max_endpoints {
            notes.cut(addrs.len());
            addrs.truncate(self.max_endpoints);
        }
        Answer::Records {
            addrs,
            ttl: Duration::from_secs(u64::from(ttl)),
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
        // A target's answers are small; whether one came over TCP or was cut is not reported.
        let notes = Notes::default();
        let answers = family
            .each_question(|question| self.addresses(target, domain, question, 0, &notes))
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

/// Sorts a resolver error into authoritative-empty or transient.
fn classify(err: &NetError) -> Answer {
    if err.is_nx_domain() {
        return Answer::Empty(Negative::NxDomain);
    }
    if err.is_no_records_found() {
        return Answer::Empty(Negative::NoData);
    }
    let kind = match err {
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
mod tests;
