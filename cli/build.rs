//! Links the `expflow` executable position-dependent (`-no-pie`) on Linux x86-64: as a
//! position-independent executable, every start of the 150 MB binary had the loader apply
//! about 176,000 relative relocations and copy the 830 pages they touch, 2.8 ms of the
//! 4.3 ms that `expflow --version` took (docs/decisions.md, "A position-dependent
//! executable"). Shared libraries, stack, heap and mappings stay randomized; only the
//! executable's own addresses are fixed. `EXPFLOW_PIE=1` at build time keeps the default.

fn main() {
    println!("cargo:rerun-if-env-changed=EXPFLOW_PIE");
    let target = std::env::var("TARGET").unwrap_or_default();
    let pie = std::env::var("EXPFLOW_PIE").is_ok_and(|v| v == "1");
    if target == "x86_64-unknown-linux-gnu" && !pie {
        println!("cargo:rustc-link-arg-bin=expflow=-no-pie");
    }
}
