//! voxd's integration tests: real engines on real models (installed by
//! `./scripts/setup`), driven through the `voxd` binary as a user would.

mod util;

mod bad_input;
mod config;
mod control;
mod engines;
mod live;
mod models;
mod pipeline;
mod properties;
mod select;
mod service;
mod tools;
mod wake;
mod wyoming;
