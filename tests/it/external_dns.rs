//! The key scenarios against a DNS server no one here wrote: dnsmasq, serving the Service
//! names from a `--hostsdir` whose files it re-reads on change.
//!
//! Ignored by the plain test run, which needs only the Rust toolchain; `.ci/run` installs
//! dnsmasq and runs them with `--ignored`. Asked to run without dnsmasq, they fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_headless_svc::{HeadlessService, Registry};

use crate::support::*;

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Dnsmasq {
    fn binary() -> PathBuf {
        for dir in std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
        {
            let path = PathBuf::from(dir).join("dnsmasq");
            if path.is_file() {
                return path;
            }
        }
        panic!("dnsmasq not found: install Debian's dnsmasq-base (.ci/run does) to run this suite");
    }

    fn start(tag: &str) -> Dnsmasq {
        init_tracing();
        let binary = Self::binary();
        let dir = std::env::temp_dir().join(format!(
            "k8s-headless-svc-dnsmasq-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hosts")).unwrap();
        for _ in 0..20 {
            let port = {
                let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
                let port = tcp.local_addr().unwrap().port();
                if UdpSocket::bind(("127.0.0.1", port)).is_err() {
                    continue;
                }
                port
            };
            let mut child = Command::new(&binary)
                .args([
                    "--keep-in-foreground",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    &format!("--port={port}"),
                    "--no-resolv",
                    "--no-hosts",
                    "--local=/cluster.local/",
                    "--local-ttl=5",
                    "--user=root",
                    "--pid-file=",
                    "--log-facility=-",
                    &format!("--hostsdir={}", dir.join("hosts").display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Dnsmasq { child, addr, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken after all: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start");
    }

    /// Replaces the addresses of `name`; dnsmasq notices the file change by itself.
    fn set(&self, name: &str, ips: &[IpAddr]) {
        let name = name.trim_end_matches('.');
        let body: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.dir.join("hosts").join(name)).unwrap();
    }

    fn registry(&self, service: &HeadlessService) -> Registry {
        Registry::builder()
            .nameservers([self.addr])
            .refresh_interval(INTERVAL)
            .dns_timeout(Duration::from_millis(500))
            .empty_confirmation(3, Duration::from_secs(1), Duration::from_millis(100))
            .service(service.clone())
            .build()
            .unwrap()
    }
}

fn ips(pods: &[Pod]) -> Vec<IpAddr> {
    pods.iter().map(|p| p.addr().ip()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_spread_add_and_remove() {
    let dns = Dnsmasq::start("spread");
    let mut pods = Pod::start_many(60, 3, "ext").unwrap();
    let port = pods[0].addr().port();
    let fqdn = svc_fqdn("user-svc", "ns60");
    dns.set(&fqdn, &ips(&pods));
    let svc = HeadlessService::new("ns60", "user-svc", port).unwrap();
    let registry = dns.registry(&svc);
    assert!(discovered(&registry, &svc, 3).await);
    let channel = registry.channel(&svc).unwrap();
    let (hits, errors) = spread(&channel, 150, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");

    // Add a pod.
    let new = Pod::start(SocketAddr::new(loopback(60, 9), port), "ext-new").unwrap();
    pods.push(new);
    dns.set(&fqdn, &ips(&pods));
    assert!(
        eventually(INTERVAL + SLACK, || async {
            let _ = spread(&channel, 8, 8).await;
            pods[3].stats().calls() > 0
        })
        .await
    );

    // Remove one: it gets no new calls.
    let gone = pods.remove(0);
    dns.set(&fqdn, &ips(&pods));
    assert!(
        eventually(INTERVAL + SLACK, || async {
            !registry.endpoints(&svc).unwrap().contains(&gone.addr())
        })
        .await
    );
    let before = gone.stats().calls();
    let (hits, errors) = spread(&channel, 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(gone.stats().calls(), before, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_nxdomain_drains_after_confirmation() {
    let dns = Dnsmasq::start("nx");
    let fqdn = svc_fqdn("user-svc", "ns61");
    dns.set(&fqdn, &[loopback(61, 2), loopback(61, 3)]);
    let svc = HeadlessService::new("ns61", "user-svc", 8080).unwrap();
    let registry = dns.registry(&svc);
    assert!(discovered(&registry, &svc, 2).await);
    let emptied = Instant::now();
    dns.set(&fqdn, &[]);
    assert!(
        eventually(SLACK, || async {
            registry.status(&svc).unwrap().empty_streak >= 1
        })
        .await
    );
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap().is_empty()
        })
        .await
    );
    assert!(
        emptied.elapsed() >= Duration::from_secs(1),
        "drained before the grace"
    );
    dns.set(&fqdn, &[loopback(61, 4)]);
    assert!(discovered(&registry, &svc, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_five_hundred_records() {
    let dns = Dnsmasq::start("big");
    let fqdn = svc_fqdn("big", "ns62");
    let addrs: Vec<IpAddr> = (0..500u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f03_0000 + i)))
        .collect();
    dns.set(&fqdn, &addrs);
    let svc = HeadlessService::new("ns62", "big", 8080).unwrap();
    let registry = dns.registry(&svc);
    let mut watch = registry.watch(&svc).unwrap();
    let first = tokio::time::timeout(SLACK, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.added.len(), 500, "the whole set in one refresh");
}
