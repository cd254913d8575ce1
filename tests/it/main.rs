//! Integration tests against real components: an in-process hickory DNS server and tonic
//! pods on loopback. One binary, one module per topic.

mod balanced;
mod discovery;
mod dns_faults;
mod external_dns;
mod health;
mod hostile_dns;
mod hostile_pods;
mod lifecycle;
mod settings;
mod support;
mod tls;
