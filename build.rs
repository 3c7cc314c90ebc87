//! Compiles `proto/tern/v1/*.proto` into Rust with tonic/prost.
//!
//! protoc comes from the `protoc-bin-vendored` crate so a fresh machine needs no system
//! protoc. A file descriptor set is emitted for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single threaded; set_var is sound here, but it is
    // `unsafe` since edition 2024, so we pass the path through the builder instead.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/tern/v1/resources.proto",
        "proto/tern/v1/api.proto",
        "proto/tern/v1/sync.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Resource payloads on the sync stream are pre-encoded JSON shared by every agent
    // stream; `Bytes` makes each clone a reference count instead of a copy.
    config.bytes([".tern.v1.Item.value"]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tern_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
