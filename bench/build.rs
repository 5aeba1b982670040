//! Generates the Loopback service's gRPC code from `proto/loopback.proto`
//! with a vendored protoc, as `pocket-proto` does for the production schema.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/loopback.proto");
    // `bytes` fields as `Bytes`, as in the production schema: a chunk is
    // sent without a copy.
    tonic_prost_build::configure()
        .bytes(".pocket.bench.v1")
        .compile_protos(&["proto/loopback.proto"], &["proto"])?;
    Ok(())
}
