//! End-to-end encrypted conversations: key directory, envelopes, server-side checks.

use confab::domain::envelope::{Context, Envelope, b64};
use confab::e2e::client::{DeviceKeys, RecipientKey, open, seal};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ChatTenant, TestApp, spawn_app};

/// Registers a new device for the token's user through the key directory.
async fn register(app: &TestApp, tenant: &ChatTenant, token: &str, user: &str, device_id: &str) -> DeviceKeys {
    let keys = DeviceKeys::generate(device_id, "k1", &mut rand::rng());
    let not_after = chrono::Utc::now() + chrono::Duration::days(30);
    let signature = keys.sign_key_upload(&tenant.id, user, not_after.timestamp());
    let body = json!({
        "device_id": device_id,
        "identity_key": b64(&keys.identity_public()),
        "key": {"key_id": "k1", "public_key": b64(&keys.x25519_public()), "not_after": not_after.to_rfc3339(),
                "signature": b64(&signature)},
    });
    let reply = app.call(Method::POST, "/v1/me/devices", token, Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    keys
}

#[tokio::test]
async fn an_encrypted_message_reaches_the_recipient_and_never_the_server() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let alice_phone = register(&app, &tenant, &alice, "alice", "phone").await;
    let bob_laptop = register(&app, &tenant, &bob, "bob", "laptop").await;
    let created = app
        .call(
            Method::POST,
            "/v1/conversations",
            &alice,
            Some(json!({"type": "group", "members": ["bob"], "encryption": "e2e"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let conversation = created.body["id"].as_str().unwrap().to_string();
    let context = Context {
        tenant_id: tenant.id.clone(),
        conversation_id: conversation.clone(),
        message_id: "m-1".into(),
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
    };
    let recipients = [RecipientKey {
        user_id: "bob".into(),
        device_id: "laptop".into(),
        key_id: "k1".into(),
        public_key: bob_laptop.x25519_public(),
    }];
    let envelope = seal(&context, &alice_phone, b"the eagle lands at dawn", &recipients, &mut rand::rng());
    let sent = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
            &alice,
            Some(json!({"client_msg_id": "m-1", "envelope": envelope})),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    let history = app.call(Method::GET, &format!("/v1/conversations/{conversation}/messages"), &bob, None).await;
    let stored: Envelope = serde_json::from_value(history.body["items"][0]["envelope"].clone()).unwrap();
    let opened = open(&stored, &context, &alice_phone.identity_public(), "bob", &bob_laptop).unwrap();
    assert_eq!(opened, b"the eagle lands at dawn");
}
