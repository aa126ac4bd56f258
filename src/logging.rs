//! Logs go to stderr through tracing; whisper.cpp's, ggml's and llama.cpp's own logs
//! are routed into it too (they are chatty: shown from `warn` unless -v).

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};

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
    // whisper.cpp's own messages through voxd's hook instead (see `whisper_log`).
    // SAFETY: a plain function pointer, valid for the whole run; no user data.
    unsafe { whisper_rs_sys::whisper_log_set(Some(whisper_log), std::ptr::null_mut()) };
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
}

thread_local! {
    /// Set while this thread runs a pass whose failure is no error (a draft).
    static ERRORS_EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with whisper.cpp's errors logged at debug level: a draft transcription
/// that voxd stops makes whisper.cpp report "failed to encode" — the stop voxd asked
/// for, not something for the user to see.
pub fn whisper_errors_expected<T>(f: impl FnOnce() -> T) -> T {
    ERRORS_EXPECTED.with(|e| e.set(true));
    let out = f();
    ERRORS_EXPECTED.with(|e| e.set(false));
    out
}

/// whisper.cpp's log callback (whisper.cpp logs on the thread that called it).
unsafe extern "C" fn whisper_log(level: whisper_rs_sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a NUL-terminated string that lives for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    match level {
        whisper_rs_sys::ggml_log_level_GGML_LOG_LEVEL_ERROR if !ERRORS_EXPECTED.with(Cell::get) => tracing::error!(target: "whisper.cpp", "{text}"),
        whisper_rs_sys::ggml_log_level_GGML_LOG_LEVEL_WARN => tracing::warn!(target: "whisper.cpp", "{text}"),
        whisper_rs_sys::ggml_log_level_GGML_LOG_LEVEL_INFO => tracing::info!(target: "whisper.cpp", "{text}"),
        _ => tracing::debug!(target: "whisper.cpp", "{text}"),
    }
}
