//! Link settings for release builds of the `operator` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Packed relative relocations (DT_RELR, glibc >= 2.36, GNU ld >= 2.38 or lld): the
    // relocation table shrinks from ~0.7 MB to a few KB, which the dynamic loader otherwise
    // reads at every start — of the operator and of each `operator agent-exec` — and which
    // stays resident. Release builds on Linux only; docs/performance.md has the figures.
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if linux && gnu && release && std::env::var_os("OPERATOR_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=OPERATOR_NO_RELR");
}
