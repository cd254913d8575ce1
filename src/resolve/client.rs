//! How a query reaches the nameservers: over UDP on a socket per nameserver that several
//! queries share ([`SharedUdp`], replaced after `dns_queries_per_socket` queries), asked from
//! the refresh loop itself, and over TCP (when configured, or when a UDP answer comes back
//! truncated) through hickory's `NameServerPool`.
//!
//! UDP skips the pool on purpose. The pool wraps each UDP query in a `DnsExchange`, a background
//! task fed through a channel, and shares each answer between concurrent identical queries by
//! cloning it; a refresh loop asks one question at a time and needs neither. With 1,000
//! Services the pool and its exchange were a fifth of discovery's CPU, and a socket opened and
//! closed per query another fifth of what was left (BENCHMARKS.md). Messages are hickory's to
//! encode and decode. What is ours is the socket's reuse (see [`SharedUdp`]) and the order of
//! the nameservers: each in turn, from the one that answered last, moving on after a timeout,
//! an I/O error or an answer of SERVFAIL, REFUSED or another error code; an answer, or an
//! authoritative NXDOMAIN or no-data, ends the query.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use hickory_resolver::{
    NameServerPool,
    net::{
        DnsError, NetError,
        runtime::TokioRuntimeProvider,
        xfer::{DnsHandle, FirstAnswer, RetryDnsHandle},
    },
    proto::op::{DnsRequest, DnsRequestOptions, DnsResponse, Query},
};

use super::udp::SharedUdp;

/// Asks the nameservers; see the module's docs.
pub(super) struct Client {
    /// One UDP socket per nameserver, in the configured order; empty for TCP only.
    udp: Vec<SharedUdp>,
    /// How long one try waits for its answer.
    timeout: Duration,
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
        queries_per_socket: usize,
        tcp: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
        options: DnsRequestOptions,
    ) -> Self {
        let udp = udp
            .iter()
            .map(|addr| SharedUdp::new(*addr, queries_per_socket))
            .collect();
        Self {
            udp,
            timeout,
            preferred: AtomicUsize::new(0),
            rounds: rounds.max(1),
            tcp,
            options,
        }
    }

    /// The answer to `query`, or why there is none (NXDOMAIN and no-data included, as hickory's
    /// errors).
    pub(super) async fn lookup(&self, query: Query) -> Result<DnsResponse, NetError> {
        if self.udp.is_empty() {
            return self.over_tcp(query).await;
        }
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = NetError::NoConnections;
        for i in (0..self.rounds * self.udp.len()).map(|i| (first + i) % self.udp.len()) {
            let request = DnsRequest::from_query(query.clone(), self.options);
            let answer = tokio::time::timeout(self.timeout, self.udp[i].exchange(request)).await;
            match answer.unwrap_or(Err(NetError::Timeout)) {
                Ok(response) if response.truncation => return self.over_tcp(query).await,
                Ok(response) => match DnsError::from_response(response) {
                    // SERVFAIL, REFUSED and the other error codes: the next nameserver.
                    Err(e) if !matches!(e, DnsError::NoRecordsFound(_)) => last = e.into(),
                    // An answer, NXDOMAIN or no-data: this nameserver answered.
                    answered => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return answered.map_err(NetError::from);
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn over_tcp(&self, query: Query) -> Result<DnsResponse, NetError> {
        self.tcp.lookup(query, self.options).first_answer().await
    }
}
