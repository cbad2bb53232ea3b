//! Generates the prost messages and tonic services for `ledger.v1`, with a vendored protoc so no
//! system protoc is needed, and a file descriptor set for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Malformed bodies are the caller's error (INVALID_ARGUMENT), not INTERNAL as prost's
        // own codec says.
        .codec_path("crate::codec::ApiCodec")
        .file_descriptor_set_path(out_dir.join("ledger_v1_descriptor.bin"))
        .compile_with_config(
            config,
            &["ledger/v1/ledger.proto", "ledger/v1/audit.proto", "ledger/v1/privacy.proto", "ledger/v1/admin.proto", "ledger/v1/messaging.proto", "ledger/v1/views.proto"],
            &[".", include.to_str().ok_or("include path is not utf-8")?],
        )?;
    println!("cargo:rerun-if-changed=ledger/v1");
    Ok(())
}
