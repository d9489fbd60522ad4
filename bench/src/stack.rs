//! The stack under test as the load generator sees it (two confab nodes, the database, Redis),
//! and the public API calls the scenarios use to set themselves up: a tenant with generous
//! limits, users with tokens, conversations, messages, sockets.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::BoxError;
use crate::http1::{Http1, Method};

/// User tokens outlive the longest run.
const TOKEN_TTL_SECS: u64 = 86_400;
/// Members per add request (confab's `chat.max_batch_ids`).
const MEMBERS_PER_REQUEST: usize = 100;
/// Concurrent setup requests (users, tokens): enough to be quick, few enough not to time out.
const SETUP_CONCURRENCY: usize = 16;
/// Limits of the benchmark tenant: far above what a run does, so no request is refused by a
/// quota (a 429 would measure the limiter, not the system).
const TENANT_LIMITS: &str = r#"{"max_users": 1000000, "max_conversation_members": 100000,
    "max_message_bytes": 16384, "requests_per_second": 1000000}"#;

pub type Socket = WebSocketStream<TcpStream>;

pub struct Stack {
    pub node_a: String,
    pub node_b: String,
    pub operator_token: String,
    pub db_prefix: String,
    pub redis_url: String,
    pub mongo: mongodb::Client,
    pub http: Http1,
}

/// A tenant with a server key holding every scope.
pub struct Tenant {
    pub id: String,
    pub key: String,
}

/// An end user and a token for them.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

impl Stack {
    pub fn tenant_db(&self, tenant: &Tenant) -> mongodb::Database {
        self.mongo.database(&format!("{}t_{}", self.db_prefix, tenant.id))
    }

    /// `method node+path` with a bearer token and optional JSON body; non-2xx is an error.
    pub async fn call(
        &self,
        node: &str,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        self.call_as(node, method, path, token, body).await
    }

    /// `call`, reading the answer as `T` (an empty body is JSON `null`). Measured requests read
    /// only what they check: the load generator shares the machine with the stack, and building
    /// a whole JSON tree per answer would take CPU from what is measured.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        node: &str,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<T, String> {
        let body = body.map(serde_json::to_vec).transpose().map_err(|e| format!("{method} {path}: {e}"))?;
        let answer = self
            .http
            .request(node, method, path, token, body.as_deref())
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if !answer.is_success() {
            let text = String::from_utf8_lossy(&answer.body);
            return Err(format!("{method} {path}: {} {}", answer.status, text.chars().take(300).collect::<String>()));
        }
        let json: &[u8] = if answer.body.is_empty() { b"null" } else { &answer.body };
        serde_json::from_slice(json).map_err(|e| format!("{method} {path}: unreadable answer: {e}"))
    }

    /// A fresh tenant named `{name}-{random}` with a server key.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, BoxError> {
        let id = format!("{name}-{}", rand::random::<u32>());
        let limits: Value = serde_json::from_str(TENANT_LIMITS)?;
        let body = json!({"id": id, "name": format!("Benchmark {name}"), "limits": limits});
        self.call(&self.node_a, Method::POST, "/admin/v1/tenants", &self.operator_token, Some(&body)).await?;
        let key_path = format!("/admin/v1/tenants/{id}/api-keys");
        let issued = self
            .call(&self.node_a, Method::POST, &key_path, &self.operator_token, Some(&json!({"name": "bench"})))
            .await?;
        let key = issued["key"].as_str().ok_or("no key in the API key answer")?.to_string();
        Ok(Tenant { id, key })
    }

    /// Creates users `{prefix}{0..n}` and a token for each.
    pub async fn users(&self, tenant: &Tenant, prefix: &str, n: usize) -> Result<Vec<User>, BoxError> {
        let made = futures_util::stream::iter(0..n)
            .map(|i| self.user(tenant, format!("{prefix}{i}")))
            .buffered(SETUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        made.into_iter().collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    pub async fn user(&self, tenant: &Tenant, id: String) -> Result<User, String> {
        let profile = json!({"display_name": id});
        self.call(&self.node_a, Method::PUT, &format!("/v1/users/{id}"), &tenant.key, Some(&profile)).await?;
        let ttl = json!({"ttl_secs": TOKEN_TTL_SECS});
        let path = format!("/v1/users/{id}/tokens");
        let minted = self.call(&self.node_a, Method::POST, &path, &tenant.key, Some(&ttl)).await?;
        let token = minted["token"].as_str().ok_or("no token in the answer")?.to_string();
        Ok(User { id, token })
    }

    /// A group conversation created by `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &User, members: &[&User]) -> Result<String, BoxError> {
        let mut batches = members.chunks(MEMBERS_PER_REQUEST);
        let first: Vec<&str> = batches.next().unwrap_or_default().iter().map(|u| u.id.as_str()).collect();
        let body = json!({"type": "group", "name": "bench", "members": first});
        let created = self.call(&self.node_a, Method::POST, "/v1/conversations", &owner.token, Some(&body)).await?;
        let id = created["id"].as_str().ok_or("no conversation id")?.to_string();
        for batch in batches {
            let ids: Vec<&str> = batch.iter().map(|u| u.id.as_str()).collect();
            let path = format!("/v1/conversations/{id}/members");
            self.call(&self.node_a, Method::POST, &path, &owner.token, Some(&json!({"user_ids": ids}))).await?;
        }
        Ok(id)
    }

    /// Sends a text message through `node`; `metadata` carries the benchmark's own fields.
    pub async fn send(
        &self,
        node: &str,
        user: &User,
        conversation: &str,
        client_msg_id: &str,
        text: &str,
        metadata: Option<Value>,
    ) -> Result<(), String> {
        let mut body = json!({"client_msg_id": client_msg_id, "text": text});
        if let Some(metadata) = metadata {
            body["metadata"] = metadata;
        }
        let path = format!("/v1/conversations/{conversation}/messages");
        self.call_as::<IgnoredAny>(node, Method::POST, &path, &user.token, Some(&body)).await.map(|_| ())
    }
}

/// A message body of about `bytes` bytes of ordinary words (search terms are derived from it,
/// as for real chat text).
pub fn message_text(seq: u64, bytes: usize) -> String {
    const WORDS: [&str; 12] =
        ["deploy", "the", "build", "review", "looks", "good", "ship", "it", "after", "lunch", "thanks", "team"];
    let mut text = format!("message {seq}:");
    let mut i = seq as usize;
    while text.len() < bytes {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

/// Bytes a benchmark socket reads at once unless its `config` says otherwise. tungstenite zeroes
/// the whole read buffer before every read (128 KiB by default): S3's subscribers read each
/// frame as it comes, and that zeroing was a fifth of the load generator's CPU, taken from the
/// 2 cores the stack under test shares with it.
const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// Opens a WebSocket to `url` (ws://host:port/path) as `token`, from `source` when given (a
/// 127.0.0.x address of its own, so many sockets do not run out of ephemeral ports).
pub async fn open_socket(
    url: &str,
    token: &str,
    source: Option<std::net::IpAddr>,
    config: Option<WebSocketConfig>,
) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    let authority = request.uri().authority().ok_or("no host in the URL")?.as_str();
    let target: SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(target))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let config = config.unwrap_or_else(|| WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER));
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(socket)
}

/// Tasks that hold sockets, aborted (closing their sockets) when this is dropped, so that a
/// scenario that ends, even by an error, leaves no descriptors behind for the next one.
#[derive(Default)]
pub struct SocketTasks(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for SocketTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// `http://host:port` -> `ws://host:port`.
pub fn ws_base(node: &str) -> String {
    node.replacen("http://", "ws://", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_has_the_asked_size_and_words() {
        let text = message_text(7, 120);
        assert!((120..140).contains(&text.len()), "{text}");
        assert!(text.starts_with("message 7: "));
    }
}
