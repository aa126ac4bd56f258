//! voxd: a real-time, local voice assistant daemon.
//!
//! Layout: `engine` holds the three inference engines (whisper, llama, piper) as plain
//! structs; `models` gets and checks their files; `catalog` is models.toml; `config`
//! is voxd.toml; `audio` reads and writes WAV; `cli` wires them into commands.

pub mod audio;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod engine;
pub mod logging;
pub mod models;
pub mod paths;
