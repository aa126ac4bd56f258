use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = voxd::cli::Cli::parse();
    voxd::logging::init(cli.verbose, cli.quiet);
    match voxd::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
