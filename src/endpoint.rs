//! How every pod's tonic [`Endpoint`] is made: the [`EndpointTemplate`] that both channel
//! kinds and the health watchers dial with, and its HTTP/2 keepalive setting.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use tonic::transport::Endpoint;

/// A user hook applied to every pod's [`Endpoint`] after our own settings.
pub(crate) type Customize = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// HTTP/2 keepalive: PING frames that notice a dead peer behind an open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Http2Keepalive {
    /// Time between PINGs.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub interval: Duration,
    /// How long to wait for a PING's answer before closing the connection.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub timeout: Duration,
    /// Whether to PING a connection with no call in flight.
    #[cfg_attr(feature = "serde", serde(default))]
    pub while_idle: bool,
}

impl Http2Keepalive {
    /// PINGs every `interval`, closing the connection when one goes unanswered for `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            while_idle: false,
        }
    }

    /// Also PING idle connections (servers may answer too-frequent idle PINGs with GOAWAY).
    pub fn while_idle(self, enabled: bool) -> Self {
        Self {
            while_idle: enabled,
            ..self
        }
    }
}

/// How every pod's [`Endpoint`] is made.
#[derive(Clone)]
pub(crate) struct EndpointTemplate {
    /// The Service's DNS name (no trailing dot), for TLS verification and `:authority`.
    pub(crate) server_name: Option<String>,
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) http2_keepalive: Option<Http2Keepalive>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) customize: Option<Customize>,
}

impl fmt::Debug for EndpointTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTemplate")
            .field("server_name", &self.server_name)
            .field("tls", &self.uses_tls())
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("http2_keepalive", &self.http2_keepalive)
            .field("request_timeout", &self.request_timeout)
            .field("customize", &self.customize.as_ref().map(|_| ".."))
            .finish()
    }
}

impl EndpointTemplate {
    /// Whether endpoints are dialed with TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        return self.tls.is_some();
        #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
        return false;
    }

    /// The endpoint of the pod at `addr` (IPv6 bracketed, as `SocketAddr` prints it). With TLS
    /// it is `https`, and the certificate is verified against the Service's DNS name, which
    /// is also the `:authority`, as a client of a ClusterIP Service would see it.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
        self.build(addr, true)
    }

    /// The endpoint of the pod at `addr` without the connect timeout, for a connector that
    /// applies it itself (so that a timeout stays a connect error).
    pub(crate) fn endpoint_without_connect_timeout(
        &self,
        addr: SocketAddr,
    ) -> Result<Endpoint, tonic::transport::Error> {
        self.build(addr, false)
    }

    fn build(
        &self,
        addr: SocketAddr,
        connect_timeout: bool,
    ) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.uses_tls() { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .expect("a socket address is a valid URI authority");
        let mut ep = Endpoint::from(uri).tcp_keepalive(self.tcp_keepalive);
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        if let Some(tls) = &self.tls {
            let mut tls = tls.clone();
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
                let origin = http::Uri::builder()
                    .scheme("https")
                    .authority(format!("{name}:{}", addr.port()))
                    .path_and_query("/")
                    .build()
                    .expect("a validated Service name is a valid URI authority");
                ep = ep.origin(origin);
            }
            ep = ep.tls_config(tls)?;
        }
        if let Some(t) = self.connect_timeout.filter(|_| connect_timeout) {
            ep = ep.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            ep = ep.timeout(t);
        }
        if let Some(k) = self.http2_keepalive {
            ep = ep
                .http2_keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        Ok(match &self.customize {
            Some(f) => f(ep),
            None => ep,
        })
    }
}

/// A plain-text template with a 1 s connect timeout and nothing else, for unit tests.
#[cfg(test)]
pub(crate) fn plain_template() -> EndpointTemplate {
    EndpointTemplate {
        server_name: None,
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        tls: None,
        connect_timeout: Some(Duration::from_secs(1)),
        tcp_keepalive: None,
        http2_keepalive: None,
        request_timeout: None,
        customize: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let ep = plain_template()
            .endpoint("[fd00::1]:8080".parse().unwrap())
            .unwrap();
        assert_eq!(ep.uri().to_string(), "http://[fd00::1]:8080/");
        assert_eq!(ep.get_connect_timeout(), Some(Duration::from_secs(1)));
    }
}
