//! [`Config`]: the registry's settings as data (feature `serde`), for Kubernetes users who
//! configure through ConfigMaps and environment variables. It goes through the same
//! validation, and gives the same errors, as the [`Builder`].

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use crate::{
    builder::Builder,
    discovery::{DnsTransport, IpFamily},
    error::Error,
    health::HealthCheck,
    registry::Registry,
    service::{ClusterDomain, HeadlessService},
};

/// The registry's settings, deserializable with serde. Every field but `services` is
/// optional and defaults as the [`Builder`] does; durations are strings such as `500ms`,
/// `5s` or `2m`. Each value must be in the range its [`Builder`] method documents, and each
/// service's DNS name must fit in 253 characters with the cluster domain.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// let config: k8s_headless_svc::Config = serde::Deserialize::deserialize(
///     serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
///         [("services", vec!["user-svc.default:8080"])].into_iter(),
///     ),
/// ).unwrap();
/// let builder = config.builder()?; // then .build() inside a tokio runtime
/// # }
/// # Ok::<(), k8s_headless_svc::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// `SERVICE.NAMESPACE:PORT` of each service (PORT a number or a port name).
    pub services: Vec<String>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: Option<String>,
    /// Nameservers as `ADDR:PORT`; none means the system configuration.
    pub nameservers: Vec<SocketAddr>,
    /// `both`, `v4` or `v6`.
    pub ip_family: Option<String>,
    /// Time between resolutions (1ms to 1h).
    pub refresh_interval: Option<String>,
    /// Jitter as a fraction, e.g. `0.1` (at least 0, below 1).
    pub jitter: Option<f64>,
    /// Per-query DNS timeout (1ms to 1m).
    pub dns_timeout: Option<String>,
    /// Tries per DNS query (1 to 10).
    pub dns_attempts: Option<usize>,
    /// `udp` (with TCP when truncated) or `tcp`.
    pub dns_transport: Option<String>,
    /// Connect timeout to a pod (1ms to 1h); `off` turns it off.
    pub connect_timeout: Option<String>,
    /// Health checks.
    pub health: Option<HealthConfig>,
    /// How long a load-aware call waits for a ready pod (1ms to 1h).
    pub failfast: Option<String>,
}

/// The `health` section of a [`Config`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `grpc`, `tcp` or `off`.
    pub check: Option<String>,
    /// The gRPC health service name asked about (`""`).
    pub service: Option<String>,
    /// Time between probes (1ms to 1h).
    pub interval: Option<String>,
    /// Probe timeout (1ms to 1h).
    pub timeout: Option<String>,
    /// Failed probes that eject an endpoint (1 to 100).
    pub unhealthy_after: Option<u32>,
    /// Good probes that re-admit it (1 to 100).
    pub healthy_after: Option<u32>,
    /// The most endpoints ejected at once, as a share (0 to 1).
    pub max_ejection: Option<f64>,
}

fn duration(option: &'static str, value: &str) -> Result<Duration, Error> {
    humantime::parse_duration(value)
        .map_err(|e| Error::config(option, format!("{value:?} is not a duration: {e}")))
}

impl Config {
    /// A [`Builder`] with these settings; each value is validated as the builder validates
    /// it, and the services and cluster domain as their types do.
    pub fn builder(&self) -> Result<Builder, Error> {
        let services = self
            .services
            .iter()
            .map(|s| s.parse::<HeadlessService>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut b = Registry::builder()
            .services(services)
            .nameservers(self.nameservers.iter().copied());
        if let Some(domain) = &self.cluster_domain {
            b = b.cluster_domain(domain.parse::<ClusterDomain>()?);
        }
        if let Some(family) = &self.ip_family {
            b = b.ip_family(match family.as_str() {
                "both" => IpFamily::Both,
                "v4" => IpFamily::V4,
                "v6" => IpFamily::V6,
                other => {
                    return Err(Error::config(
                        "ip_family",
                        format!("expected both, v4 or v6, got {other:?}"),
                    ));
                }
            });
        }
        if let Some(d) = &self.refresh_interval {
            b = b.refresh_interval(duration("refresh_interval", d)?);
        }
        if let Some(j) = self.jitter {
            b = b.jitter(j);
        }
        if let Some(d) = &self.dns_timeout {
            b = b.dns_timeout(duration("dns_timeout", d)?);
        }
        if let Some(n) = self.dns_attempts {
            b = b.dns_attempts(n);
        }
        if let Some(transport) = &self.dns_transport {
            b = b.dns_transport(match transport.as_str() {
                "udp" => DnsTransport::Udp,
                "tcp" => DnsTransport::Tcp,
                other => {
                    return Err(Error::config(
                        "dns_transport",
                        format!("expected udp or tcp, got {other:?}"),
                    ));
                }
            });
        }
        if let Some(d) = &self.connect_timeout {
            b = b.connect_timeout(match d.as_str() {
                "off" => None,
                d => Some(duration("connect_timeout", d)?),
            });
        }
        if let Some(d) = &self.failfast {
            b = b.failfast(duration("failfast", d)?);
        }
        if let Some(h) = &self.health {
            b = h.apply(b)?;
        }
        b.validate()?;
        Ok(b)
    }
}

impl HealthConfig {
    fn apply(&self, mut b: Builder) -> Result<Builder, Error> {
        let service = self.service.clone().unwrap_or_default();
        if let Some(check) = &self.check {
            b = b.health_check(match check.as_str() {
                "grpc" => HealthCheck::grpc(service),
                "tcp" => HealthCheck::Tcp,
                "off" => HealthCheck::Off,
                other => {
                    return Err(Error::config(
                        "health.check",
                        format!("expected grpc, tcp or off, got {other:?}"),
                    ));
                }
            });
        }
        let (interval, timeout) = b.health_timing();
        let interval = match &self.interval {
            Some(d) => duration("health.interval", d)?,
            None => interval,
        };
        let timeout = match &self.timeout {
            Some(d) => duration("health.timeout", d)?,
            None => timeout,
        };
        b = b.health_interval(interval, timeout);
        let (k, m) = b.health_counts();
        b = b.health_thresholds(
            self.unhealthy_after.unwrap_or(k),
            self.healthy_after.unwrap_or(m),
        );
        if let Some(share) = self.max_ejection {
            b = b.max_ejection(share);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[&str]) -> Config {
        Config {
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn same_errors_as_the_builder() {
        let err = config(&["User.default:80"]).builder().unwrap_err();
        assert!(err.is_invalid_spec(), "{err}");
        let mut c = config(&["user-svc.default:80"]);
        c.refresh_interval = Some("0s".into());
        let err = c.builder().unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    option: "refresh_interval",
                    ..
                }
            ),
            "{err}"
        );
        c.refresh_interval = Some("2h".into());
        let err = c.builder().unwrap_err();
        assert!(err.to_string().contains("between 1ms and 1h"), "{err}");
        c.refresh_interval = Some("soon".into());
        assert!(
            c.builder()
                .unwrap_err()
                .to_string()
                .contains("not a duration")
        );
        let mut c = config(&["user-svc.default:80"]);
        c.cluster_domain = Some("Bad_Domain".into());
        assert!(c.builder().unwrap_err().is_invalid_spec());
        let mut c = config(&["user-svc.default:80"]);
        c.health = Some(HealthConfig {
            check: Some("icmp".into()),
            ..HealthConfig::default()
        });
        assert!(
            c.builder()
                .unwrap_err()
                .to_string()
                .contains("health.check")
        );
    }

    #[test]
    fn valid_config_builds_a_builder() {
        let mut c = config(&["user-svc.default:8080", "ledger.billing:grpc"]);
        c.refresh_interval = Some("2s".into());
        c.ip_family = Some("v4".into());
        c.connect_timeout = Some("off".into());
        c.health = Some(HealthConfig {
            check: Some("tcp".into()),
            interval: Some("500ms".into()),
            unhealthy_after: Some(3),
            ..HealthConfig::default()
        });
        let b = c.builder().unwrap();
        assert_eq!(b.health_counts(), (3, 2));
        assert_eq!(b.health_timing().0, Duration::from_millis(500));
    }
}
