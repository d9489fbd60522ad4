//! Declarative tenants: `tenants/*.toml` files applied idempotently. A manifest names a tenant
//! and its plan and limits; applying creates what is missing and updates what differs, and a
//! second run changes nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::app::AppState;
use crate::auth::OperatorCaller;
use crate::domain::{PlanName, TenantId, TenantLimitsPatch};
use crate::error::ApiError;

use super::tenants::{self, NewTenant, TenantChanges};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantManifest {
    pub id: TenantId,
    pub name: String,
    #[serde(default)]
    pub plan: PlanName,
    #[serde(default)]
    pub limits: TenantLimitsPatch,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {error:?}")]
    Apply { path: PathBuf, error: ApiError },
}

/// Reads every `*.toml` in `dir`, in name order, failing before any change if one is invalid.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, TenantManifest)>, ManifestError> {
    let invalid = |path: &Path, message: String| ManifestError::Invalid { path: path.to_path_buf(), message };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| invalid(dir, e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e.to_string()))?;
            let manifest: TenantManifest = toml::from_str(&text).map_err(|e| invalid(&path, e.to_string()))?;
            let name = manifest.name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                return Err(invalid(&path, "name must be 1-100 characters".into()));
            }
            Ok((path, manifest))
        })
        .collect()
}

/// Brings one tenant in line with its manifest.
pub async fn apply(state: &AppState, manifest: TenantManifest) -> Result<Applied, ApiError> {
    let caller = OperatorCaller::manifest_runner();
    let existing = state.store.tenants().get(&manifest.id).await?;
    let Some(current) = existing else {
        let new = NewTenant {
            id: manifest.id,
            name: manifest.name.trim().to_string(),
            plan: manifest.plan,
            limits: manifest.limits,
            allowed_mime_types: Vec::new(),
            allowed_origins: Vec::new(),
        };
        tenants::create_tenant(state, &caller, new).await?;
        return Ok(Applied::Created);
    };
    // Indexes may have been added since the tenant was created.
    state.store.tenant_db(&caller.scope_for(&current.id)).provision().await?;
    let name = manifest.name.trim();
    let limits = current.limits.patched(&manifest.limits).map_err(|e| ApiError::validation(e.field, e.to_string()))?;
    let changes = TenantChanges {
        name: (current.name != name).then(|| name.to_string()),
        plan: (current.plan != manifest.plan).then_some(manifest.plan),
        limits: (current.limits != limits).then_some(manifest.limits),
        status: None,
        allowed_mime_types: None,
        allowed_origins: None,
    };
    if changes.name.is_none() && changes.plan.is_none() && changes.limits.is_none() {
        return Ok(Applied::Unchanged);
    }
    tenants::update_tenant(state, &caller, &current.id, changes).await?;
    Ok(Applied::Updated)
}
