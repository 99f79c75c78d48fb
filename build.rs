//! Links the server binary with its hottest functions first, in the order of
//! `link/hot-functions.txt`: the functions a forwarded packet runs through then share pages
//! and cache lines instead of lying wherever the compiler emitted them. In a room of two every
//! packet runs them with cold caches, and that order cost 5 % less CPU per packet
//! (docs/design.md, "The hot path is laid out first"; docs/performance.md, "Small rooms").
//!
//! Only where the linker is LLD, Rust's default on `x86_64-unknown-linux-gnu` since 1.90:
//! `SWITCHBOARD_NO_FUNCTION_ORDER=1` turns it off for another linker. Names in the file that
//! a build does not have are skipped, so a stale list costs nothing but the gain;
//! `scripts/hot-functions.sh` writes a fresh one.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_NO_FUNCTION_ORDER");
    let lld_by_default = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !lld_by_default || env::var_os("SWITCHBOARD_NO_FUNCTION_ORDER").is_some() {
        return;
    }
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&manifest).join("link/hot-functions.txt");
    println!(
        "cargo:rustc-link-arg-bin=switchboard=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=switchboard=-Wl,--no-warn-symbol-ordering");
}
