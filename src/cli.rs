//! The `confab` command line: `serve`, `tenants apply DIR`, `openapi`, `asyncapi`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::app::{AppState, Application};
use crate::config::Settings;
use crate::platform::manifests;
use crate::telemetry;

#[derive(Parser)]
#[command(name = "confab", version, about = "Multi-tenant chat-as-a-service")]
pub struct Cli {
    /// TOML settings file (also `CONFAB_CONFIG`); `CONFAB__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the REST API and the WebSocket gateway.
    Serve,
    /// Manage tenants from declarative manifests.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Print the OpenAPI document (regenerate openapi/openapi.json with it).
    Openapi,
    /// Print the AsyncAPI document of the WebSocket protocol (regenerate openapi/asyncapi.yaml).
    Asyncapi,
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Create or update every tenant described by DIR/*.toml; idempotent.
    Apply { dir: PathBuf },
}

pub fn print_asyncapi() -> Result<(), String> {
    print!("{}", crate::gateway::asyncapi::document_yaml());
    Ok(())
}

pub fn print_openapi() -> Result<(), String> {
    println!("{}", crate::http::openapi::document_json());
    Ok(())
}

pub async fn serve(config: Option<&Path>) -> Result<(), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    telemetry::init_logging(&settings.log);
    let app = Application::build(settings).await.map_err(|e| e.to_string())?;
    tracing::info!(port = app.port(), "confab is listening");
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

pub async fn tenants(config: Option<&Path>, command: TenantsCommand) -> Result<(), String> {
    let TenantsCommand::Apply { dir } = command;
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    let loaded = manifests::load_dir(&dir).map_err(|e| e.to_string())?;
    let state = AppState::new(settings).await.map_err(|e| e.to_string())?;
    state.store.ensure_platform_indexes().await.map_err(|e| e.to_string())?;
    for (path, manifest) in loaded {
        let id = manifest.id.clone();
        let outcome = manifests::apply(&state, manifest).await.map_err(|e| format!("{}: {e:?}", path.display()))?;
        println!("tenant {id}: {}", format!("{outcome:?}").to_lowercase());
    }
    Ok(())
}
