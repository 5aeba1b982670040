//! Generates the gRPC code from `proto/pocket.proto` with a vendored protoc,
//! so a fresh machine needs no protobuf package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto/pocket.proto");
    tonic_prost_build::configure()
        .bytes(".pocket.v1")
        .compile_protos(&["proto/pocket.proto"], &["proto"])?;
    Ok(())
}
