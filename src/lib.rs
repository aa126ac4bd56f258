//! voxd: a real-time, local voice assistant daemon.
//!
//! Layout: `pipeline` is the voice pipeline (one file per stage, the topology in
//! `pipeline/mod.rs`); `engine` holds the three inference engines (whisper, llama, piper) as plain
//! structs; `tools` is what the assistant can do in the home (schemas, executors, intents); `models` gets and checks their files; `catalog` is models.toml; `config`
//! is voxd.toml; `audio` reads and writes WAV; `cli` wires them into commands.

pub mod audio;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod control;
pub mod device;
pub mod doctor;
pub mod engine;
pub mod latency;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod paths;
pub mod pipeline;
pub mod select;
pub mod service;
pub mod tools;
pub mod wyoming;
