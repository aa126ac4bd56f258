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

/// State that voxd writes and reads back (the model selection):
/// `${XDG_STATE_HOME:-~/.local/state}/voxd`.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("voxd")
}

/// "2026-11-25 09:30 UTC" for `secs` since the Unix epoch (for reports).
pub fn utc_date(secs: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc_date(1_795_599_175), "2026-11-25 09:32 UTC");
        assert_eq!(super::utc_date(951_782_400), "2000-02-29 00:00 UTC");
    }
}
