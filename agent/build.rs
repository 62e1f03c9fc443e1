//! Link flags of the `agent` binary: packed relative relocations where the
//! C library that will load it understands them, and identical code folding
//! where the linker is LLD.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if glibc_has_relr() {
        // Packed relative relocations (DT_RELR): the dynamic loader reads the
        // whole relocation table at start-up, and as plain RELA entries that
        // table is ~0.7 MB of the idle agent's resident memory; packed, a few
        // KB. The binary then needs glibc >= 2.36 to start.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if release_with_lld() {
        // Identical code folding: one copy of functions whose machine code is
        // the same (monomorphised drops, futures of one shape). ~80 KB less
        // of the release agent; Rust makes no promise that two functions'
        // addresses differ.
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    }
}

/// A native release build for x86_64-unknown-linux-gnu, where rustc (1.90 and
/// later) links with its bundled LLD by default; GNU ld has no `--icf`.
fn release_with_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("HOST") == var("TARGET")
}

/// True for a native glibc build on glibc 2.36 or later. Cross builds and the
/// musl (static) image build keep plain relocations: we cannot ask their C
/// library, and a glibc older than 2.36 refuses to load a DT_RELR binary.
fn glibc_has_relr() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
    {
        return false;
    }
    // "glibc 2.36"
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    matches!(
        (parts.next().flatten(), parts.next().flatten()),
        (Some(major), Some(minor)) if (major, minor) >= (2, 36)
    )
}
