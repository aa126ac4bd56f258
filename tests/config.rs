//! The shipped example configuration stays valid and documents every field.

use crate::util::*;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("voxd.example.toml")
}

#[test]
fn the_example_config_passes_check_config() {
    let r = run_ok(&["check-config", example().to_str().unwrap()]);
    assert!(r.stderr.contains("ok"), "{}", r.stderr);
}

#[test]
fn the_example_config_shows_every_field() {
    let text = std::fs::read_to_string(example()).unwrap();
    for (section, fields) in voxd::config::SECTIONS {
        assert!(text.contains(&format!("[{section}]")), "voxd.example.toml lacks [{section}]");
        for field in *fields {
            let shown = text.lines().any(|l| l.trim_start_matches('#').trim_start().starts_with(&format!("{field} =")));
            assert!(shown, "voxd.example.toml does not show {section}.{field}");
        }
    }
}

#[test]
fn the_example_config_holds_the_defaults() {
    let parsed = voxd::config::Config::load(&example()).unwrap();
    let defaults = voxd::config::Config { source: parsed.source.clone(), ..Default::default() };
    assert_eq!(parsed, defaults, "voxd.example.toml should show the built-in defaults");
}
