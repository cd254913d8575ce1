//! The only file that touches hickory: builds the resolver and turns its answers into
//! [`schedule::Answer`]s.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    lookup::Lookup,
    net::{DnsError, NetError, NoRecords, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData, RecordType},
    },
};

use crate::{
    error::Error,
    schedule::{Answer, Failure, FailureKind, Negative, Part},
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
    fn parts(self) -> &'static [Part] {
        match self {
            IpFamily::Both => &[Part::V4, Part::V6],
            IpFamily::V4 => &[Part::V4],
            IpFamily::V6 => &[Part::V6],
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

/// A DNS resolver with no cache, bounded per-query time and no search list.
#[derive(Clone, Debug)]
pub(crate) struct Dns {
    resolver: TokioResolver,
    /// An outer bound on one lookup, in case the resolver's own timers overrun.
    deadline: Duration,
}

/// The DNS knobs a [`Builder`](crate::Builder) passes down.
#[derive(Clone, Debug)]
pub(crate) struct DnsConfig {
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) attempts: usize,
}

impl Dns {
    pub(crate) fn new(config: &DnsConfig) -> Result<Self, Error> {
        let tune = |o: &mut ResolverOpts| {
            o.timeout = config.timeout;
            o.attempts = config.attempts.saturating_sub(1);
            // Never serve a stale pod set from a cache.
            o.cache_size = 0;
            o.use_hosts_file = ResolveHosts::Never;
            o.edns0 = true;
            o.preserve_intermediates = true;
        };
        let resolver = if config.nameservers.is_empty() {
            let mut builder =
                TokioResolver::builder_tokio().map_err(|e| Error::SystemConfig(Box::new(e)))?;
            tune(builder.options_mut());
            builder.build()
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|sa| {
                    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                    udp.port = sa.port();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut opts = ResolverOpts::default();
            tune(&mut opts);
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(opts)
            .build()
        }
        .map_err(|e| Error::SystemConfig(Box::new(e)))?;
        // Every try may take the timeout, and a truncated answer retried over TCP shares it.
        let deadline = config.timeout * (config.attempts.max(1) as u32 + 1);
        Ok(Self { resolver, deadline })
    }

    /// Runs one resolution: one answer per part queried, and whether an answer was too large
    /// for UDP (so it came over TCP).
    pub(crate) async fn resolve(&self, query: &Query) -> (Vec<(Part, Answer)>, bool) {
        let answers = match query {
            Query::Addresses { fqdn, port, family } => {
                let lookup = |part| async move { (part, self.addresses(fqdn, part, *port).await) };
                match family {
                    IpFamily::Both => {
                        let (v4, v6) = tokio::join!(lookup(Part::V4), lookup(Part::V6));
                        vec![v4, v6]
                    }
                    IpFamily::V4 => vec![lookup(Part::V4).await],
                    IpFamily::V6 => vec![lookup(Part::V6).await],
                }
            }
            Query::Srv { name, family } => vec![(Part::Srv, self.srv(name, *family).await)],
        };
        let name = match query {
            Query::Addresses { fqdn, .. } => fqdn,
            Query::Srv { name, .. } => name,
        };
        let over_udp = answers.iter().any(|(part, answer)| match answer {
            Answer::Records { addrs, .. } => wire_size(*part, name, addrs.len()) > UDP_PAYLOAD,
            _ => false,
        });
        (answers, over_udp)
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Lookup, NetError> {
        match tokio::time::timeout(self.deadline, self.resolver.lookup(name, rtype)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout),
        }
    }

    async fn addresses(&self, fqdn: &str, part: Part, port: u16) -> Answer {
        let rtype = match part {
            Part::V6 => RecordType::AAAA,
            _ => RecordType::A,
        };
        match self.lookup(fqdn, rtype).await {
            Ok(lookup) => {
                let mut ttl = u32::MAX;
                let addrs: Vec<SocketAddr> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| {
                        let ip = match (&r.data, rtype) {
                            (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
                            (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
                            _ => return None,
                        };
                        ttl = ttl.min(r.ttl);
                        Some(SocketAddr::new(ip, port))
                    })
                    .collect();
                records_or_nodata(addrs, ttl)
            }
            Err(e) => classify(&e),
        }
    }

    /// SRV of a named port. Targets come from the additional section when it is there, and
    /// are resolved otherwise (hickory may not return it).
    async fn srv(&self, name: &str, family: IpFamily) -> Answer {
        let lookup = match self.lookup(name, RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) => return classify(&e),
        };
        let mut glue: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
        for r in lookup.additionals() {
            if let Some(ip) = r.data.ip_addr() {
                glue.entry(&r.name).or_default().push(ip);
            }
        }
        let mut ttl = u32::MAX;
        let mut addrs = Vec::new();
        for r in lookup.answers() {
            let RData::SRV(srv) = &r.data else { continue };
            ttl = ttl.min(r.ttl);
            let ips = match glue.get(&srv.target) {
                Some(ips) => ips.clone(),
                None => match self.target_ips(&srv.target.to_string(), family).await {
                    Ok(ips) => ips,
                    Err(failure) => return Answer::Failed(failure),
                },
            };
            addrs.extend(
                ips.into_iter()
                    .filter(|ip| family.admits(*ip))
                    .map(|ip| SocketAddr::new(ip, srv.port)),
            );
        }
        records_or_nodata(addrs, ttl)
    }

    /// The addresses of one SRV target; a target with no records contributes none.
    async fn target_ips(&self, target: &str, family: IpFamily) -> Result<Vec<IpAddr>, Failure> {
        let mut ips = Vec::new();
        for &part in family.parts() {
            match self.addresses(target, part, 0).await {
                Answer::Records { addrs, .. } => ips.extend(addrs.iter().map(|a| a.ip())),
                Answer::Empty(_) => {}
                Answer::Failed(failure) => return Err(failure),
            }
        }
        Ok(ips)
    }
}

/// The EDNS payload size hickory advertises: a larger answer is truncated over UDP and
/// retried over TCP.
const UDP_PAYLOAD: usize = 1232;

/// An estimate of an answer's size on the wire (hickory does not say which transport
/// answered): header, question, OPT record, and each record with a compressed owner name.
fn wire_size(part: Part, name: &str, records: usize) -> usize {
    let per_record = match part {
        Part::V4 => 2 + 10 + 4,
        Part::V6 => 2 + 10 + 16,
        // SRV rdata plus a target about as long as the name, and the target's A record.
        Part::Srv => (2 + 10 + 6 + name.len()) + (2 + 10 + 4),
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
    use super::*;

    #[test]
    fn wire_size_matches_measured_truncation_points() {
        // hickory-server truncates an A answer for this name at 73 records with EDNS 1232.
        let name = "big.ns27.svc.cluster.local.";
        assert!(wire_size(Part::V4, name, 70) <= UDP_PAYLOAD);
        assert!(wire_size(Part::V4, name, 75) > UDP_PAYLOAD);
        assert!(wire_size(Part::V6, name, 45) > UDP_PAYLOAD);
        assert!(wire_size(Part::V4, name, 3) < 200);
    }
}
