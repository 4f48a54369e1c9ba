//! Links the `bgq` binary as a position-dependent executable: a PIE carries some 11,600
//! relative relocations (vtables, string tables) that the dynamic loader applies at every
//! start, about a fifth of what `bgq --version` costs (issue 17). Only the binary is linked
//! so; the code stays position-independent, as the libraries it is linked with are.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
