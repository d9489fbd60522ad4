//! Settings: built-in defaults <- optional TOML file <- `CONFAB__SECTION__KEY` environment variables.
//!
//! Every limit confab enforces is a named field here, documented in README.md.

use std::path::Path;

use serde::Deserialize;

use crate::auth::SecretString;
use crate::domain::TenantLimits;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub mongodb: MongoSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub http: HttpSettings,
    pub chat: ChatSettings,
    pub files: FileSettings,
    pub e2e: E2eSettings,
    pub gateway: GatewaySettings,
    pub collab: CollabSettings,
    pub cache: CacheSettings,
    pub tenants: TenantSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    /// 0 picks a free port (tests); the bound port is reported by `Application::port`.
    pub port: u16,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Connections the kernel queues for the accept loop; a connection beyond it is dropped at
    /// its SYN and the client retries a second later (capped by `net.core.somaxconn`).
    pub backlog: u32,
    pub shutdown_timeout_secs: u64,
    /// How long a connection may sit idle, before its first request or between requests, before
    /// confab closes it without a word. Longer than a load balancer's idle timeout (60 s on
    /// common ones), so the balancer closes first and never sends a request into a closing
    /// connection.
    pub keep_alive_secs: u64,
    /// How long a client may take to send a request's head once it has started it (408 after).
    pub request_head_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MongoSettings {
    pub uri: String,
    /// Prefix of every database confab creates: `{prefix}platform`, `{prefix}t_{tenant}`.
    pub db_prefix: String,
    pub server_selection_timeout_ms: u64,
    /// Most connections a node opens to each MongoDB server, unless the URI sets `maxPoolSize`.
    /// A request that finds them all busy queues for one, so too few turn a short stall of the
    /// database into a backlog that outlasts it.
    pub max_pool_size: u32,
    /// Connections each HTTP worker's own client opens (see `tenancy::Store`), for history
    /// reads. Few: a burst waits in confab, which is cheap, rather than in the database, which
    /// gets slower per read the more it runs at once.
    pub worker_pool_size: u32,
}

/// Per-node copies of tenants, API keys, users and memberships (see `caches`).
#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    /// Longest a copy is used; also how long a change made on another node can go unseen
    /// when its Redis notice is lost. 0 turns the copies off.
    pub ttl_ms: u64,
    /// Most copies of each kind a node keeps.
    pub max_entries: usize,
    /// Most stored messages a node keeps for history pages (`caches::history`); 0 keeps none.
    pub history_messages: usize,
    /// Longest a node uses its copy of a stored message. Changes made through confab show at
    /// once whatever this is (copies are checked against a revision in Redis, and a revision
    /// Redis did not take is retried until it does); this bounds only what those miss: a change
    /// made in MongoDB behind confab's back, a node that died with revisions to retry, a Redis
    /// restored from an old snapshot.
    pub history_ttl_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
    /// Prefix of every key and channel: `{prefix}t:{tenant}:...`.
    pub key_prefix: String,
    pub pool_size: usize,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Bearer token for the operator API (`/admin/v1`). At least 32 characters.
    pub operator_token: SecretString,
    /// The `<env>` part of new API keys (`cfk_<env>_...`): 2-8 lowercase letters/digits.
    pub api_key_env: String,
    /// How long a rotated key's previous secret keeps working unless the request says otherwise.
    pub key_rotation_grace_secs: u64,
    /// Upper bound for a requested rotation grace period.
    pub max_key_rotation_grace_secs: u64,
    /// `last_used_at` is written at most once per this interval per key.
    pub key_last_used_resolution_secs: u64,
    /// `iss` of end-user tokens; tokens with another issuer are refused.
    pub jwt_issuer: String,
    /// Lifetime of a minted user token when the request names none.
    pub user_token_default_ttl_secs: u64,
    /// Longest lifetime a minted user token may have.
    pub user_token_max_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatSettings {
    /// Largest `custom` / `metadata` JSON object, encoded.
    pub max_custom_data_bytes: usize,
    /// Most user ids in one batch lookup or member add.
    pub max_batch_ids: usize,
    /// Most attachments, and most mentions, per message.
    pub max_attachments: usize,
    pub max_mentions: usize,
    /// Most pinned messages per conversation.
    pub max_pins: usize,
    /// Longest `client_msg_id`.
    pub max_client_msg_id_len: usize,
    /// Most words in a search query.
    pub max_search_terms: usize,
    /// How often a node puts the words of the messages it stored into search blocks (search
    /// reads what is not indexed yet directly, so this trades index entries against search work).
    pub search_index_interval_ms: u64,
    /// Unindexed messages a conversation gathers before they get a search block.
    pub search_block_min_messages: i64,
    /// How long fewer unindexed messages wait for more before they get a block anyway.
    pub search_block_max_wait_ms: u64,
    /// Bytes of recently stored message texts a node holds so its search indexer need not read
    /// them back; past it, blocks are cut from reads.
    pub search_recent_texts_max_bytes: usize,
    /// Longest name / description of a conversation, display name of a user.
    pub max_name_chars: usize,
    pub max_description_chars: usize,
    /// Committers per tenant and node: batches for different conversations stored side by side.
    pub send_committers: usize,
    /// Most messages a tenant's sends are stored together in (one insert; see `chat::commit`).
    pub send_batch_max: usize,
    /// Sends queued per tenant and node while a batch is being stored; senders wait beyond it.
    pub send_queue_capacity: usize,
    /// Least time between two writes of a tenant's conversation records (counters and newest
    /// messages) on a node; they are written behind the answers, so this is how far a
    /// conversation's `last_message` may lag its sends under load (`last_seq` does not while
    /// Redis holds the conversation's head).
    pub record_interval_ms: u64,
    /// A reader that finds a conversation's head past its recorded counter, while its newest
    /// recorded message is older than this, records the newest stored message itself (the node
    /// that held the record died without writing it).
    pub record_repair_after_ms: u64,
    /// Threads the committers run on, apart from the HTTP workers (0: one per core).
    pub commit_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileSettings {
    /// Largest file accepted (413 above it; nothing is kept).
    pub max_file_bytes: u64,
    /// Types a tenant may upload unless its own `allowed_mime_types` says otherwise;
    /// `type/*` patterns allowed.
    pub default_allowed_mime_types: Vec<String>,
    /// Quota is reserved ahead of the bytes in steps of this size when the length is unknown.
    pub reserve_step_bytes: u64,
    /// Lifetime of a signed download URL unless the request names one, and the longest allowed.
    pub signed_url_default_ttl_secs: u64,
    pub signed_url_max_ttl_secs: u64,
    /// HMAC key for signed URLs; derived from the operator token when empty.
    pub url_signing_secret: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct E2eSettings {
    /// Most active devices per user.
    pub max_devices_per_user: u64,
    /// Largest envelope (JSON bytes) a message may carry (413 above).
    pub max_envelope_bytes: usize,
    /// Most recipient devices per envelope, and so the member-device budget of an E2E conversation.
    pub max_recipients: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CollabSettings {
    /// Files and folders per code session.
    pub max_items_per_session: u32,
    /// Largest text a file may hold (bytes, UTF-8); bigger edits are refused.
    pub max_file_bytes: usize,
    /// Longest file or folder name (bytes).
    pub max_name_bytes: usize,
    /// Deepest nesting of folders (a root item has depth 1).
    pub max_depth: usize,
    /// Largest Yjs message a client may send.
    pub max_message_bytes: usize,
    /// Clients editing one file at once on one node.
    pub max_clients_per_document: usize,
    /// A snapshot replaces the update log after this many updates.
    pub snapshot_every: i64,
    /// A document without clients is snapshotted and unloaded after this long.
    pub idle_unload_secs: u64,
    /// How often an open document re-reads its editors' roles, so an access change whose notice
    /// was lost still takes effect (at least 1).
    pub access_recheck_secs: u64,
    /// Members per code session.
    pub max_members: usize,
    /// Threads the open documents run on, apart from the HTTP workers (0: one per core).
    pub room_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Events queued per socket before it is closed as a slow consumer.
    pub outbox_capacity: usize,
    /// Ping interval; also how often a socket re-checks that its user and tenant may stay.
    pub heartbeat_secs: u64,
    /// A socket silent for this long is closed.
    pub idle_timeout_secs: u64,
    /// Most messages replayed per conversation on resume; older ones are announced as a gap.
    pub max_replay: i64,
    /// Client frames per second per socket; more get `rate_limited` errors and are not processed.
    pub max_frames_per_sec: u32,
    /// Live sockets one user may hold across all nodes; one more is refused with 429.
    pub max_connections_per_user: u32,
    /// Lifetime of a `POST /v1/ws/tickets` ticket (single use).
    pub ticket_ttl_secs: u64,
    /// A connection not refreshed by a heartbeat for this long (a crashed node's) stops counting
    /// as live for presence and the per-user limit.
    pub presence_stale_secs: u64,
    /// How often each node looks for users whose connections all went stale without closing,
    /// to announce them offline (at least 1).
    pub presence_sweep_secs: u64,
    /// How often a socket re-reads its conversations' last seqs, to deliver what the previous
    /// re-read found stored and whose live event was lost (everything missing, at once, after this
    /// node's Redis subscriber reconnects).
    pub catch_up_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Largest accepted JSON request body (413 above it).
    pub max_json_body_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenantSettings {
    /// Limits a new tenant gets for every field its creation request leaves out.
    pub default_limits: TenantLimits,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `json` (default, for machines) or `pretty` (for a terminal).
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `confab=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

const DEFAULTS: &str = r#"
[server]
host = "127.0.0.1"
port = 8080
workers = 0
backlog = 2048
shutdown_timeout_secs = 10
keep_alive_secs = 75
request_head_timeout_ms = 5000

[mongodb]
uri = "mongodb://127.0.0.1:27017/?directConnection=true"
db_prefix = "confab_"
server_selection_timeout_ms = 5000
max_pool_size = 100
worker_pool_size = 8

[redis]
url = "redis://127.0.0.1:6379"
key_prefix = "confab:"
pool_size = 32
timeout_ms = 2000

[auth]
operator_token = ""
api_key_env = "live"
key_rotation_grace_secs = 86400
max_key_rotation_grace_secs = 604800
key_last_used_resolution_secs = 60
jwt_issuer = "confab"
user_token_default_ttl_secs = 3600
user_token_max_ttl_secs = 2592000

[cache]
ttl_ms = 2000
max_entries = 100000
history_messages = 50000
history_ttl_ms = 300000

[chat]
max_custom_data_bytes = 4096
max_batch_ids = 100
max_attachments = 10
max_mentions = 50
max_pins = 50
max_client_msg_id_len = 64
max_search_terms = 10
search_index_interval_ms = 1000
search_block_min_messages = 32
search_block_max_wait_ms = 30000
search_recent_texts_max_bytes = 16777216
send_committers = 2
send_batch_max = 256
send_queue_capacity = 4096
record_interval_ms = 100
record_repair_after_ms = 10000
commit_threads = 1
max_name_chars = 100
max_description_chars = 1000

[files]
max_file_bytes = 104857600
default_allowed_mime_types = ["image/*", "video/*", "audio/*", "text/plain", "text/markdown", "text/csv", "application/pdf", "application/zip", "application/json", "application/octet-stream"]
reserve_step_bytes = 8388608
signed_url_default_ttl_secs = 3600
signed_url_max_ttl_secs = 604800
url_signing_secret = ""

[e2e]
max_devices_per_user = 20
max_envelope_bytes = 65536
max_recipients = 1000

[collab]
max_items_per_session = 1000
max_file_bytes = 1048576
max_name_bytes = 255
max_depth = 32
max_message_bytes = 1048576
max_clients_per_document = 64
snapshot_every = 500
idle_unload_secs = 30
access_recheck_secs = 30
max_members = 100
room_threads = 0

[gateway]
max_frame_bytes = 65536
outbox_capacity = 256
heartbeat_secs = 15
idle_timeout_secs = 45
max_replay = 500
max_frames_per_sec = 20
max_connections_per_user = 10
ticket_ttl_secs = 30
presence_stale_secs = 40
presence_sweep_secs = 10
catch_up_secs = 60

[http]
max_json_body_bytes = 262144
default_page_size = 50
max_page_size = 200

[tenants.default_limits]
max_users = 100000
max_api_keys = 50
max_conversation_members = 1000
max_message_bytes = 16384
storage_quota_bytes = 10737418240
requests_per_second = 1000

[log]
format = "json"
level = "info"
"#;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads settings from the defaults, an optional TOML file, then `CONFAB__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with_overrides(file, &[])
    }

    /// Like `load`, with `("section.key", value)` pairs applied last (tests, tools).
    pub fn load_with_overrides(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("CONFAB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("files.default_allowed_mime_types"),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.as_str())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        if self.auth.operator_token.expose().len() < 32 {
            return invalid(
                "auth.operator_token must be set (CONFAB__AUTH__OPERATOR_TOKEN) and be at least 32 characters",
            );
        }
        let prefix = &self.mongodb.db_prefix;
        if prefix.len() > 24 || !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return invalid("mongodb.db_prefix must be at most 24 characters of [a-z0-9_]");
        }
        let env = &self.auth.api_key_env;
        if !(2..=8).contains(&env.len()) || !env.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return invalid("auth.api_key_env must be 2-8 characters of [a-z0-9]");
        }
        if self.server.keep_alive_secs == 0 || self.server.request_head_timeout_ms == 0 {
            return invalid("server.keep_alive_secs and server.request_head_timeout_ms must be at least 1");
        }
        if self.gateway.presence_sweep_secs == 0 || self.collab.access_recheck_secs == 0 {
            return invalid("gateway.presence_sweep_secs and collab.access_recheck_secs must be at least 1");
        }
        if self.mongodb.max_pool_size == 0 || self.mongodb.worker_pool_size == 0 {
            return invalid("mongodb.max_pool_size and mongodb.worker_pool_size must be at least 1");
        }
        if self.http.default_page_size == 0 || self.http.default_page_size > self.http.max_page_size {
            return invalid("http.default_page_size must be between 1 and http.max_page_size");
        }
        if let Err(e) = self.tenants.default_limits.check() {
            return Err(SettingsError::Invalid(format!("tenants.default_limits: {e}")));
        }
        Ok(())
    }
}
