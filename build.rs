// Generates the gRPC server/client code from proto/ with a vendored protoc,
// so a fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("intentd_descriptor.bin"))
        // JSON output of stats and reports reuses the API types.
        .type_attribute(".intentd.v1", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/intentd/v1/intentd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
