//! The example programs, run as real processes against the in-process DNS server and loopback
//! pods.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use testkit::{
    DnsServer, Pod, eventually, loopback,
    pb::{
        self,
        user_server::{User, UserServer},
    },
    svc_fqdn,
};

const SLACK: Duration = Duration::from_secs(10);

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &str, args: &[String]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}")),
    )
}

/// A free port on `ip`.
fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.1: status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: frontend\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((status, body))
}

async fn frontend(
    dns: &DnsServer,
    net: u8,
    namespace: &str,
    user_port: u16,
    timeout: &str,
    balancer: &str,
) -> (Proc, SocketAddr) {
    let ip = loopback(net, 1);
    let addr = SocketAddr::new(ip, free_port(ip));
    let proc = spawn(
        env!("CARGO_BIN_EXE_frontend"),
        &[
            format!("--listen={addr}"),
            format!("--namespace={namespace}"),
            format!("--user-port={user_port}"),
            format!("--nameserver={}", dns.addr()),
            "--refresh-interval=200ms".into(),
            format!("--timeout={timeout}"),
            format!("--balancer={balancer}"),
        ],
    );
    let up = eventually(SLACK, || async {
        get(addr, "/_healthz").is_ok_and(|(s, b)| s == 200 && b == "ok")
    })
    .await;
    assert!(up, "frontend never answered /_healthz");
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_index_spreads_over_pods() {
    let dns = DnsServer::start().await.unwrap();
    let pods = Pod::start_many(50, 3, "user").unwrap();
    dns.set_addrs(
        &svc_fqdn("user-svc", "ns50"),
        &pods.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    for (net, balancer) in [(56, "channel"), (57, "load-aware")] {
        let (_proc, addr) =
            frontend(&dns, net, "ns50", pods[0].addr().port(), "3s", balancer).await;
        let robots = get(addr, "/robots.txt").unwrap();
        assert_eq!(robots, (200, "User-agent: *\nDisallow: /\n".to_owned()));
        let mut seen = std::collections::BTreeSet::new();
        let spread = eventually(SLACK, || {
            let (status, body) = get(addr, "/index").unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(body.starts_with("Hello frontend from user-"), "{body}");
            seen.insert(body.trim().to_owned());
            let all = seen.len() == 3;
            async move { all }
        })
        .await;
        assert!(spread, "{balancer}: only {seen:?} answered");

        // The metrics show what discovery did, with real values.
        let (status, text) = get(addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        let service = format!("user-svc.ns50:{}", pods[0].addr().port());
        let value = |name: &str, labels: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(labels) && l.contains(&service))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
        };
        assert!(value("k8s_headless_svc_resolutions_total", "outcome=\"ok\"") >= 1.0);
        assert_eq!(
            value("k8s_headless_svc_endpoints", "state=\"discovered\""),
            3.0
        );
        assert_eq!(
            value("k8s_headless_svc_endpoints", "state=\"healthy\""),
            3.0
        );
        assert_eq!(value("k8s_headless_svc_endpoints_inserted_total", ""), 3.0);
        assert!(
            text.contains("k8s_headless_svc_resolution_duration_seconds"),
            "{text}"
        );
        eprintln!("{balancer}: /metrics\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_answers_503_within_its_timeout_with_no_pods() {
    let dns = DnsServer::start().await.unwrap();
    let (_proc, addr) = frontend(&dns, 51, "ns51", 8080, "1s", "load-aware").await;
    let started = Instant::now();
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/index"))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no endpoints"), "{body}");
    assert!(
        took < Duration::from_secs(1) + Duration::from_secs(2),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_endpoint_changes() {
    let dns = DnsServer::start().await.unwrap();
    let fqdn = svc_fqdn("user-svc", "ns52");
    dns.set_addrs(&fqdn, &[loopback(52, 2), loopback(52, 3)])
        .await;
    let mut proc = spawn(
        env!("CARGO_BIN_EXE_watch"),
        &[
            "user-svc.ns52:8080".into(),
            format!("--nameserver={}", dns.addr()),
            "--refresh-interval=200ms".into(),
        ],
    );
    let (tx, lines) = mpsc::channel();
    let stdout = proc.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |want: &str| {
        let line = lines
            .recv_timeout(SLACK)
            .unwrap_or_else(|_| panic!("no line; wanted {want:?}"));
        assert_eq!(line, want);
    };
    next("+ user-svc.ns52 127.0.52.2:8080");
    next("+ user-svc.ns52 127.0.52.3:8080");
    dns.set_addrs(&fqdn, &[loopback(52, 3), "::1".parse().unwrap()])
        .await;
    next("- user-svc.ns52 127.0.52.2:8080");
    next("+ user-svc.ns52 [::1]:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reads_its_settings_from_yaml() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_addrs(&svc_fqdn("user-svc", "ns54"), &[loopback(54, 2)])
        .await;
    let dir = std::env::temp_dir().join(format!("k8s-headless-svc-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The shipped example, pointed at the test's DNS server and Service.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/registry.yaml")).unwrap();
    let yaml = shipped
        .replace(
            "  - user-svc.default:8080\n  - user-svc.default:grpc\n",
            "  - user-svc.ns54:8080\n",
        )
        .replace(
            "nameservers: []",
            &format!("nameservers: [\"{}\"]", dns.addr()),
        )
        .replace("refresh_interval: 5s", "refresh_interval: 200ms");
    assert!(
        yaml.contains("ns54") && yaml.contains("nameservers: ["),
        "{yaml}"
    );
    let path = dir.join("registry.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut proc = spawn(
        env!("CARGO_BIN_EXE_watch"),
        &[format!("--config={}", path.display())],
    );
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        lines.recv_timeout(SLACK).unwrap(),
        "+ user-svc.ns54 127.0.54.2:8080"
    );

    // A bad value is refused with the builder's error.
    std::fs::write(&path, "services: [\"User.default:80\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_watch"))
        .arg(format!("--config={}", path.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid Service name \"User\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped example spells out every field of `Config` with its default: it parses to
/// `Config::default()` but for its services, and a field it lacks or gets wrong fails here.
#[test]
fn the_shipped_yaml_spells_out_every_default() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/registry.yaml")).unwrap();
    let mut parsed: k8s_headless_svc::Config = serde_yaml::from_str(&shipped).unwrap();
    assert_eq!(parsed.services.len(), 2);
    parsed.services.clear();
    assert_eq!(parsed, k8s_headless_svc::Config::default());
    // Every field is written out: the defaults, serialized, name no field the file lacks.
    let defaults = serde_yaml::to_value(k8s_headless_svc::Config::default()).unwrap();
    let fields = defaults.as_mapping().unwrap();
    for key in fields.keys() {
        let key = key.as_str().unwrap();
        assert!(
            shipped.lines().any(|l| l.starts_with(&format!("{key}:"))),
            "registry.yaml does not spell out {key}"
        );
    }
    // Unknown fields and values out of their type are refused, naming what was wrong.
    let err = serde_yaml::from_str::<k8s_headless_svc::Config>("refresh_intervall: 5s\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("refresh_intervall"), "{err}");
    let err = serde_yaml::from_str::<k8s_headless_svc::Config>("services: [\"User.default:80\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid Service name \"User\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_serves_health_and_stops_gracefully_on_sigterm() {
    let ip = loopback(53, 2);
    let addr = SocketAddr::new(ip, free_port(ip));
    let mut proc = spawn(
        env!("CARGO_BIN_EXE_user"),
        &[format!("--listen={addr}"), "--pod-name=u1".into()],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = eventually(SLACK, || {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "user.User".into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
        }
    })
    .await;
    assert!(serving);
    let mut user = testkit::pb::user_client::UserClient::new(channel);
    let reply = user
        .call(testkit::pb::CallRequest { name: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.msg, "Hello t from u1");
    let whole = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the whole server's health")
        .into_inner();
    assert_eq!(
        whole.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = eventually(SLACK, || {
        let done = proc.0.try_wait().unwrap();
        async move { done.is_some_and(|s| s.success()) }
    })
    .await;
    assert!(exited, "user did not exit 0 after SIGTERM");
}

// === bad input ===

/// What a program did with bad input: its exit code (`None` if still running after the
/// deadline, then killed) and its stderr.
async fn run_to_exit(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let read = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut code = None;
    eventually(SLACK, || {
        let status = child.try_wait().unwrap();
        if let Some(status) = status {
            code = Some(status.code().unwrap_or(-1));
        }
        async move { status.is_some() }
    })
    .await;
    if code.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    (code, read.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_environment_are_usage_errors() {
    let user = env!("CARGO_BIN_EXE_user");
    let frontend = env!("CARGO_BIN_EXE_frontend");
    let watch = env!("CARGO_BIN_EXE_watch");
    // Anything that gets past the flags must not reach the network or /etc/resolv.conf.
    let dns = "--nameserver=127.0.0.1:9";
    let listen = "--listen=127.0.0.1:0";
    let name = format!("s{}", "a".repeat(62));
    let namespace = "n".repeat(63);
    // `<63>.<63>.svc.<122>` is 254 characters, one more than DNS allows.
    let domain = format!("{}.{}", "d".repeat(61), "e".repeat(60));
    let long_svc = format!("--user-svc={name}");
    let long_ns = format!("--namespace={namespace}");
    let long_domain = format!("--cluster-domain={domain}");
    let long_spec = format!("{name}.{namespace}:8080");
    // (program, flags, environment, what stderr must name)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (user, vec!["--listen", "notanaddr"], vec![], "--listen"),
        (user, vec![], vec![("LISTEN_ADDR", "1.2.3.4")], "--listen"),
        (user, vec!["--no-such-flag"], vec![], "--no-such-flag"),
        (
            frontend,
            vec!["--refresh-interval", "nonsense"],
            vec![],
            "--refresh-interval",
        ),
        (
            frontend,
            vec![],
            vec![("USER_PORT", "99999999")],
            "--user-port",
        ),
        (frontend, vec!["--listen", "notanaddr"], vec![], "--listen"),
        (
            frontend,
            vec![listen, dns, "--user-port=0"],
            vec![],
            "--user-port",
        ),
        (
            frontend,
            vec![listen, dns],
            vec![("USER_PORT", "0")],
            "--user-port",
        ),
        (
            frontend,
            vec![listen, dns, "--user-svc=Bad_Name"],
            vec![],
            "--user-svc",
        ),
        (
            frontend,
            vec![listen, dns, "--namespace=-ns"],
            vec![],
            "--namespace",
        ),
        (
            frontend,
            vec![listen, dns, "--cluster-domain=Bad"],
            vec![],
            "--cluster-domain",
        ),
        (
            frontend,
            vec![listen, dns, "--refresh-interval=0s"],
            vec![],
            "--refresh-interval",
        ),
        (
            frontend,
            vec![listen, dns, "--refresh-interval=2h"],
            vec![],
            "--refresh-interval",
        ),
        (
            frontend,
            vec![listen, dns],
            vec![("REFRESH_INTERVAL", "1000000000h")],
            "--refresh-interval",
        ),
        (
            frontend,
            vec![listen, dns, "--health-interval=0s"],
            vec![],
            "--health-interval",
        ),
        (
            frontend,
            vec![listen, dns, "--timeout=0s"],
            vec![],
            "--timeout",
        ),
        (
            frontend,
            vec![listen, dns],
            vec![("REQUEST_TIMEOUT", "500000000000000h")],
            "--timeout",
        ),
        (
            frontend,
            vec![listen, dns, "--balancer=random"],
            vec![],
            "--balancer",
        ),
        (
            frontend,
            vec![listen, dns, "--health-check=icmp"],
            vec![],
            "--health-check",
        ),
        (
            frontend,
            vec![listen, dns, &long_svc, &long_ns, &long_domain],
            vec![],
            "253",
        ),
        (watch, vec![], vec![], "<SERVICES>"),
        (watch, vec!["user-svc.default:0"], vec![], "1..=65535"),
        (watch, vec!["User.default:80"], vec![], "Service name"),
        (
            watch,
            vec![dns, "svc.ns:80", "--refresh-interval", "nonsense"],
            vec![],
            "--refresh-interval",
        ),
        (
            watch,
            vec![dns, "svc.ns:80", "--refresh-interval=2h"],
            vec![],
            "--refresh-interval",
        ),
        (
            watch,
            vec![dns, "svc.ns:80"],
            vec![("REFRESH_INTERVAL", "0s")],
            "--refresh-interval",
        ),
        (
            watch,
            vec![dns, "svc.ns:80", "--cluster-domain=Bad"],
            vec![],
            "--cluster-domain",
        ),
        (
            watch,
            vec!["svc.ns:80"],
            vec![("NAMESERVER", "")],
            "--nameserver",
        ),
        (watch, vec![dns, &long_spec, &long_domain], vec![], "253"),
    ];
    let mut wrong = Vec::new();
    for (bin, args, env, names) in &cases {
        let program = bin.rsplit('/').next().unwrap();
        let (code, stderr) = run_to_exit(bin, args, env).await;
        let shown = format!("{program} {args:?} {env:?}");
        eprintln!(
            "{shown}: exit {code:?}: {}",
            stderr.lines().next().unwrap_or("")
        );
        if code != Some(2) {
            wrong.push(format!("{shown}: exit {code:?}, not 2: {stderr}"));
        } else if !stderr.starts_with("error: ") || !stderr.contains(names) {
            wrong.push(format!("{shown}: stderr does not name {names:?}: {stderr}"));
        } else if stderr.contains("panicked") {
            wrong.push(format!("{shown}: panicked: {stderr}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

// === frontend error mapping ===

/// What the scripted pod does with each call.
#[derive(Clone, Default)]
struct Script {
    delay: Duration,
    fail: Option<(tonic::Code, String)>,
}

/// A `User` pod that answers as its script says: late, or with any code and message.
#[derive(Clone, Default)]
struct ScriptedPod(Arc<Mutex<Script>>);

type Replies<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl User for ScriptedPod {
    async fn call(
        &self,
        _: tonic::Request<pb::CallRequest>,
    ) -> Result<tonic::Response<pb::CallResponse>, tonic::Status> {
        let script = self.0.lock().unwrap().clone();
        tokio::time::sleep(script.delay).await;
        match script.fail {
            Some((code, message)) => Err(tonic::Status::new(code, message)),
            None => Ok(tonic::Response::new(pb::CallResponse {
                msg: "Hello frontend from scripted".into(),
            })),
        }
    }

    async fn client_stream(
        &self,
        _: tonic::Request<tonic::Streaming<pb::ClientStreamRequest>>,
    ) -> Result<tonic::Response<pb::ClientStreamResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    type ServerStreamStream = Replies<pb::ServerStreamResponse>;

    async fn server_stream(
        &self,
        _: tonic::Request<pb::ServerStreamRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    type BidiStreamStream = Replies<pb::BidiStreamResponse>;

    async fn bidi_stream(
        &self,
        _: tonic::Request<tonic::Streaming<pb::BidiStreamRequest>>,
    ) -> Result<tonic::Response<Self::BidiStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_maps_grpc_failures_to_gateway_statuses() {
    let dns = DnsServer::start().await.unwrap();
    let ip = loopback(62, 2);
    let pod_addr = SocketAddr::new(ip, free_port(ip));
    let pod = ScriptedPod::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServer::new(pod.clone()))
            .serve(pod_addr),
    );
    dns.set_addrs(&svc_fqdn("user-svc", "ns62"), &[ip]).await;

    let front_ip = loopback(62, 1);
    let addr = SocketAddr::new(front_ip, free_port(front_ip));
    let log = std::env::temp_dir().join(format!(
        "k8s-headless-svc-frontend-{}.log",
        std::process::id()
    ));
    let _proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_frontend"))
            .args([
                format!("--listen={addr}"),
                "--namespace=ns62".into(),
                format!("--user-port={}", pod_addr.port()),
                format!("--nameserver={}", dns.addr()),
                "--refresh-interval=200ms".into(),
                "--timeout=1s".into(),
                // tonic's balancer passes each call's status through as the pod sent it.
                "--balancer=channel".into(),
                "--health-check=off".into(),
            ])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let index = || async move {
        tokio::task::spawn_blocking(move || get(addr, "/index"))
            .await
            .unwrap()
    };
    let up = eventually(SLACK, || async {
        index().await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
    assert!(up, "the frontend never answered 200");

    let set = |fail: Option<(tonic::Code, &str)>, delay: Duration| {
        *pod.0.lock().unwrap() = Script {
            delay,
            fail: fail.map(|(code, message)| (code, message.to_owned())),
        };
    };
    use tonic::Code::*;
    for (code, want) in [
        (Unavailable, 503),
        (DeadlineExceeded, 504),
        (Internal, 502),
        (Unknown, 502),
        (PermissionDenied, 502),
        (ResourceExhausted, 502),
        (NotFound, 502),
    ] {
        set(Some((code, "scripted failure")), Duration::ZERO);
        let (status, body) = index().await.unwrap();
        assert_eq!(status, want, "{code:?}: {body}");
        assert!(body.contains("scripted failure"), "{code:?}: {body}");
    }

    // No reply within the frontend's own timeout: 504, within the timeout.
    set(None, Duration::from_secs(5));
    let started = Instant::now();
    let (status, body) = index().await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took < Duration::from_secs(1) + Duration::from_secs(2),
        "took {took:?}"
    );

    // A message a pod controls: control characters escaped, length cut, in the body and in
    // the log.
    let evil = format!(
        "one\r\nX-Injected: yes\n\u{1b}[2J\u{202e}{}",
        "A".repeat(5_000)
    );
    set(Some((Internal, &evil)), Duration::ZERO);
    let (status, body) = index().await.unwrap();
    assert_eq!(status, 502, "{body}");
    let body = body.trim_end_matches('\n');
    assert!(
        body.contains(r"one\r\nX-Injected: yes\n\u{1b}[2J\u{202e}AAA"),
        "{body}"
    );
    assert!(
        !body.contains(['\r', '\n', '\u{1b}', '\u{202e}']),
        "{body:?}"
    );
    assert!(
        body.chars().count() < 300,
        "{} characters",
        body.chars().count()
    );
    let logged = eventually(SLACK, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains(r"one\r\nX-Injected") }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(logged, "the failure was not logged:\n{text}");
    assert!(
        !text.contains(['\r', '\u{1b}', '\u{202e}']),
        "raw control characters in the log:\n{text:?}"
    );
    assert!(!text.contains("X-Injected: yes\n"), "{text:?}");
    assert!(
        !text.contains(&"A".repeat(1_000)),
        "the message was not cut"
    );

    // And it recovers.
    set(None, Duration::ZERO);
    let (status, body) = index().await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello frontend from scripted\n")
    );
}

// === watch and a stalled reader ===

/// `count` addresses in `10.net.0.0/16`, starting at `from`.
fn addrs(net: u8, from: u16, count: u16) -> Vec<IpAddr> {
    (from..from + count)
        .map(|i| IpAddr::from([10, net, (i / 250) as u8, (i % 250 + 1) as u8]))
        .collect()
}

/// Starts `watch` on `user-svc.<ns>:8080` with its stdout piped and not read.
fn stalled_watch(dns: &DnsServer, namespace: &str) -> Proc {
    spawn(
        env!("CARGO_BIN_EXE_watch"),
        &[
            format!("user-svc.{namespace}:8080"),
            format!("--nameserver={}", dns.addr()),
            "--refresh-interval=200ms".into(),
        ],
    )
}

/// Sets `ips` and waits until the registry must have seen them: two more resolutions (A and
/// AAAA each) after the change.
async fn set_and_settle(dns: &DnsServer, fqdn: &str, ips: &[IpAddr]) {
    dns.set_addrs(fqdn, ips).await;
    let seen = dns.queries();
    let settled = eventually(SLACK, || async { dns.queries() >= seen + 4 }).await;
    assert!(settled, "watch stopped resolving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_never_blocks_its_runtime_on_a_stalled_reader() {
    let dns = DnsServer::start().await.unwrap();
    let fqdn = svc_fqdn("user-svc", "ns63");
    let mut proc = stalled_watch(&dns, "ns63");
    // ~31 bytes a line: 1000 + 2000 + 2000 lines are far more than a 64 KiB pipe holds.
    let (a, b) = (addrs(63, 0, 1000), addrs(63, 1000, 1000));
    for ips in [&a, &b, &a] {
        set_and_settle(&dns, &fqdn, ips).await;
    }
    // The reader has stalled for a while: SIGTERM still ends the program at once.
    let status = Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut code = None;
    let exited = eventually(SLACK, || {
        let done = proc.0.try_wait().unwrap();
        code = done.map(|s| s.code());
        async move { done.is_some() }
    })
    .await;
    assert!(exited, "watch ignored SIGTERM while its stdout was stalled");
    assert_eq!(code, Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_output_stays_consistent_after_a_stall() {
    let dns = DnsServer::start().await.unwrap();
    let fqdn = svc_fqdn("user-svc", "ns64");
    let mut proc = stalled_watch(&dns, "ns64");
    let (a, b, c) = (
        addrs(64, 0, 1000),
        addrs(64, 1000, 1000),
        addrs(64, 500, 1000),
    );
    for ips in [&a, &b, &a, &c] {
        set_and_settle(&dns, &fqdn, ips).await;
    }
    // The reader comes back: replaying every line ends at the last set, and each line is a
    // real change of what came before.
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want: BTreeSet<String> = c.iter().map(|ip| format!("{ip}:8080")).collect();
    let mut have = BTreeSet::new();
    let mut count = 0;
    let mut errors = Vec::new();
    let converged = eventually(SLACK, || {
        while let Ok(line) = lines.try_recv() {
            count += 1;
            match line
                .split_once(' ')
                .map(|(sign, rest)| (sign, rest.split_once(' ')))
            {
                Some(("+", Some(("user-svc.ns64", addr)))) if have.insert(addr.to_owned()) => {}
                Some(("-", Some(("user-svc.ns64", addr)))) if have.remove(addr) => {}
                _ => errors.push(line),
            }
        }
        let done = have == want;
        async move { done }
    })
    .await;
    assert!(
        errors.is_empty(),
        "lines that change nothing: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(
        converged,
        "after {count} lines, {} endpoints, want {}",
        have.len(),
        want.len()
    );
}

/// A pod's row of `/debug/registry`'s JSON: the text from its address to the next endpoint.
fn endpoint_json(json: &str, addr: SocketAddr) -> Option<&str> {
    let at = json.find(&format!("\"addr\":\"{addr}\""))?;
    let rest = &json[at..];
    let end = rest[1..].find("\"addr\":\"").map_or(rest.len(), |i| i + 1);
    Some(&rest[..end])
}

/// The frontend serves the registry's snapshot at `/debug/registry` and a page at `/debug`:
/// every pod healthy with its calls counted, then a killed pod ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_debug_json_shows_each_pod_and_a_killed_one_ejected() {
    let dns = DnsServer::start().await.unwrap();
    let mut pods = Pod::start_many(59, 3, "user").unwrap();
    dns.set_addrs(
        &svc_fqdn("user-svc", "ns59"),
        &pods.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    let (_proc, addr) = frontend(&dns, 58, "ns59", pods[0].addr().port(), "3s", "load-aware").await;
    for _ in 0..30 {
        let _ = get(addr, "/index");
    }
    let json = || get(addr, "/debug/registry").unwrap().1;
    let all_healthy = eventually(SLACK, || {
        let json = json();
        let ok = pods.iter().all(|p| {
            endpoint_json(&json, p.addr())
                .is_some_and(|e| e.contains("\"state\":\"healthy\"") && e.contains("\"calls\":"))
        });
        async move { ok }
    })
    .await;
    assert!(all_healthy, "{}", json());
    assert!(
        json().contains("\"service\":\"user-svc.ns59:"),
        "{}",
        json()
    );
    let (status, page) = get(addr, "/debug").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("<title>k8s-headless-svc: registry</title>"),
        "{page}"
    );

    let dead = pods.remove(0);
    let dead_addr = dead.addr();
    dead.kill().await;
    let ejected = eventually(SLACK, || {
        let json = json();
        let ok =
            endpoint_json(&json, dead_addr).is_some_and(|e| e.contains("\"state\":\"ejected\""));
        async move { ok }
    })
    .await;
    assert!(ejected, "{}", json());
}

/// Headless Chromium loads `/debug` while the frontend calls real pods: the page shows every
/// pod healthy, then a killed pod ejected, and a screenshot is saved to
/// `target/debug-page.png`. Run by `.ci/run`, which installs Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium; .ci/run installs it and runs this"]
async fn browser_shows_the_debug_page_and_a_killed_pod_ejected() {
    let dns = DnsServer::start().await.unwrap();
    let mut pods = Pod::start_many(60, 3, "user").unwrap();
    dns.set_addrs(
        &svc_fqdn("user-svc", "ns60"),
        &pods.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    let (_proc, addr) = frontend(&dns, 61, "ns60", pods[0].addr().port(), "3s", "load-aware").await;
    for _ in 0..60 {
        let _ = get(addr, "/index");
    }
    let profile =
        std::env::temp_dir().join(format!("k8s-headless-svc-chromium-{}", std::process::id()));
    let chromium = |extra: &[String]| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend_from_slice(extra);
        args.push(format!("http://{addr}/debug"));
        Command::new("chromium")
            .args(&args)
            .output()
            .expect("chromium runs")
    };
    let rows = |dom: &str, state: &str| dom.matches(&format!("data-state=\"{state}\"")).count();
    let dom = || String::from_utf8_lossy(&chromium(&["--dump-dom".into()]).stdout).into_owned();
    let mut seen = String::new();
    let healthy = eventually(SLACK, || {
        seen = dom();
        let ok = rows(&seen, "healthy") == 3;
        async move { ok }
    })
    .await;
    assert!(healthy, "the page never showed 3 healthy pods:\n{seen}");
    assert!(seen.contains("user-svc.ns60:"), "{seen}");

    let dead = pods.remove(0);
    let dead_addr = dead.addr().to_string();
    dead.kill().await;
    let ejected = eventually(SLACK, || {
        seen = dom();
        let ok = seen.contains(&format!("data-addr=\"{dead_addr}\" data-state=\"ejected\""));
        async move { ok }
    })
    .await;
    assert!(
        ejected,
        "the page never showed {dead_addr} ejected:\n{seen}"
    );
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug-page.png");
    // The workspace's target/ is not there when builds go to a CARGO_TARGET_DIR elsewhere.
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).expect("a folder for the screenshot");
    }
    let out = chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1300,700".into(),
    ]);
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&profile);
}
