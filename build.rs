//! Link-time glue for the engines (see README.md "Building").
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=VOXD_GGML_PREFIX");
    println!("cargo:rerun-if-env-changed=ORT_LIB_LOCATION");

    // whisper-rs-sys links `ggml`, `ggml-base`, `ggml-cpu` by name but only searches its
    // own build tree; with WHISPER_USE_SYSTEM_GGML the libraries live in the shared prefix.
    let ggml = env::var_os("VOXD_GGML_PREFIX").map(PathBuf::from);
    match ggml {
        Some(prefix) if prefix.join("lib/libggml.a").exists() => {
            println!("cargo:rustc-link-search=native={}", prefix.join("lib").display());
        }
        _ => panic!(
            "voxd: the shared ggml is missing (expected VOXD_GGML_PREFIX/lib/libggml.a, \
             VOXD_GGML_PREFIX={ggml:?}); run ./scripts/setup first"
        ),
    }

    // espeak-ng (inside piper-rs) is built against Debian's libsonic but does not link it.
    println!("cargo:rustc-link-arg=-lsonic");

    // ONNX Runtime is a shared library: find it next to the binary when installed,
    // else where setup put it.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN:$ORIGIN/../lib/voxd");
    if let Some(ort) = env::var_os("ORT_LIB_LOCATION") {
        let ort = PathBuf::from(ort);
        let ort = ort.canonicalize().unwrap_or(ort);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", ort.display());
    }
}
