//! Compiles `proto/dmlogd/*.proto` with protox (pure Rust: no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("dmlogd/peer.proto"), root.join("dmlogd/admin.proto")];
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.join("dmlogd").display());
    Ok(())
}
