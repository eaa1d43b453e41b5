//! Load test of the CSR service: how many workload certificates the CA
//! signs per second on this machine, served as `sextant serve` serves it
//! (IstioCertificateService over TLS on loopback with TCP_NODELAY,
//! bearer-token authentication, ECDSA P-256 root), with `openssl speed
//! ecdsap256`'s raw rates measured beside it as the physical limit.
//!
//! `cargo bench -p sextant-ca --bench csr_load [-- --clients N --seconds S]`.
//! A benchmark, not a test: it prints figures and asserts nothing about
//! speed (machines are shared and noisy).
//!
//! What is measured, and what is not:
//! - each client opens one TLS channel and sends every request on it, as an
//!   agent does; CSRs (key generation) are made before the clock starts;
//! - the server runs on its own runtime, whose threads are named
//!   [`SERVER_THREAD`], so its CPU time per certificate is read from
//!   `/proc` apart from the clients' (on Linux). CPU time does not depend on
//!   what else the machine runs, unlike the rate: quote it when the machine
//!   is busy;
//! - every certificate costs the CA one ECDSA verification (the CSR's
//!   self-signature, proof the caller holds the key) and one signature, so
//!   the limit per core is `1 / (1/sign + 1/verify)` of openssl's rates.
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_ca::metrics::CaMetrics;
use sextant_ca::pb::IstioCertificateRequest;
use sextant_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use sextant_ca::service::{CaService, TokenAuthenticator, server_tls_config};
use sextant_ca::{CaOptions, CertificateAuthority, Identity, csr};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};

const SERVER_NAME: &str = "istiod.istio-system.svc";
const TOKEN: &str = "bench-token";
/// Name of the server runtime's threads (at most 15 bytes: Linux's limit).
const SERVER_THREAD: &str = "ca-server";

struct Options {
    clients: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        clients: 16,
        seconds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--clients" => o.clients = value("--clients") as usize,
            "--seconds" => o.seconds = value("--seconds"),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    o
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `openssl speed`'s ECDSA P-256 (signatures/s, verifications/s) on one
/// core, or why not.
fn openssl_rates() -> Result<(f64, f64), String> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.0"
    text.lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .and_then(|l| {
            let mut rates = l.split_whitespace().rev();
            let verify = rates.next()?.parse().ok()?;
            let sign = rates.next()?.parse().ok()?;
            Some((sign, verify))
        })
        .ok_or_else(|| format!("no nistp256 line in openssl speed's output: {text}"))
}

/// CPU time (user + system) so far of this process's threads, split into
/// (server runtime threads, all others); `None` where `/proc` is missing.
fn cpu_time() -> Option<(Duration, Duration)> {
    // The unit of /proc's times, Linux's USER_HZ: 100 on every architecture
    // (fixed by the kernel ABI; std has no sysconf to ask).
    const TICKS_PER_SECOND: u64 = 100;
    let (mut server, mut others) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ppid ...": comm may contain spaces, so split at
        // the last ')'; utime and stime are fields 14 and 15.
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        if comm == SERVER_THREAD {
            server += ticks;
        } else {
            others += ticks;
        }
    }
    let time = |ticks: u64| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    Some((time(server), time(others)))
}

fn main() {
    let o = options();
    let ca_options = CaOptions::default();
    let (ca, _) = CertificateAuthority::generate(&ca_options).expect("a CA");
    let ca = Arc::new(ca);
    let tls = server_tls_config(&ca, &[SERVER_NAME.to_string()]).expect("serving certificate");
    let tokens = TokenAuthenticator::from_yaml(
        &format!("{TOKEN}: {{namespace: default, serviceAccount: bench}}"),
        "cluster.local",
    )
    .expect("token file");
    let service = CaService::new(ca.clone(), Arc::new(tokens), CaMetrics::default()).into_server();

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    // As the xDS server's port that the CA shares in `sextant serve`:
    // without TCP_NODELAY, a response's small writes wait for the client's
    // delayed ACK (~40 ms each).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    server_runtime.spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(incoming),
    );

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime");
    let (latencies, errors, elapsed, cpu) =
        client_runtime.block_on(load(&o, ca.root_pem().to_string(), addr));
    drop(server_runtime);

    let rate = latencies.len() as f64 / elapsed;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "CSR service ({} concurrent clients, one channel each, {elapsed:.1} s, TLS, ECDSA P-256 \
         root, {cores} cores):",
        o.clients,
    );
    println!(
        "  certificates signed: {} ({rate:.0}/s), errors: {errors}",
        latencies.len()
    );
    println!(
        "  latency: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let server_cpu_per_cert = match cpu {
        Some((server, clients)) if !latencies.is_empty() => {
            let per_cert = |t: Duration| t.as_secs_f64() * 1e6 / latencies.len() as f64;
            println!(
                "  CPU per certificate: server {:.0} µs, clients {:.0} µs",
                per_cert(server),
                per_cert(clients)
            );
            Some(per_cert(server))
        }
        _ => None,
    };
    match openssl_rates() {
        Ok((sign, verify)) => {
            let floor = 1.0 / (1.0 / sign + 1.0 / verify);
            println!(
                "  openssl speed ecdsap256 (one core): {sign:.0} signs/s, {verify:.0} verifies/s; \
                 one sign + one verify per certificate: {floor:.0} certificates/s per core \
                 ({:.0} µs)",
                1e6 / floor
            );
            if let Some(server) = server_cpu_per_cert {
                println!(
                    "  the server's CPU per certificate is {:.1}x openssl's sign + verify",
                    server * floor / 1e6
                );
            }
        }
        Err(e) => println!("  openssl speed ecdsap256: not measured ({e})"),
    }
}

/// Runs the clients until the deadline: (latencies sorted, errors, seconds,
/// CPU time of server and clients during the run).
async fn load(
    o: &Options,
    root_pem: String,
    addr: std::net::SocketAddr,
) -> (Vec<Duration>, u64, f64, Option<(Duration, Duration)>) {
    // CSRs are made before the clock starts: what is measured is the CA.
    let identity: Identity = "spiffe://cluster.local/ns/default/sa/bench"
        .parse()
        .unwrap();
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|_| csr::generate(&identity).expect("a CSR").csr_pem)
            .collect(),
    );
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root_pem))
                .domain_name(SERVER_NAME),
        )
        .unwrap();
    // Connect first, so handshakes are not counted in the rate either.
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        let channel = endpoint.connect().await.expect("connecting to the CA");
        clients.push(IstioCertificateServiceClient::new(channel));
    }
    let cpu_before = cpu_time();
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let csrs = csrs.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut i = c;
            while Instant::now() < deadline {
                let mut request = tonic::Request::new(IstioCertificateRequest {
                    csr: csrs[i % csrs.len()].clone(),
                    validity_duration: 3600,
                    metadata: None,
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                let t = Instant::now();
                match client.create_certificate(request).await {
                    Ok(r) if !r.get_ref().cert_chain.is_empty() => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, cpu_time()) {
        (Some((s0, c0)), Some((s1, c1))) => Some((s1.saturating_sub(s0), c1.saturating_sub(c0))),
        _ => None,
    };
    latencies.sort();
    (latencies, errors, elapsed, cpu)
}
