//! Link settings for release builds of the `operator` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    println!("cargo:rerun-if-env-changed=OPERATOR_NO_RELR");
    println!("cargo:rerun-if-env-changed=OPERATOR_NO_HOT_TEXT");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if !(linux && gnu && release) {
        return;
    }
    // Packed relative relocations (DT_RELR, glibc >= 2.36, GNU ld >= 2.38 or lld): the
    // relocation table shrinks from ~0.7 MB to a few KB, which the dynamic loader otherwise
    // reads at every start — of the operator and of each sim agent — and which stays
    // resident. docs/performance.md has the figures.
    if std::env::var_os("OPERATOR_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions a chain runs, placed first (link/hot-text.py made the list): the kernel
    // maps code in 64 KB windows, so scattered hot functions made nearly all of `.text`
    // resident. The script only orders sections (`INSERT BEFORE .text`); a name it lists that
    // this build lacks is ignored.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    if script.is_file() && std::env::var_os("OPERATOR_NO_HOT_TEXT").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
