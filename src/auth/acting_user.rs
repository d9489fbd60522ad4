//! The end user a request acts as: either the user of a valid JWT, or a user named by a server
//! key with `?user_id=`. Both get exactly that user's permissions; server keys additionally need
//! the route's scope.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;

use crate::app::AppState;
use crate::domain::{ApiKey, Scope, Tenant, User, UserId};
use crate::error::{ApiError, ErrorCode};

use super::extractors::{admit, app_state, authenticate_key, bearer_token, tenant_of};
use super::{TenantScope, jwt};

/// How the acting user was established.
#[derive(Debug)]
pub enum Via {
    UserToken,
    ServerKey(Arc<ApiKey>),
}

#[derive(Debug)]
pub struct ActingUser {
    /// Shared with this node's cache and every other request of the tenant (and user).
    pub tenant: Arc<Tenant>,
    pub user: Arc<User>,
    pub via: Via,
}

#[derive(Deserialize)]
struct OnBehalfOf {
    user_id: Option<String>,
}

impl ActingUser {
    pub fn scope(&self) -> TenantScope {
        TenantScope { tenant: self.tenant.id.clone() }
    }

    pub fn user_id(&self) -> &UserId {
        &self.user.id
    }

    pub fn is_server(&self) -> bool {
        matches!(self.via, Via::ServerKey(_))
    }

    /// Server keys need `scope`; a user token carries the user's own permissions.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match &self.via {
            Via::ServerKey(key) if !key.has_scope(scope) => {
                Err(ApiError::new(ErrorCode::InsufficientScope, format!("this API key lacks the '{scope}' scope"))
                    .with_details(serde_json::json!({ "required_scope": scope.as_str() })))
            }
            _ => Ok(()),
        }
    }
}

impl FromRequest for ActingUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = app_state(req);
        let token = bearer_token(req).map(str::to_string).unwrap_or_default();
        let on_behalf = web::Query::<OnBehalfOf>::from_query(req.query_string()).ok().and_then(|q| q.0.user_id);
        Box::pin(async move {
            let state = state?;
            if token.starts_with("cfk_") {
                let caller = authenticate_key(&state, &token).await?;
                let raw = on_behalf.ok_or_else(|| {
                    ApiError::validation("user_id", "server keys must name the user to act as with ?user_id=")
                })?;
                let id = UserId::parse(&raw).map_err(|e| ApiError::validation("user_id", e.0))?;
                let user = load_active_user(&state, &caller.scope(), &id, || ApiError::not_found("user")).await?;
                return Ok(Self { tenant: caller.tenant, user, via: Via::ServerKey(caller.key) });
            }
            user_of_token(&state, &token).await
        })
    }
}

/// The user of a valid JWT, once their tenant is admitted.
pub(super) async fn user_of_token(state: &web::Data<AppState>, token: &str) -> Result<ActingUser, ApiError> {
    let tenant_id = state
        .caches
        .tokens
        .known_tenant(token)
        .or_else(|| jwt::claimed_tenant(token))
        .ok_or_else(ApiError::unauthorized)?;
    let tenant = tenant_of(state, &tenant_id).await?;
    let claims = state
        .caches
        .tokens
        .verify(&tenant, token, &state.settings.auth.jwt_issuer)
        .ok_or_else(ApiError::unauthorized)?;
    admit(state, &tenant).await?;
    let id = UserId::parse(&claims.sub).map_err(|_| ApiError::unauthorized())?;
    let scope = TenantScope { tenant: tenant.id.clone() };
    let user = load_active_user(state, &scope, &id, ApiError::unauthorized).await?;
    Ok(ActingUser { tenant, user, via: Via::UserToken })
}

pub(super) async fn load_active_user(
    state: &AppState,
    scope: &TenantScope,
    id: &UserId,
    missing: impl FnOnce() -> ApiError,
) -> Result<Arc<User>, ApiError> {
    let users = state.store.tenant_db(scope).users();
    let user = state.caches.user(&scope.tenant, id, users.get(id)).await?.ok_or_else(missing)?;
    if !user.is_active() {
        return Err(ApiError::new(ErrorCode::UserDeactivated, "this user is deactivated"));
    }
    Ok(user)
}

/// Either a tenant's server (no user needed) or an end user; for routes open to both.
#[derive(Debug)]
pub enum AnyCaller {
    Server(Box<super::TenantCaller>),
    User(Box<ActingUser>),
}

impl AnyCaller {
    pub fn scope(&self) -> TenantScope {
        match self {
            AnyCaller::Server(caller) => caller.scope(),
            AnyCaller::User(user) => user.scope(),
        }
    }

    pub fn tenant(&self) -> &Tenant {
        match self {
            AnyCaller::Server(caller) => &caller.tenant,
            AnyCaller::User(user) => &user.tenant,
        }
    }

    /// Server keys need `scope`; users may read what the route serves.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            AnyCaller::Server(caller) => caller.require(scope),
            AnyCaller::User(_) => Ok(()),
        }
    }
}

impl FromRequest for AnyCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_key = bearer_token(req).is_some_and(|t| t.starts_with("cfk_"));
        if is_key {
            let state = app_state(req);
            let token = bearer_token(req).map(str::to_string).unwrap_or_default();
            Box::pin(async move { Ok(AnyCaller::Server(Box::new(authenticate_key(&state?, &token).await?))) })
        } else {
            let user = ActingUser::from_request(req, payload);
            Box::pin(async move { Ok(AnyCaller::User(Box::new(user.await?))) })
        }
    }
}
