//! Generates the gRPC code of `proto/palisade.proto` (needs `protoc`: Debian's protobuf-compiler,
//! installed by scripts/setup.sh).

fn main() {
    tonic_prost_build::compile_protos("proto/palisade.proto")
        .unwrap_or_else(|e| panic!("compiling proto/palisade.proto (needs protoc: run scripts/setup.sh): {e}"));
    println!("cargo:rerun-if-changed=proto/palisade.proto");
}
