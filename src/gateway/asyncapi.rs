//! The AsyncAPI 3 description of the WebSocket protocol, generated from the frame types in
//! `protocol.rs` (committed as `openapi/asyncapi.yaml`; a test keeps the two equal). Each frame
//! type becomes one message; confab *receives* client frames and *sends* server frames.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use super::protocol::{ClientFrame, ServerFrame};

#[derive(OpenApi)]
#[openapi(components(schemas(ClientFrame, ServerFrame)))]
struct FrameSchemas;

const DESCRIPTION: &str = "confab's real-time gateway. One WebSocket per client at `/v1/ws`, \
authenticated on the upgrade (see `GET /v1/ws` in openapi.json). Frames are JSON text tagged by \
`type`. Requests carry a `ref` echoed by the `ack`, `pong` or `error` answering them; errors use \
the REST API's error codes. Delivery contract (docs/realtime.md): every message of a followed \
conversation is delivered once, in seq order; a client that resumes with its last seen seqs \
receives exactly what it missed, or a `gap` naming the range to fetch over REST.";

/// The document as YAML, exactly as committed in `openapi/asyncapi.yaml`.
pub fn document_yaml() -> String {
    serde_norway::to_string(&document()).expect("the AsyncAPI document serialises")
}

fn document() -> Value {
    let openapi = serde_json::to_value(FrameSchemas::openapi()).expect("schemas serialise");
    let mut schemas: Map<String, Value> = openapi["components"]["schemas"].as_object().cloned().unwrap_or_default();
    let client = frames(schemas.remove("ClientFrame"), "client");
    let server = frames(schemas.remove("ServerFrame"), "server");
    let mut messages = Map::new();
    let mut refs = |frames: &[(String, Value)]| -> Vec<Value> {
        frames
            .iter()
            .map(|(key, message)| {
                messages.insert(key.clone(), message.clone());
                json!({ "$ref": format!("#/components/messages/{key}") })
            })
            .collect()
    };
    let (client_refs, server_refs) = (refs(&client), refs(&server));
    let channel_messages: Map<String, Value> = client
        .iter()
        .chain(server.iter())
        .map(|(key, _)| (key.clone(), json!({ "$ref": format!("#/components/messages/{key}") })))
        .collect();
    let to_channel = |refs: Vec<Value>| -> Vec<Value> {
        refs.iter()
            .map(|r| {
                let key = r["$ref"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                json!({ "$ref": format!("#/channels/socket/messages/{key}") })
            })
            .collect()
    };
    json!({
        "asyncapi": "3.0.0",
        "info": { "title": "confab real-time gateway", "version": env!("CARGO_PKG_VERSION"), "description": DESCRIPTION },
        "servers": { "local": { "host": "localhost:8080", "protocol": "ws", "description": "`./scripts/run`" } },
        "channels": { "socket": {
            "address": "/v1/ws",
            "description": "The one socket of a connected user: events of every conversation they belong to.",
            "messages": channel_messages,
        } },
        "operations": {
            "receiveClientFrames": {
                "action": "receive", "channel": { "$ref": "#/channels/socket" },
                "summary": "Frames a client sends.", "messages": to_channel(client_refs),
            },
            "sendServerFrames": {
                "action": "send", "channel": { "$ref": "#/channels/socket" },
                "summary": "Frames confab sends.", "messages": to_channel(server_refs),
            },
        },
        "components": { "messages": messages, "schemas": schemas },
    })
}

/// Splits a `oneOf` of tagged variants into (key, message) pairs; the `type` tag names each.
fn frames(schema: Option<Value>, side: &str) -> Vec<(String, Value)> {
    let variants = schema.and_then(|s| s["oneOf"].as_array().cloned()).unwrap_or_default();
    variants
        .into_iter()
        .map(|mut payload| {
            let tag = type_tag(&payload).unwrap_or_default().to_string();
            let summary = payload.as_object_mut().and_then(|p| p.remove("description")).or_else(|| {
                payload["allOf"].as_array().and_then(|parts| parts.iter().find_map(|p| p.get("description").cloned()))
            });
            let mut message = json!({ "name": tag, "title": format!("{side}: {tag}"), "payload": payload });
            if let Some(summary) = summary {
                message["summary"] = summary;
            }
            (format!("{side}.{tag}"), message)
        })
        .collect()
}

/// The `type` a variant's schema fixes, also when flattened fields make it an `allOf`.
fn type_tag(schema: &Value) -> Option<&str> {
    schema["properties"]["type"]["enum"][0]
        .as_str()
        .or_else(|| schema["allOf"].as_array()?.iter().find_map(|part| part["properties"]["type"]["enum"][0].as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_type_is_a_message() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().unwrap();
        for key in ["client.resume", "client.send", "client.typing", "server.ready", "server.message.new", "server.gap"]
        {
            assert!(messages.contains_key(key), "{key} missing");
        }
        assert!(messages.contains_key("server.ack"), "flattened variants keep their tag");
        assert!(messages.values().all(|m| !m["name"].as_str().unwrap_or_default().is_empty()));
        assert!(doc["components"]["schemas"].get("MessageView").is_some(), "payload schemas are included");
    }
}
