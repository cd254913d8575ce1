//! How a query reaches the nameservers: over UDP with hickory's `UdpClientStream`, a fresh
//! socket on a random port for every query (RFC 5452), and over TCP (when configured, or when a
//! UDP answer comes back truncated) through hickory's `NameServerPool`.
//!
//! UDP skips the pool: the pool wraps each query in a background exchange task and shares
//! answers between identical queries in flight, which a refresh loop asking one question at a
//! time does not need (BENCHMARKS.md, "Where the CPU went"). What is ours is the order of the
//! nameservers: each in turn, from the one that answered last, moving on after a timeout, an
//! I/O error or an answer of SERVFAIL, REFUSED or another error code; an answer, or an
//! authoritative NXDOMAIN or no-data, ends the query.

use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_resolver::{
    NameServerPool,
    net::{
        DnsError, NetError,
        runtime::TokioRuntimeProvider,
        udp::UdpClientStream,
        xfer::{DnsHandle, DnsRequestSender, FirstAnswer, RetryDnsHandle},
    },
    proto::op::{DnsRequest, DnsRequestOptions, DnsResponse, Query},
};

/// An answer, and whether it came over TCP because its UDP answer was truncated.
#[derive(Debug)]
pub(super) struct Answered {
    pub(super) response: DnsResponse,
    pub(super) truncated: bool,
}

/// Asks the nameservers; see the module's docs.
pub(super) struct Client {
    /// One UDP client per nameserver, in the configured order; empty for TCP only.
    udp: Vec<Mutex<UdpClientStream<TokioRuntimeProvider>>>,
    /// The nameserver to ask first: the last one that answered.
    preferred: AtomicUsize,
    /// Rounds over the nameservers.
    rounds: usize,
    /// Every nameserver over TCP.
    tcp: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
    options: DnsRequestOptions,
}

impl Client {
    /// `udp`: the nameservers to ask over UDP, empty for TCP only; `tcp`: the pool for TCP;
    /// `rounds`: how many times each nameserver is tried before a query fails.
    pub(super) fn new(
        udp: &[SocketAddr],
        timeout: Duration,
        rounds: usize,
        tcp: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
        options: DnsRequestOptions,
    ) -> Self {
        let udp = udp
            .iter()
            .map(|addr| {
                Mutex::new(
                    UdpClientStream::builder(*addr, TokioRuntimeProvider::default())
                        .with_timeout(Some(timeout))
                        .build(),
                )
            })
            .collect();
        Self {
            udp,
            preferred: AtomicUsize::new(0),
            rounds: rounds.max(1),
            tcp,
            options,
        }
    }

    /// The answer to `query`, or why there is none (NXDOMAIN and no-data included, as hickory's
    /// errors).
    pub(super) async fn lookup(&self, query: Query) -> Result<Answered, NetError> {
        if self.udp.is_empty() {
            return self.over_tcp(query, false).await;
        }
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = NetError::NoConnections;
        for i in (0..self.rounds * self.udp.len()).map(|i| (first + i) % self.udp.len()) {
            let request = DnsRequest::from_query(query.clone(), self.options);
            // The lock only builds the query's future, which holds no I/O.
            let answer = self.udp[i]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .send_message(request);
            match answer.first_answer().await {
                Ok(response) if response.truncation => return self.over_tcp(query, true).await,
                Ok(response) => match DnsError::from_response(response) {
                    // SERVFAIL, REFUSED and the other error codes: the next nameserver.
                    Err(e) if !matches!(e, DnsError::NoRecordsFound(_)) => last = e.into(),
                    // An answer, NXDOMAIN or no-data: this nameserver answered.
                    answered => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return answered
                            .map(|response| Answered {
                                response,
                                truncated: false,
                            })
                            .map_err(NetError::from);
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn over_tcp(&self, query: Query, truncated: bool) -> Result<Answered, NetError> {
        let response = self.tcp.lookup(query, self.options).first_answer().await?;
        Ok(Answered {
            response,
            truncated,
        })
    }
}
