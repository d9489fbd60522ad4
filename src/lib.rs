//! confab: multi-tenant chat-as-a-service. See README.md for the architecture map.

pub mod app;
pub mod auth;
pub mod caches;
pub mod chat;
pub mod cli;
pub mod collab;
pub mod config;
pub mod domain;
pub mod e2e;
pub mod error;
pub mod events;
pub mod files;
pub mod gateway;
pub mod http;
pub mod platform;
pub mod telemetry;
pub mod tenancy;
pub mod threads;
