//! Compiles proto/*.proto with protox (pure Rust, no system protoc) into tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/common.proto",
        "proto/filesystem.proto",
        "proto/process.proto",
        "proto/git.proto",
        "proto/archive.proto",
        "proto/snapshot.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Unimplemented methods answer UNIMPLEMENTED instead of failing to compile,
        // so a service can grow one RPC at a time.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
