//! Compiles `proto/ca.proto` (Istio's IstioCertificateService) with protox,
//! so no system `protoc` is needed. `google.protobuf.Struct` is prost-types'
//! (prost-build's default for the well-known types).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let ca_proto = format!("{proto_dir}/ca.proto");
    println!("cargo:rerun-if-changed={ca_proto}");
    let descriptors = protox::compile([&ca_proto], [proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
