//! Where voxd keeps things outside the repository, following the XDG base directories.

use std::path::PathBuf;

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// `${XDG_CONFIG_HOME:-~/.config}`.
pub fn config_home() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config")
}

/// Downloads and build caches: `$VOXD_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/voxd`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("VOXD_CACHE_DIR") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => xdg("XDG_CACHE_HOME", ".cache").join("voxd"),
    }
}

/// Installed models: `$VOXD_MODELS_DIR`, else `${XDG_DATA_HOME:-~/.local/share}/voxd/models`.
pub fn default_models_dir() -> PathBuf {
    match std::env::var_os("VOXD_MODELS_DIR") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => xdg("XDG_DATA_HOME", ".local/share").join("voxd/models"),
    }
}
