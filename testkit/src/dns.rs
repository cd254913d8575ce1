//! An authoritative DNS server in-process: hickory-server on loopback, UDP and TCP on one port,
//! with records the caller changes live and faults injected on demand.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata, ResponseCode},
    rr::{
        LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
        rdata::{A, AAAA, SOA, SRV},
    },
};
use hickory_server::{
    Server,
    net::runtime::{Time, TokioRuntimeProvider},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType},
};
use tokio::net::{TcpListener, UdpSocket};

/// The TTL of records added without one, as CoreDNS's kubernetes plugin answers.
pub const DEFAULT_TTL: u32 = 5;

/// A fault the server injects into every answer until changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer from the zone.
    None,
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Answer nothing at all: the client times out.
    Drop,
    /// Answer NXDOMAIN once, then from the zone again (a CoreDNS flap).
    NxDomainOnce,
    /// Answer NXDOMAIN to everything.
    NxDomain,
}

/// The `name.namespace.svc.cluster.local.` of a Service.
pub fn svc_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local.")
}

/// A running DNS server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    fault: Arc<Mutex<Fault>>,
    queries: Arc<AtomicU64>,
    serial: AtomicU32,
    server: Server<Handler>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Serves `cluster.local.` on `127.0.0.1`, on an ephemeral port shared by UDP and TCP.
    pub async fn start() -> io::Result<Self> {
        Self::start_zone("cluster.local.").await
    }

    /// Serves the zone `origin` (with a trailing dot).
    pub async fn start_zone(origin: &str) -> io::Result<Self> {
        let origin = Name::from_str(origin).map_err(io::Error::other)?;
        let mut zone: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.dns")
                .map_err(io::Error::other)?
                .append_domain(&origin)
                .map_err(io::Error::other)?,
            Name::from_str("hostmaster")
                .map_err(io::Error::other)?
                .append_domain(&origin)
                .map_err(io::Error::other)?,
            1,
            7200,
            1800,
            86400,
            DEFAULT_TTL,
        );
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), DEFAULT_TTL, RData::SOA(soa)),
            1,
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let fault = Arc::new(Mutex::new(Fault::None));
        let queries = Arc::new(AtomicU64::new(0));
        let handler = Handler {
            catalog,
            zone: zone.clone(),
            origin: LowerName::from(&origin),
            fault: fault.clone(),
            queries: queries.clone(),
        };
        let (tcp, udp) = bind_pair().await?;
        let addr = tcp.local_addr()?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        Ok(Self {
            addr,
            zone,
            fault,
            queries,
            serial: AtomicU32::new(2),
            server,
        })
    }

    /// The address to give a resolver (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far (including the ones faults answered or dropped).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    /// Injects `fault` into every answer from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Replaces the A and AAAA records of `name` with `ips` (TTL [`DEFAULT_TTL`]). An empty
    /// list removes them, so the name answers NXDOMAIN when it holds nothing else.
    pub async fn set_addrs(&self, name: &str, ips: &[IpAddr]) {
        self.set_addrs_ttl(name, ips, DEFAULT_TTL).await
    }

    /// [`DnsServer::set_addrs`] with a TTL.
    pub async fn set_addrs_ttl(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        let name = Name::from_str(name).expect("a valid DNS name");
        let serial = self.next_serial();
        let mut v4 = RecordSet::new(name.clone(), RecordType::A, serial);
        let mut v6 = RecordSet::new(name.clone(), RecordType::AAAA, serial);
        for ip in ips {
            match ip {
                IpAddr::V4(ip) => v4.insert(
                    Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))),
                    serial,
                ),
                IpAddr::V6(ip) => v6.insert(
                    Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*ip))),
                    serial,
                ),
            };
        }
        let mut records = self.zone.records_mut().await;
        for set in [v4, v6] {
            let key = RrKey::new(LowerName::from(&name), set.record_type());
            if set.is_empty() {
                records.remove(&key);
            } else {
                records.insert(key, Arc::new(set));
            }
        }
    }

    /// The A and AAAA records of `name` now.
    pub async fn addrs(&self, name: &str) -> Vec<IpAddr> {
        let name = LowerName::from(Name::from_str(name).expect("a valid DNS name"));
        let records = self.zone.records().await;
        [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| records.get(&RrKey::new(name.clone(), t)))
            .flat_map(|set| {
                set.records_without_rrsigs()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Adds one address to `name`.
    pub async fn add_addr(&self, name: &str, ip: IpAddr) {
        let mut ips = self.addrs(name).await;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        self.set_addrs(name, &ips).await
    }

    /// Removes one address from `name`.
    pub async fn remove_addr(&self, name: &str, ip: IpAddr) {
        let mut ips = self.addrs(name).await;
        ips.retain(|a| *a != ip);
        self.set_addrs(name, &ips).await
    }

    /// Replaces the SRV records of `name` (e.g. `_grpc._tcp.user-svc.default.svc.cluster.local.`)
    /// with one record per target, all on `port`.
    pub async fn set_srv(&self, name: &str, port: u16, targets: &[&str]) {
        let name = Name::from_str(name).expect("a valid DNS name");
        let serial = self.next_serial();
        let mut set = RecordSet::new(name.clone(), RecordType::SRV, serial);
        for target in targets {
            let target = Name::from_str(target).expect("a valid DNS name");
            let srv = SRV::new(0, 100, port, target);
            set.insert(
                Record::from_rdata(name.clone(), DEFAULT_TTL, RData::SRV(srv)),
                serial,
            );
        }
        let key = RrKey::new(LowerName::from(&name), RecordType::SRV);
        let mut records = self.zone.records_mut().await;
        if set.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, Arc::new(set));
        }
    }

    /// Stops serving and waits until the sockets are closed.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }

    fn next_serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::SeqCst)
    }
}

/// Binds TCP on an ephemeral port, then UDP on the same one; retries when UDP's is taken.
async fn bind_pair() -> io::Result<(TcpListener, UdpSocket)> {
    let mut last = None;
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        match UdpSocket::bind(tcp.local_addr()?).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

struct Handler {
    catalog: Catalog,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    origin: LowerName,
    fault: Arc<Mutex<Fault>>,
    queries: Arc<AtomicU64>,
}

fn info(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let fault = {
            let mut fault = self.fault.lock().unwrap();
            let now = *fault;
            if now == Fault::NxDomainOnce {
                *fault = Fault::None;
            }
            now
        };
        let code = match fault {
            Fault::None => return self.catalog.handle_request::<R, T>(request, response).await,
            Fault::Drop => return info(request, ResponseCode::ServFail),
            Fault::ServFail => ResponseCode::ServFail,
            Fault::Refused => ResponseCode::Refused,
            Fault::NxDomainOnce | Fault::NxDomain => {
                let soa: Vec<Record> = {
                    let records = self.zone.records().await;
                    records
                        .get(&RrKey::new(self.origin.clone(), RecordType::SOA))
                        .map(|set| set.records_without_rrsigs().cloned().collect())
                        .unwrap_or_default()
                };
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::NXDomain;
                metadata.authoritative = true;
                let message = MessageResponseBuilder::from_message_request(request).build(
                    metadata,
                    [],
                    [],
                    soa.iter(),
                    [],
                );
                return response
                    .send_response(message)
                    .await
                    .unwrap_or_else(|_| info(request, ResponseCode::ServFail));
            }
        };
        let edns = request.edns.as_ref().map(|q| {
            let mut e = Edns::new();
            e.set_max_payload(q.max_payload().max(512));
            e
        });
        let message = MessageResponseBuilder::new(&request.queries, edns.as_ref())
            .error_msg(&request.metadata, code);
        response
            .send_response(message)
            .await
            .unwrap_or_else(|_| info(request, code))
    }
}
