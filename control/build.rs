//! Generates the gRPC code of `proto/palisade.proto` and the messages of `proto/felixbackend.proto`
//! (needs `protoc`: Debian's protobuf-compiler, installed by scripts/setup.sh).

fn main() {
    let protos = ["proto/palisade.proto", "proto/felixbackend.proto"];
    tonic_prost_build::configure()
        .compile_protos(&protos, &["proto"])
        .unwrap_or_else(|e| panic!("compiling {protos:?} (needs protoc: run scripts/setup.sh): {e}"));
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
}
