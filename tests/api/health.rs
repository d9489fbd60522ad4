use reqwest::{Method, StatusCode};

use crate::helpers::{Relay, mongo_uri, spawn_app, spawn_app_with};

#[tokio::test]
async fn liveness_answers_ok() {
    let app = spawn_app().await;
    let reply = app.send(app.request(Method::GET, "/health/live")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["status"], "ok");
}

#[tokio::test]
async fn readiness_checks_mongodb_and_redis() {
    let app = spawn_app().await;
    let reply = app.send(app.request(Method::GET, "/health/ready")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["checks"]["mongodb"], "ok");
    assert_eq!(reply.body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn readiness_names_redis_when_it_is_down() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app =
        spawn_app_with(&[("redis.url", format!("redis://127.0.0.1:{port}")), ("redis.timeout_ms", "500".into())]).await;
    let reply = app.send(app.request(Method::GET, "/health/ready")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text);
    assert_eq!(reply.code(), "service_unavailable");
    assert_eq!(reply.body["error"]["details"]["checks"]["mongodb"], "ok");
    assert!(reply.body["error"]["details"]["checks"]["redis"].as_str().unwrap().starts_with("down"));
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("redis"));
}

#[tokio::test]
async fn readiness_names_mongodb_when_it_is_down() {
    let uri = mongo_uri();
    let host = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap().to_string();
    let relay = Relay::to(host.clone()).await;
    let relayed_uri = uri.replacen(&host, &relay.address, 1);
    let app =
        spawn_app_with(&[("mongodb.uri", relayed_uri), ("mongodb.server_selection_timeout_ms", "500".into())]).await;
    let before = app.send(app.request(Method::GET, "/health/ready")).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);

    relay.cut();
    let after = app.send(app.request(Method::GET, "/health/ready")).await;
    assert_eq!(after.status, StatusCode::SERVICE_UNAVAILABLE, "{}", after.text);
    assert!(after.body["error"]["details"]["checks"]["mongodb"].as_str().unwrap().starts_with("down"));
    assert_eq!(after.body["error"]["details"]["checks"]["redis"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_in_prometheus_text() {
    let app = spawn_app().await;
    app.send(app.request(Method::GET, "/health/live")).await;
    let reply = app.send(app.request(Method::GET, "/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(reply.text.contains("http_requests_total{"), "{}", reply.text);
    assert!(reply.text.contains(r#"route="/health/live""#), "{}", reply.text);
    assert!(reply.text.contains("http_request_duration_seconds_bucket"), "{}", reply.text);
}

#[tokio::test]
async fn metrics_show_the_send_pipeline_once_a_message_is_stored() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let conversation = app.conversation(&alice, "group", &[]).await;
    let sent = app.say(&alice, &conversation, "hello").await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    for series in [
        "chat_commit_batch_messages_bucket{le=\"1\"}",
        "chat_commit_wait_seconds_bucket",
        "chat_commit_insert_seconds_bucket",
        "chat_commit_finish_seconds_count",
    ] {
        assert!(metrics.contains(series), "{series} missing from {metrics}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_a_valid_one() {
    let app = spawn_app().await;
    let fresh = app.send(app.request(Method::GET, "/health/live")).await;
    assert!(!fresh.headers["x-request-id"].to_str().unwrap().is_empty());
    let echoed = app.send(app.request(Method::GET, "/health/live").header("x-request-id", "trace-abc.123")).await;
    assert_eq!(echoed.headers["x-request-id"], "trace-abc.123");
    let refused = app.send(app.request(Method::GET, "/health/live").header("x-request-id", "bad id with spaces")).await;
    assert_ne!(refused.headers["x-request-id"], "bad id with spaces");
}

#[tokio::test]
async fn docs_ui_and_openapi_document_are_served() {
    let app = spawn_app().await;
    let spec = app.send(app.request(Method::GET, "/openapi.json")).await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let schemes = &spec.body["components"]["securitySchemes"];
    for scheme in ["operator_token", "api_key", "user_jwt"] {
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    assert!(spec.body["paths"]["/admin/v1/tenants"]["post"]["responses"]["422"].is_object());

    let docs = app.send(app.request(Method::GET, "/docs/")).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.to_lowercase().contains("swagger"), "{}", docs.text);
    let redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bare = redirect.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
}

/// `openapi/openapi.json` must match what the server generates. Regenerate it with
/// `cargo run -q -- openapi > openapi/openapi.json`.
#[tokio::test]
async fn committed_openapi_document_is_current() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .expect("openapi/openapi.json exists");
    let generated = confab::http::openapi::document_json();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn committed_asyncapi_document_is_current() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/asyncapi.yaml"))
        .expect("openapi/asyncapi.yaml exists");
    let generated = confab::gateway::asyncapi::document_yaml();
    assert!(
        committed == generated,
        "openapi/asyncapi.yaml is stale: run `cargo run -q -- asyncapi > openapi/asyncapi.yaml`"
    );
    let parsed: serde_json::Value = serde_norway::from_str(&committed).expect("the document is YAML");
    assert_eq!(parsed["asyncapi"], "3.0.0");
    assert_eq!(parsed["channels"]["socket"]["address"], "/v1/ws");
}
