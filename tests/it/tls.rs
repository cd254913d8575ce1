//! TLS to pods dialed by IP, verified against the Service's DNS name.

use std::net::SocketAddr;

use k8s_headless_svc::{HeadlessService, HealthState};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::support::*;

/// A CA, and a server certificate it signs for `name`: (CA pem, cert pem, key pem).
fn pki(name: &str) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_service_name() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let (ca, cert, key) = pki("user-svc.ns75.svc.cluster.local");
    let first = Pod::start_tls(SocketAddr::new(loopback(75, 2), 0), "tls-0", &cert, &key).unwrap();
    let port = first.addr().port();
    let second =
        Pod::start_tls(SocketAddr::new(loopback(75, 3), port), "tls-1", &cert, &key).unwrap();
    let ips = [first.addr().ip(), second.addr().ip()];
    dns.set_addrs(&svc_fqdn("user-svc", "ns75"), &ips).await;
    // Another Service name on the same pods: its name is not in their certificate.
    dns.set_addrs(&svc_fqdn("impostor", "ns75"), &ips).await;
    let good = HeadlessService::new("user-svc.ns75", port).unwrap();
    let bad = HeadlessService::new("impostor.ns75", port).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
    let registry = builder(&dns)
        .services([good.clone(), bad.clone()])
        .tls(tls)
        .build()
        .unwrap();

    // Health probes run over TLS too: both pods healthy for the right name.
    assert!(
        eventually(SLACK, || async {
            let h = registry.health(&good).unwrap();
            h.len() == 2 && h.iter().all(|e| e.state == HealthState::Healthy)
        })
        .await,
        "{:?}",
        registry.health(&good)
    );
    let (hits, errors) = spread(&registry.channel(&good).unwrap(), 40, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2, "{hits:?}");

    // The wrong name: verification fails, probes fail, calls fail; nothing falls back to
    // plaintext or skips verification.
    assert!(
        eventually(SLACK, || async {
            let h = registry.health(&bad).unwrap();
            h.len() == 2 && h.iter().all(|e| e.state == HealthState::Ejected)
        })
        .await,
        "{:?}",
        registry.health(&bad)
    );
    let (hits, errors) = spread(&registry.channel(&bad).unwrap(), 4, 2).await;
    assert!(hits.is_empty(), "{hits:?}");
    assert_eq!(errors.len(), 4);
}
