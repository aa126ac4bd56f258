//! Logs go to stderr through tracing; whisper.cpp's, ggml's and llama.cpp's own logs
//! are routed into it too (they are chatty: shown from `warn` unless -v).

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8, quiet: bool) {
    // The PulseAudio client reports a server that went away as an error of its own;
    // voxd hears of it from the stream and says what it does about it.
    let default = match (quiet, verbose) {
        (true, _) => "error,pulseaudio=off",
        (false, 0) => "voxd=info,warn,pulseaudio=off",
        (false, 1) => "voxd=debug,info,pulseaudio=off",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_env("VOXD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(verbose > 0).without_time().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init();
    whisper_rs::install_logging_hooks();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
}
