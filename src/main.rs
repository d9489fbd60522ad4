use std::process::ExitCode;

use clap::Parser;
use confab::cli::{Cli, Command};

/// mimalloc: the request paths allocate and free many small strings and buffers, which glibc's
/// allocator spent a sixth of a node's CPU on. Built without transparent huge pages (`no_thp`):
/// with them, each fresh 2 MiB of heap was zeroed at its first touch, and a collaborative room
/// applying a burst of edits spent two fifths of its time in the kernel doing so.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Openapi => confab::cli::print_openapi(),
        Command::Asyncapi => confab::cli::print_asyncapi(),
        Command::Serve => confab::cli::serve(cli.config.as_deref()).await,
        Command::Tenants { command } => confab::cli::tenants(cli.config.as_deref(), command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("confab: {message}");
            ExitCode::FAILURE
        }
    }
}
