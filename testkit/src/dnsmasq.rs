//! [`Dnsmasq`]: a DNS server no one here wrote, from Debian's `dnsmasq-base`, serving Service
//! names from a `--hostsdir` whose files it re-reads on change (about 30 ms, no signal).

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A dnsmasq process on `127.0.0.1`, authoritative for `cluster.local` (TTL 5 s), answering
/// only from its hosts directory. Dropping it kills the process and removes its files.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: Option<PathBuf>,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Dnsmasq {
    /// Where dnsmasq is: on `PATH`, or in `/usr/sbin` or `/sbin` (Debian's place).
    pub fn binary() -> Option<PathBuf> {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .map(|dir| PathBuf::from(dir).join("dnsmasq"))
            .find(|path| path.is_file())
    }

    /// Starts one on a free port; `tag` names its directory. With `log_queries`, every query
    /// is logged to a file that [`Dnsmasq::queries`] counts.
    pub fn start(tag: &str, log_queries: bool) -> io::Result<Dnsmasq> {
        let binary = Self::binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "dnsmasq not found: install Debian's dnsmasq-base (.ci/run does)",
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "k8s-headless-svc-dnsmasq-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hosts"))?;
        let log = log_queries.then(|| dir.join("queries.log"));
        for _ in 0..20 {
            let port = {
                let tcp = TcpListener::bind("127.0.0.1:0")?;
                let port = tcp.local_addr()?.port();
                if UdpSocket::bind(("127.0.0.1", port)).is_err() {
                    continue;
                }
                port
            };
            let mut args = vec![
                "--keep-in-foreground".to_owned(),
                "--bind-interfaces".to_owned(),
                "--listen-address=127.0.0.1".to_owned(),
                format!("--port={port}"),
                "--no-resolv".to_owned(),
                "--no-hosts".to_owned(),
                "--local=/cluster.local/".to_owned(),
                "--local-ttl=5".to_owned(),
                "--user=root".to_owned(),
                "--pid-file=".to_owned(),
                format!("--hostsdir={}", dir.join("hosts").display()),
            ];
            match &log {
                Some(log) => {
                    args.push("--log-queries".to_owned());
                    args.push(format!("--log-facility={}", log.display()));
                }
                None => args.push("--log-facility=-".to_owned()),
            }
            let mut child = Command::new(&binary)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Ok(Dnsmasq {
                        child,
                        addr,
                        dir,
                        log,
                    });
                }
                if child.try_wait()?.is_some() {
                    break; // the port was taken after all: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(io::Error::other("dnsmasq did not start"))
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the addresses of `name`; dnsmasq notices the file change by itself.
    pub fn set(&self, name: &str, ips: &[IpAddr]) -> io::Result<()> {
        let name = name.trim_end_matches('.');
        let body: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, self.dir.join("hosts").join(name))
    }

    /// Queries logged so far, of type `A` or `AAAA` (with `log_queries` only; else 0).
    pub fn queries(&self, rtype: &str) -> u64 {
        let Some(log) = &self.log else { return 0 };
        let needle = format!("query[{rtype}] ");
        std::fs::read_to_string(log)
            .map(|text| text.lines().filter(|l| l.contains(&needle)).count() as u64)
            .unwrap_or(0)
    }
}
