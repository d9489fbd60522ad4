//! Black-box tests: each test starts confab on port 0 against the real secantusd-rs and
//! redis-server started by `scripts/test`, with its own database and key prefix.

mod api_keys;
mod audit;
mod cache_refresh;
mod chat_conversations;
mod chat_messages;
mod chat_smoke;
mod chat_users;
mod cli;
mod code_sessions;
mod collab;
mod connections;
mod e2e;
mod errors;
mod files;
mod gateway;
mod health;
mod helpers;
mod history_cache;
mod isolation;
mod realtime;
mod search;
mod search_recent;
mod send_path;
mod tenants;
