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
//! authoritative NXDOMAIN or no-data, ends the query. An answer that is a known one again
//! is not decoded ([`super::known`]).

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

use super::{
    known::{KnownAnswer, Reply},
    udp::SharedUdp,
};

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

    /// Whether queries go over UDP first, where an answer can be [`Reply::Same`].
    pub(super) fn over_udp(&self) -> bool {
        !self.udp.is_empty()
    }

    /// The answer to `query`, or why there is none (NXDOMAIN and no-data included, as hickory's
    /// errors). An answer over UDP that `known` matches comes back as [`Reply::Same`].
    pub(super) async fn lookup<'k>(
        &self,
        query: Query,
        known: Option<&'k KnownAnswer>,
    ) -> Result<Reply<'k>, NetError> {
        if self.udp.is_empty() {
            return self.over_tcp(query).await.map(Reply::New);
        }
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = NetError::NoConnections;
        for i in (0..self.rounds * self.udp.len()).map(|i| (first + i) % self.udp.len()) {
            let request = DnsRequest::from_query(query.clone(), self.options);
            let answer = self.udp[i].exchange(request, known);
            let answer = tokio::time::timeout(self.timeout, answer).await;
            match answer.unwrap_or(Err(NetError::Timeout)) {
                Ok(Reply::Same(known)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(Reply::Same(known));
                }
                Ok(Reply::New(response)) if response.truncation => {
                    return self.over_tcp(query).await.map(Reply::New);
                }
                Ok(Reply::New(response)) => match DnsError::from_response(response) {
                    // SERVFAIL, REFUSED and the other error codes: the next nameserver.
                    Err(e) if !matches!(e, DnsError::NoRecordsFound(_)) => last = e.into(),
                    // An answer, NXDOMAIN or no-data: this nameserver answered.
                    answered => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return answered.map(Reply::New).map_err(NetError::from);
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
