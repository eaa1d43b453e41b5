//! What Sextant sends each proxy of the synthetic mesh, written to files so
//! that another xDS server (the `rcp-server` of the comparison, built on the
//! `rust-control-plane` crate) can serve exactly the same resources to the
//! same clients.
//!
//! Generated in this process with the generator `sextant serve` runs
//! (`IstioGenerator` on `MeshSnapshot::build` of the same config), every
//! type in full (a wildcard request): the other server then filters EDS and
//! RDS by what each client subscribes to, as Sextant does.
//!
//! Thousands of proxies share most of their resources, so the files store
//! each distinct resource once and each distinct config once:
//! - `resources.pb`: length-delimited `google.protobuf.Any`s (type URL and
//!   body; the name is the body's field 1 in all four types);
//! - `manifest.json`: `{"format": 1, "resources": "resources.pb",
//!   "configs": [{"resources": [indices]}], "nodes": [{"id", "config"}]}`.
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use anyhow::Context;
use prost::Message;
use serde::Serialize;
use sextant_generate::IstioGenerator;
use sextant_generate::mesh::MeshSnapshot;
use sextant_xds::pb::google::protobuf::Any;
use sextant_xds::{Generator, Proxy, ResourceRequest};

use crate::mesh::MeshSpec;
use crate::record::Ty;

/// The manifest format this module writes.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const RESOURCES: &str = "resources.pb";

/// What a dump holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DumpSummary {
    pub proxies: usize,
    pub configs: usize,
    pub resources: usize,
    /// Size of the resources file.
    pub bytes: u64,
    /// Milliseconds generating and writing.
    pub ms: f64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: u32,
    resources: &'a str,
    configs: Vec<ConfigEntry>,
    nodes: Vec<NodeEntry>,
}

#[derive(Serialize)]
struct ConfigEntry {
    resources: Vec<usize>,
}

#[derive(Serialize)]
struct NodeEntry {
    id: String,
    config: usize,
}

/// Distinct resources and configs, in order of first appearance.
#[derive(Default)]
struct Dedup {
    resources: Vec<Any>,
    resource_index: HashMap<(String, Vec<u8>), usize>,
    configs: Vec<Vec<usize>>,
    config_index: HashMap<Vec<usize>, usize>,
}

impl Dedup {
    /// The config index of a proxy's resources (their order does not
    /// matter: a config is the set).
    fn add(&mut self, resources: Vec<Any>) -> usize {
        let mut config: Vec<usize> = resources
            .into_iter()
            .map(|any| {
                let key = (any.type_url, any.value);
                if let Some(index) = self.resource_index.get(&key) {
                    return *index;
                }
                let index = self.resources.len();
                self.resources.push(Any {
                    type_url: key.0.clone(),
                    value: key.1.clone(),
                });
                self.resource_index.insert(key, index);
                index
            })
            .collect();
        config.sort_unstable();
        config.dedup();
        if let Some(index) = self.config_index.get(&config) {
            return *index;
        }
        let index = self.configs.len();
        self.configs.push(config.clone());
        self.config_index.insert(config, index);
        index
    }
}

/// Everything the generator makes for proxy `i` (all four types).
fn generate(mesh: &MeshSnapshot, spec: &MeshSpec, i: usize) -> anyhow::Result<Vec<Any>> {
    let node = spec.node(i);
    let proxy =
        Proxy::from_node(Some(&node)).with_context(|| format!("parsing node {}", node.id))?;
    let mut out = Vec::new();
    for ty in Ty::ALL {
        let resources = IstioGenerator
            .generate(
                mesh,
                &proxy,
                &ResourceRequest {
                    type_url: ty.type_url(),
                    names: None,
                },
            )
            .map_err(|e| anyhow::anyhow!("proxy {i}: generating {}: {e}", ty.as_str()))?;
        out.extend(resources.iter().map(|r| r.any()));
    }
    Ok(out)
}

/// Generates the config of proxies `0..proxies` of the initial mesh and
/// writes the dump into `dir` (created if missing). Generation runs on
/// every CPU: at thousands of proxies it is the slow part.
pub fn write(spec: &MeshSpec, proxies: usize, dir: &Path) -> anyhow::Result<DumpSummary> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mesh = MeshSnapshot::build(spec.config_snapshot()?);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(proxies.max(1));
    let mut dedup = Dedup::default();
    let mut node_configs: Vec<Option<usize>> = vec![None; proxies];
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Bounded: the workers wait rather than pile up generated configs.
        let (tx, rx) = mpsc::sync_channel::<(usize, anyhow::Result<Vec<Any>>)>(workers * 2);
        for w in 0..workers {
            let (tx, mesh) = (tx.clone(), &mesh);
            scope.spawn(move || {
                for i in (w..proxies).step_by(workers) {
                    if tx.send((i, generate(mesh, spec, i))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, resources) in rx {
            node_configs[i] = Some(dedup.add(resources?));
        }
        Ok(())
    })?;
    let nodes = node_configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            Ok(NodeEntry {
                id: spec.node(i).id,
                config: config.with_context(|| format!("proxy {i} was not generated"))?,
            })
        })
        .collect::<anyhow::Result<Vec<NodeEntry>>>()?;

    let mut bytes = Vec::new();
    for any in &dedup.resources {
        any.encode_length_delimited(&mut bytes)
            .context("encoding a resource")?;
    }
    let path = dir.join(RESOURCES);
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    let manifest = Manifest {
        format: FORMAT,
        resources: RESOURCES,
        configs: dedup
            .configs
            .iter()
            .map(|c| ConfigEntry {
                resources: c.clone(),
            })
            .collect(),
        nodes,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec(&manifest).context("encoding the manifest")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(DumpSummary {
        proxies,
        configs: dedup.configs.len(),
        resources: dedup.resources.len(),
        bytes: bytes.len() as u64,
        ms: crate::stats::ms(start.elapsed()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files hold exactly what the generator makes for each proxy:
    /// reading them back gives every proxy its own resources, and shared
    /// resources are stored once.
    #[test]
    fn dump_reads_back_as_each_proxys_config() {
        let spec = MeshSpec::new(3);
        let proxies = 6;
        let dir = tempfile::tempdir().unwrap();
        let summary = write(&spec, proxies, dir.path()).unwrap();

        let bytes = std::fs::read(dir.path().join(RESOURCES)).unwrap();
        let mut rest = bytes.as_slice();
        let mut resources = Vec::new();
        while !rest.is_empty() {
            resources.push(Any::decode_length_delimited(&mut rest).unwrap());
        }
        assert_eq!(resources.len(), summary.resources);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest["format"], FORMAT);
        let configs = manifest["configs"].as_array().unwrap();
        assert_eq!(configs.len(), summary.configs);
        let nodes = manifest["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), proxies);

        let mesh = MeshSnapshot::build(spec.config_snapshot().unwrap());
        let mut total = 0;
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(node["id"], spec.node(i).id);
            let config = &configs[node["config"].as_u64().unwrap() as usize];
            let mut read: Vec<(String, Vec<u8>)> = config["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let any = &resources[n.as_u64().unwrap() as usize];
                    (any.type_url.clone(), any.value.clone())
                })
                .collect();
            let mut expected: Vec<(String, Vec<u8>)> = generate(&mesh, &spec, i)
                .unwrap()
                .into_iter()
                .map(|any| (any.type_url, any.value))
                .collect();
            read.sort();
            expected.sort();
            assert_eq!(read, expected, "proxy {i}");
            total += expected.len();
        }
        // Every proxy sees every service's clusters: most are shared.
        assert!(summary.resources < total / 2, "{summary:?} vs {total}");
        // Proxies of different services differ (their inbound side).
        assert!(summary.configs >= spec.services, "{summary:?}");
    }
}
