//! The GPU, when the shared ggml has one: Whisper and llama.cpp run on it (`[asr] gpu`,
//! `[llm] gpu_layers`), and on the CPU when it has none — a CUDA build on a machine
//! without a GPU warns and runs on, it does not fail.

/// A GPU the shared ggml can run on.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// ggml's name for it ("CUDA0").
    pub name: String,
    /// What it is ("Orin", "NVIDIA H200").
    pub description: String,
    pub memory_total: usize,
    pub memory_free: usize,
}

/// Whether ggml was built with CUDA (`VOXD_GGML_CUDA=ON ./scripts/setup`).
pub fn cuda_built_in() -> bool {
    // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string.
    let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) }.to_string_lossy().into_owned();
    info.contains("CUDA")
}

/// The GPUs ggml found (none without a GPU backend, or without a device for it).
pub fn gpus() -> Vec<Gpu> {
    use llama_cpp_2::LlamaBackendDeviceType as Kind;
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, Kind::Gpu | Kind::IntegratedGpu))
        .map(|d| Gpu { name: d.name, description: d.description, memory_total: d.memory_total, memory_free: d.memory_free })
        .collect()
}

/// What the engines asked of the GPU, and where they will run: for the log at start
/// and `voxd doctor`. A warning when the GPU was asked for and cannot be had.
pub fn placement(asr_gpu: bool, llm_gpu_layers: i32) -> Result<String, String> {
    describe(&gpus(), cuda_built_in(), asr_gpu, llm_gpu_layers)
}

fn describe(gpus: &[Gpu], cuda: bool, asr_gpu: bool, llm_gpu_layers: i32) -> Result<String, String> {
    let wanted = asr_gpu || llm_gpu_layers != 0;
    match gpus.first() {
        Some(gpu) => {
            let mut on = Vec::new();
            if asr_gpu {
                on.push("Whisper".to_string());
            }
            match llm_gpu_layers {
                0 => {}
                -1 => on.push("the LLM (all its layers)".to_string()),
                n => on.push(format!("the LLM ({n} layers)")),
            }
            let on = if on.is_empty() { "nothing ([asr] gpu = false, [llm] gpu_layers = 0): the CPU only".to_string() } else { on.join(" and ") };
            Ok(format!("{} ({}, {} of {} MiB free): {on}", gpu.name, gpu.description, gpu.memory_free >> 20, gpu.memory_total >> 20))
        }
        None if wanted && cuda => Err("this ggml is built with CUDA but finds no GPU (no driver or device nodes, or a machine without one): Whisper and the LLM run on the CPU".to_string()),
        None if cuda => Ok("none found, none asked for ([asr] gpu = false, [llm] gpu_layers = 0): the CPU only".to_string()),
        None => Ok("none in this ggml build: Whisper and the LLM run on the CPU".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_run_where_they_can_and_a_missing_gpu_is_a_warning() {
        let orin = Gpu { name: "CUDA0".into(), description: "Orin".into(), memory_total: 15_389 << 20, memory_free: 14_012 << 20 };
        assert_eq!(describe(&[orin.clone()], true, true, -1).unwrap(), "CUDA0 (Orin, 14012 of 15389 MiB free): Whisper and the LLM (all its layers)");
        assert_eq!(describe(&[orin.clone()], true, false, 20).unwrap(), "CUDA0 (Orin, 14012 of 15389 MiB free): the LLM (20 layers)");
        assert!(describe(&[orin], true, false, 0).unwrap().ends_with("the CPU only"));
        // A CUDA build without a GPU runs on the CPU, and says so once as a warning.
        assert!(describe(&[], true, true, -1).unwrap_err().contains("run on the CPU"));
        assert!(describe(&[], true, false, 0).is_ok());
        assert_eq!(describe(&[], false, true, -1).unwrap(), "none in this ggml build: Whisper and the LLM run on the CPU");
    }
}
