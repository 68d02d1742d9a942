//! Compiles `proto/tributary/v1/*.proto` with `protox` (a pure-Rust protobuf
//! compiler, so no `protoc` binary is needed), generates the prost messages and
//! tonic services, and writes the encoded file descriptor set for gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTO_ROOT: &str = "proto";
const FILES: &[&str] = &[
    "tributary/v1/common.proto",
    "tributary/v1/contributors.proto",
    "tributary/v1/anchor.proto",
    "tributary/v1/consent.proto",
    "tributary/v1/submissions.proto",
    "tributary/v1/versions.proto",
    "tributary/v1/ledger.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(FILES, [PROTO_ROOT])?;
    std::fs::write(
        out_dir.join("tributary_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
