//! The pure parts of a push, on the synthetic mesh of the load harness:
//! `MeshSnapshot::build` (once per config change) and `IstioGenerator`
//! for one proxy (once per proxy per change, per type).
//!
//! `cargo bench -p sextant-bench --bench generate` (add `-- --quick` for a
//! short run). Sizes: 100 and 1000 services.
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use sextant_bench::mesh::MeshSpec;
use sextant_bench::record::Ty;
use sextant_generate::IstioGenerator;
use sextant_generate::mesh::MeshSnapshot;
use sextant_xds::{Generator, Proxy, ResourceRequest};

const SIZES: [usize; 2] = [100, 1000];

fn snapshot_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for services in SIZES {
        let config = MeshSpec::new(services)
            .config_snapshot()
            .expect("the synthetic mesh validates");
        group.bench_with_input(
            BenchmarkId::from_parameter(services),
            &config,
            |b, config| {
                b.iter_batched(
                    || config.clone(),
                    MeshSnapshot::build,
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

fn generation_per_proxy(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for services in SIZES {
        let spec = MeshSpec::new(services);
        let mesh = MeshSnapshot::build(
            spec.config_snapshot()
                .expect("the synthetic mesh validates"),
        );
        let proxy = Proxy::from_node(Some(&spec.node(0))).expect("a valid node");
        for ty in Ty::ALL {
            let request = ResourceRequest {
                type_url: ty.type_url(),
                names: None,
            };
            group.bench_function(BenchmarkId::new(ty.as_str(), services), |b| {
                b.iter(|| {
                    black_box(
                        IstioGenerator
                            .generate(&mesh, &proxy, &request)
                            .expect("generation succeeds"),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, snapshot_build, generation_per_proxy);
criterion_main!(benches);
