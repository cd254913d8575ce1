//! An authoritative DNS server in-process: hickory-server on loopback, UDP and TCP on one port,
//! with records the caller changes live and faults injected on demand.

use std::{
    collections::{HashMap, HashSet},
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
        rdata::{A, AAAA, CNAME, SOA, SRV},
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

/// One record of a raw answer, sent as it is: any owner, any TTL, any data, duplicates
/// included. The zone's own record sets cannot hold such answers (they are de-duplicated and
/// owned by the name asked); a hostile or broken server sends them anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The owner name, with a trailing dot.
    pub owner: String,
    /// The TTL, in seconds.
    pub ttl: u32,
    /// The record's data.
    pub data: RawData,
}

/// The data of a [`RawRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawData {
    /// An A record (IPv4) or an AAAA record (IPv6).
    Addr(IpAddr),
    /// A CNAME to this name (with a trailing dot).
    Cname(String),
    /// An SRV record; `target` is a name with a trailing dot, or `.`.
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Share among records of one priority.
        weight: u16,
        /// The port to call.
        port: u16,
        /// The host to call, or `.` for "not available here".
        target: String,
    },
}

impl RawRecord {
    /// An A or AAAA record of `owner`.
    pub fn addr(owner: &str, ip: IpAddr, ttl: u32) -> Self {
        Self {
            owner: owner.to_owned(),
            ttl,
            data: RawData::Addr(ip),
        }
    }

    /// A CNAME from `owner` to `target`.
    pub fn cname(owner: &str, target: &str, ttl: u32) -> Self {
        Self {
            owner: owner.to_owned(),
            ttl,
            data: RawData::Cname(target.to_owned()),
        }
    }

    /// An SRV record of `owner` (priority 0, weight 100, TTL [`DEFAULT_TTL`]).
    pub fn srv(owner: &str, port: u16, target: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            ttl: DEFAULT_TTL,
            data: RawData::Srv {
                priority: 0,
                weight: 100,
                port,
                target: target.to_owned(),
            },
        }
    }

    fn to_record(&self) -> Record {
        let owner = Name::from_str(&self.owner).expect("a valid DNS name");
        let name = |s: &str| Name::from_str(s).expect("a valid DNS name");
        let data = match &self.data {
            RawData::Addr(IpAddr::V4(ip)) => RData::A(A(*ip)),
            RawData::Addr(IpAddr::V6(ip)) => RData::AAAA(AAAA(*ip)),
            RawData::Cname(target) => RData::CNAME(CNAME(name(target))),
            RawData::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(*priority, *weight, *port, name(target))),
        };
        Record::from_rdata(owner, self.ttl, data)
    }
}

/// Answers and faults set for one name, ahead of the zone.
#[derive(Default)]
struct Overrides {
    /// Raw answer sections, sent for every question about the name.
    answers: HashMap<LowerName, Vec<Record>>,
    /// Faults for questions about the name.
    faults: HashMap<LowerName, Fault>,
    /// How long to hold every answer about the name.
    delays: HashMap<LowerName, Duration>,
}

/// Requests held by a delay now, and the most held at once.
#[derive(Default)]
struct Held {
    now: AtomicU64,
    peak: AtomicU64,
}

/// A running DNS server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    fault: Arc<Mutex<Fault>>,
    overrides: Arc<Mutex<Overrides>>,
    held: Arc<Held>,
    queries: Arc<AtomicU64>,
    counts: Arc<Counts>,
    serial: AtomicU32,
    server: Server<Handler>,
}

/// Queries received, by type and by transport.
#[derive(Debug, Default)]
struct Counts {
    a: AtomicU64,
    aaaa: AtomicU64,
    tcp: AtomicU64,
    udp: Mutex<UdpSources>,
}

/// The UDP queries received and the source ports they came from.
#[derive(Debug, Default)]
struct UdpSources {
    queries: u64,
    ports: HashSet<u16>,
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
        let overrides = Arc::new(Mutex::new(Overrides::default()));
        let held = Arc::new(Held::default());
        let queries = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(Counts::default());
        let handler = Handler {
            catalog,
            zone: zone.clone(),
            origin: LowerName::from(&origin),
            fault: fault.clone(),
            overrides: overrides.clone(),
            held: held.clone(),
            queries: queries.clone(),
            counts: counts.clone(),
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
            overrides,
            held,
            queries,
            counts,
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

    /// A queries received so far.
    pub fn a_queries(&self) -> u64 {
        self.counts.a.load(Ordering::SeqCst)
    }

    /// AAAA queries received so far.
    pub fn aaaa_queries(&self) -> u64 {
        self.counts.aaaa.load(Ordering::SeqCst)
    }

    /// Queries received over TCP so far (a client retries there when a UDP answer was
    /// truncated).
    pub fn tcp_queries(&self) -> u64 {
        self.counts.tcp.load(Ordering::SeqCst)
    }

    /// UDP queries received so far, and how many distinct source ports they came from, both
    /// counted together.
    pub fn udp_sources(&self) -> (u64, usize) {
        let udp = self.counts.udp.lock().unwrap();
        (udp.queries, udp.ports.len())
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
        self.replace_set(&name, RecordType::SRV, set).await;
    }

    /// Replaces the SRV records of `name` with `records`, each one as given (priority, weight,
    /// port and target, `.` included); the owner of each record is `name`.
    pub async fn set_srv_records(&self, name: &str, records: &[RawRecord]) {
        let name = Name::from_str(name).expect("a valid DNS name");
        let serial = self.next_serial();
        let mut set = RecordSet::new(name.clone(), RecordType::SRV, serial);
        for raw in records {
            let mut record = raw.to_record();
            assert_eq!(record.record_type(), RecordType::SRV, "{raw:?} is no SRV");
            record.name = name.clone();
            set.insert(record, serial);
        }
        self.replace_set(&name, RecordType::SRV, set).await;
    }

    /// Makes `name` a CNAME to `target` in the zone (TTL [`DEFAULT_TTL`]), removing its A and
    /// AAAA records; `None` removes the CNAME. The server follows the chain inside its zone;
    /// a resolver follows it out of the zone with a query of its own.
    pub async fn set_cname(&self, name: &str, target: Option<&str>) {
        self.set_addrs(name, &[]).await;
        let name = Name::from_str(name).expect("a valid DNS name");
        let key = RrKey::new(LowerName::from(&name), RecordType::CNAME);
        let serial = self.next_serial();
        let mut records = self.zone.records_mut().await;
        match target {
            Some(target) => {
                let target = Name::from_str(target).expect("a valid DNS name");
                let mut set = RecordSet::new(name.clone(), RecordType::CNAME, serial);
                set.insert(
                    Record::from_rdata(name, DEFAULT_TTL, RData::CNAME(CNAME(target))),
                    serial,
                );
                records.insert(key, Arc::new(set));
            }
            None => {
                records.remove(&key);
            }
        }
    }

    /// Answers every question about `name` (any type, in the zone or not) with exactly
    /// `records` as the answer section, NOERROR, instead of the zone's records; an empty slice
    /// answers NOERROR with no records. Faults still come first.
    pub fn set_raw_answer(&self, name: &str, records: &[RawRecord]) {
        let records = records.iter().map(RawRecord::to_record).collect();
        self.overrides
            .lock()
            .unwrap()
            .answers
            .insert(lower(name), records);
    }

    /// Answers questions about `name` from the zone again.
    pub fn clear_raw_answer(&self, name: &str) {
        self.overrides.lock().unwrap().answers.remove(&lower(name));
    }

    /// Injects `fault` into the answers about `name` alone ([`Fault::None`] clears it); a
    /// fault set with [`DnsServer::set_fault`] comes first.
    pub fn set_name_fault(&self, name: &str, fault: Fault) {
        let mut overrides = self.overrides.lock().unwrap();
        match fault {
            Fault::None => overrides.faults.remove(&lower(name)),
            fault => overrides.faults.insert(lower(name), fault),
        };
    }

    /// Holds every answer about `name` for `delay` before sending it ([`Duration::ZERO`]
    /// clears it).
    pub fn set_name_delay(&self, name: &str, delay: Duration) {
        let mut overrides = self.overrides.lock().unwrap();
        if delay.is_zero() {
            overrides.delays.remove(&lower(name));
        } else {
            overrides.delays.insert(lower(name), delay);
        }
    }

    /// The most requests held by [`DnsServer::set_name_delay`] at the same time so far: above
    /// one only if a client asked about delayed names concurrently.
    pub fn peak_held(&self) -> u64 {
        self.held.peak.load(Ordering::SeqCst)
    }

    /// Stops serving and waits until the sockets are closed.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }

    fn next_serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::SeqCst)
    }

    /// Puts `set` in place of the records of `name` and `rtype` (removes them when empty).
    async fn replace_set(&self, name: &Name, rtype: RecordType, set: RecordSet) {
        let key = RrKey::new(LowerName::from(name), rtype);
        let mut records = self.zone.records_mut().await;
        if set.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, Arc::new(set));
        }
    }
}

fn lower(name: &str) -> LowerName {
    LowerName::from(Name::from_str(name).expect("a valid DNS name"))
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
    overrides: Arc<Mutex<Overrides>>,
    held: Arc<Held>,
    queries: Arc<AtomicU64>,
    counts: Arc<Counts>,
}

/// Counts a held request until dropped.
struct HeldGuard<'a>(&'a Held);

impl<'a> HeldGuard<'a> {
    fn new(held: &'a Held) -> Self {
        let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
        held.peak.fetch_max(now, Ordering::SeqCst);
        Self(held)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers `request` with `raw` as the answer section, NOERROR, authoritative.
async fn send_raw<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    raw: &[Record],
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|q| {
        let mut e = Edns::new();
        e.set_max_payload(q.max_payload().max(512));
        e
    });
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    let message = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        raw.iter(),
        [],
        [],
        [],
    );
    response
        .send_response(message)
        .await
        .unwrap_or_else(|_| info(request, ResponseCode::ServFail))
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
        if request.protocol() == hickory_server::net::xfer::Protocol::Tcp {
            self.counts.tcp.fetch_add(1, Ordering::SeqCst);
        } else {
            let mut udp = self.counts.udp.lock().unwrap();
            udp.queries += 1;
            udp.ports.insert(request.src().port());
        }
        match request.request_info().map(|i| i.query.query_type()) {
            Ok(RecordType::A) => self.counts.a.fetch_add(1, Ordering::SeqCst),
            Ok(RecordType::AAAA) => self.counts.aaaa.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        let asked = request.request_info().ok().map(|i| i.query.name().clone());
        let (delay, raw) = {
            let overrides = self.overrides.lock().unwrap();
            match &asked {
                Some(name) => (
                    overrides.delays.get(name).copied(),
                    overrides.answers.get(name).cloned(),
                ),
                None => (None, None),
            }
        };
        let _held = match delay {
            Some(delay) => {
                let guard = HeldGuard::new(&self.held);
                tokio::time::sleep(delay).await;
                Some(guard)
            }
            None => None,
        };
        let fault = {
            let mut fault = self.fault.lock().unwrap();
            let now = *fault;
            if now == Fault::NxDomainOnce {
                *fault = Fault::None;
            }
            now
        };
        let fault = match (fault, &asked) {
            (Fault::None, Some(name)) => {
                let mut overrides = self.overrides.lock().unwrap();
                let now = overrides.faults.get(name).copied().unwrap_or(Fault::None);
                if now == Fault::NxDomainOnce {
                    overrides.faults.remove(name);
                }
                now
            }
            (fault, _) => fault,
        };
        let code = match fault {
            Fault::None => {
                return match raw {
                    Some(raw) => send_raw(request, response, &raw).await,
                    None => self.catalog.handle_request::<R, T>(request, response).await,
                };
            }
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
