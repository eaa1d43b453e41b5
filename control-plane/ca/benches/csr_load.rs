//! Load test of the CSR service: how many workload certificates the CA
//! signs per second on this machine, served as `sextant serve` serves it
//! (IstioCertificateService over TLS on loopback, bearer-token
//! authentication, ECDSA P-256 root), with `openssl speed ecdsap256`'s raw
//! signing rate measured beside it as the physical limit.
//!
//! `cargo bench -p sextant-ca --bench csr_load [-- --clients N --seconds S]`.
//! A benchmark, not a test: it prints figures and asserts nothing about
//! speed (machines are shared and noisy).
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_ca::metrics::CaMetrics;
use sextant_ca::pb::IstioCertificateRequest;
use sextant_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use sextant_ca::service::{CaService, TokenAuthenticator, server_tls_config};
use sextant_ca::{CaOptions, CertificateAuthority, Identity, csr};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};

const SERVER_NAME: &str = "istiod.istio-system.svc";
const TOKEN: &str = "bench-token";

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

/// `openssl speed`'s ECDSA P-256 signatures per second (one core), or why
/// not.
fn openssl_sign_rate() -> Result<f64, String> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  13000.0"
    text.lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .ok_or_else(|| format!("no nistp256 line in openssl speed's output: {text}"))
}

#[tokio::main]
async fn main() {
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

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
                .ca_certificate(Certificate::from_pem(ca.root_pem()))
                .domain_name(SERVER_NAME),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let (endpoint, csrs) = (endpoint.clone(), csrs.clone());
        tasks.push(tokio::spawn(async move {
            let channel = endpoint.connect().await.expect("connecting to the CA");
            let mut client = IstioCertificateServiceClient::new(channel);
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
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed;
    println!(
        "CSR service ({} concurrent clients, {:.1} s, TLS, ECDSA P-256 root, {} cores):",
        o.clients,
        elapsed,
        std::thread::available_parallelism().map_or(0, |n| n.get())
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
    match openssl_sign_rate() {
        Ok(signs) => println!(
            "  openssl speed ecdsap256: {signs:.0} signatures/s on one core; the CA reaches {:.0}% of one core's raw signing rate",
            100.0 * rate / signs
        ),
        Err(e) => println!("  openssl speed ecdsap256: not measured ({e})"),
    }
}
