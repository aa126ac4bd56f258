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

    // A CUDA ggml (VOXD_GGML_CUDA=ON): llama-cpp-sys-2's system-ggml-static links only
    // ggml, ggml-base and ggml-cpu. The CUDA backend goes in whole (voxd's own libraries
    // come first on the link line, before the libggml.a whose registry refers to it),
    // with CUDA's runtime linked in (it looks for the driver when voxd starts: without
    // one ggml finds no GPU and the engines run on the CPU) and cuBLAS from the
    // toolkit ggml was built with (scripts/build-ggml writes its root to
    // `cuda-path`; JetPack installs it system-wide, scripts/cuda-toolkit into the cache,
    // hence the rpath). ggml is built without the driver API (GGML_CUDA_NO_VMM), so
    // nothing links libcuda itself.
    if let Some(prefix) = env::var_os("VOXD_GGML_PREFIX").map(PathBuf::from) {
        if prefix.join("lib/libggml-cuda.a").exists() {
            println!("cargo:rerun-if-env-changed=CUDA_PATH");
            let recorded = std::fs::read_to_string(prefix.join("cuda-path")).ok().map(|p| PathBuf::from(p.trim()));
            let cuda = recorded
                .or_else(|| env::var_os("CUDA_PATH").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
            for dir in ["lib64", "lib", "targets/aarch64-linux/lib", "targets/sbsa-linux/lib", "targets/x86_64-linux/lib"] {
                if cuda.join(dir).is_dir() {
                    println!("cargo:rustc-link-search=native={}", cuda.join(dir).display());
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cuda.join(dir).display());
                }
            }
            println!("cargo:rustc-link-lib=static:+whole-archive=ggml-cuda");
            println!("cargo:rustc-link-lib=static=cudart_static");
            for lib in ["cublas", "cublasLt", "dl", "rt", "pthread"] {
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }
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
