//! Generates the gRPC code. Uses the vendored protoc unless `PROTOC` points at another one, so a
//! bare `cargo build` works on a machine without protobuf-compiler.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("descriptors.bin"))
        .compile_with_config(
            config,
            &[
                "../../proto/revisionrun/revisionrun.proto",
                "../../proto/stagetime/v1/stagetime.proto",
            ],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
