//! Compiles `proto/dmlogd/admin.proto` (the admin API that `dmlogctl`
//! speaks) with protox (pure Rust: no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a build script
    // binary may be reused for a checkout at another path.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [root.join("dmlogd/admin.proto")];
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.join("dmlogd/admin.proto").display());
    Ok(())
}
