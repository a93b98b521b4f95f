//! Compiles the XDP program with clang (through libbpf-cargo) into `$OUT_DIR/redirect.bpf.o`,
//! which `lib.rs` embeds.

use libbpf_cargo::SkeletonBuilder;
use std::{env, path::PathBuf};

fn main() {
    let src = "src/redirect.bpf.c";
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("redirect.bpf.o");
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64",
        Ok("aarch64") => "aarch64",
        Ok(other) => panic!("unsupported target architecture {other}"),
        Err(_) => "x86_64",
    };
    SkeletonBuilder::new()
        .source(src)
        .obj(&out)
        .clang_args(["-O2", "-g", "-Wall", &format!("-I/usr/include/{arch}-linux-gnu")])
        .build()
        .unwrap_or_else(|e| panic!("compiling {src} (needs clang and libbpf-dev: run scripts/setup.sh): {e:#}"));
    println!("cargo:rerun-if-changed={src}");
}
