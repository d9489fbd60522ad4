//! End-to-end encrypted conversations: key directory, envelopes, server-side checks.

use chrono::{DateTime, Duration, Utc};
use confab::domain::envelope::{Context, Envelope, b64, unb64};
use confab::e2e::client::{DeviceKeys, OpenError, RecipientKey, key_upload_bytes, open, seal, verify_signature};
use futures_util::TryStreamExt;
use mongodb::bson::Document;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ChatTenant, Reply, TestApp, assert_error, assert_invalid, random_lower, spawn_app, spawn_app_with,
};

// ---------------------------------------------------------------------------------------------
// Key directory helpers
// ---------------------------------------------------------------------------------------------

fn in_days(days: i64) -> DateTime<Utc> {
    Utc::now() + Duration::days(days)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut out);
    out
}

/// The `key` object of an upload: `keys`' current X25519 key, signed by `keys`' identity for
/// `tenant`, `user`, `keys.device_id`, `keys.key_id` and `not_after`.
fn key_body(tenant: &str, user: &str, keys: &DeviceKeys, not_after: DateTime<Utc>) -> Value {
    let signature = keys.sign_key_upload(tenant, user, not_after.timestamp());
    json!({
        "key_id": keys.key_id,
        "public_key": b64(&keys.x25519_public()),
        "not_after": not_after.to_rfc3339(),
        "signature": b64(&signature),
    })
}

/// A correct `POST /v1/me/devices` body for `keys`.
fn device_body(tenant: &str, user: &str, keys: &DeviceKeys) -> Value {
    json!({
        "device_id": keys.device_id,
        "identity_key": b64(&keys.identity_public()),
        "key": key_body(tenant, user, keys, in_days(30)),
    })
}

async fn post_device(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(Method::POST, "/v1/me/devices", token, Some(body)).await
}

async fn register_keys(app: &TestApp, tenant: &str, token: &str, user: &str, keys: &DeviceKeys) {
    let reply = post_device(app, token, device_body(tenant, user, keys)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
}

/// Registers a new device for the token's user through the key directory.
async fn register(app: &TestApp, tenant: &ChatTenant, token: &str, user: &str, device_id: &str) -> DeviceKeys {
    let keys = DeviceKeys::generate(device_id, "k1", &mut rand::rng());
    register_keys(app, &tenant.id, token, user, &keys).await;
    keys
}

/// The same device (same identity key) with a fresh X25519 key named `key_id`.
fn next_key(keys: &DeviceKeys, key_id: &str) -> DeviceKeys {
    let fresh = DeviceKeys::generate(&keys.device_id, key_id, &mut rand::rng());
    DeviceKeys { identity: keys.identity.clone(), ..fresh }
}

/// `keys` with the identity (signing) key of `signer`.
fn signed_by(keys: &DeviceKeys, signer: &DeviceKeys) -> DeviceKeys {
    DeviceKeys {
        device_id: keys.device_id.clone(),
        identity: signer.identity.clone(),
        key_id: keys.key_id.clone(),
        x25519_secret: keys.x25519_secret,
    }
}

async fn rotate(app: &TestApp, tenant: &str, token: &str, user: &str, keys: &DeviceKeys) -> Reply {
    let body = key_body(tenant, user, keys, in_days(30));
    app.call(Method::POST, &format!("/v1/me/devices/{}/keys", keys.device_id), token, Some(body)).await
}

async fn revoke(app: &TestApp, token: &str, device_id: &str) -> Reply {
    app.call(Method::DELETE, &format!("/v1/me/devices/{device_id}"), token, None).await
}

/// `GET /v1/devices?user_ids=...`, asserted 200; the items.
async fn directory(app: &TestApp, token: &str, users: &[&str]) -> Vec<Value> {
    let reply = app.call(Method::GET, &format!("/v1/devices?user_ids={}", users.join(",")), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().expect("items").clone()
}

fn listed_pairs(items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|d| (d["user_id"].as_str().unwrap().to_string(), d["device_id"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(u, d)| (u.to_string(), d.to_string())).collect()
}

/// Checks a listed device's current key the way a client must (signature by the identity key,
/// bound to tenant, user, device, key id and not_after) and returns it as a recipient.
fn verified_recipient(tenant: &str, item: &Value) -> RecipientKey {
    let user = item["user_id"].as_str().unwrap();
    let device = item["device_id"].as_str().unwrap();
    let key = &item["current_key"];
    let key_id = key["key_id"].as_str().unwrap();
    let identity = unb64(item["identity_key"].as_str().unwrap()).expect("identity key is base64url");
    let public = unb64(key["public_key"].as_str().unwrap()).expect("public key is base64url");
    let signature = unb64(key["signature"].as_str().unwrap()).expect("signature is base64url");
    let not_after = DateTime::parse_from_rfc3339(key["not_after"].as_str().unwrap()).unwrap().timestamp();
    let signed = key_upload_bytes(tenant, user, device, key_id, &public, not_after);
    assert!(verify_signature(&identity, &signed, &signature), "listed key of {user}/{device} does not verify");
    RecipientKey {
        user_id: user.into(),
        device_id: device.into(),
        key_id: key_id.into(),
        public_key: public.try_into().expect("32-byte key"),
    }
}

/// Every key event of `user`, read with `limit`-sized pages.
async fn key_events(app: &TestApp, token: &str, user: &str, limit: usize) -> Vec<Value> {
    app.collect_pages(&format!("/v1/users/{user}/key-events?limit={limit}"), token, "after", limit).await
}

fn event_summary(events: &[Value]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| {
            (e["kind"].as_str().unwrap().to_string(), e["device_id"].as_str().unwrap().to_string(), e["key_id"].clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Conversation and message helpers
// ---------------------------------------------------------------------------------------------

/// A user with a token and the secrets of their registered devices.
struct Person {
    id: String,
    token: String,
    devices: Vec<DeviceKeys>,
}

impl Person {
    fn device(&self, device_id: &str) -> &DeviceKeys {
        self.devices.iter().find(|d| d.device_id == device_id).expect("known device")
    }
}

async fn person(app: &TestApp, tenant: &ChatTenant, id: &str, devices: &[&str]) -> Person {
    let token = app.user(tenant, id).await;
    let mut keys = Vec::new();
    for device in devices {
        keys.push(register(app, tenant, &token, id, device).await);
    }
    Person { id: id.into(), token, devices: keys }
}

fn recipient(user: &str, keys: &DeviceKeys) -> RecipientKey {
    RecipientKey {
        user_id: user.into(),
        device_id: keys.device_id.clone(),
        key_id: keys.key_id.clone(),
        public_key: keys.x25519_public(),
    }
}

/// Every device of `people` except the sending one.
fn recipients_for(people: &[&Person], sender: &str, sending_device: &str) -> Vec<RecipientKey> {
    people
        .iter()
        .flat_map(|p| p.devices.iter().map(move |d| (p, d)))
        .filter(|(p, d)| !(p.id == sender && d.device_id == sending_device))
        .map(|(p, d)| recipient(&p.id, d))
        .collect()
}

fn without(recipients: &[RecipientKey], user: &str, device: &str) -> Vec<RecipientKey> {
    recipients.iter().filter(|r| !(r.user_id == user && r.device_id == device)).cloned().collect()
}

fn context(tenant: &str, conversation: &str, message_id: &str, sender: &str, device: &str) -> Context {
    Context {
        tenant_id: tenant.into(),
        conversation_id: conversation.into(),
        message_id: message_id.into(),
        sender_user_id: sender.into(),
        sender_device_id: device.into(),
    }
}

fn messages_path(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

async fn create_conversation(app: &TestApp, token: &str, body: Value) -> Reply {
    app.call(Method::POST, "/v1/conversations", token, Some(body)).await
}

/// Creates an E2E group as the token's user and returns its id.
async fn e2e_group(app: &TestApp, token: &str, members: &[&str]) -> String {
    let body = json!({"type": "group", "members": members, "name": "secret", "encryption": "e2e"});
    let reply = create_conversation(app, token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["encryption"], "e2e", "{}", reply.text);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn send_envelope(app: &TestApp, token: &str, conversation: &str, client_msg_id: &str, e: &Envelope) -> Reply {
    let body = json!({"client_msg_id": client_msg_id, "envelope": e});
    app.call(Method::POST, &messages_path(conversation), token, Some(body)).await
}

async fn edit_envelope(app: &TestApp, token: &str, conversation: &str, seq: i64, e: &Envelope) -> Reply {
    let path = format!("{}/{seq}", messages_path(conversation));
    app.call(Method::PATCH, &path, token, Some(json!({"envelope": e}))).await
}

async fn last_seq(app: &TestApp, token: &str, conversation: &str) -> i64 {
    let reply = app.call(Method::GET, &format!("/v1/conversations/{conversation}"), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["last_seq"].as_i64().expect("last_seq")
}

async fn history(app: &TestApp, token: &str, conversation: &str) -> Vec<Value> {
    let reply = app.call(Method::GET, &format!("{}?limit=200", messages_path(conversation)), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().expect("items").clone()
}

async fn message_at(app: &TestApp, token: &str, conversation: &str, seq: i64) -> Value {
    let reply = app.call(Method::GET, &format!("{}/{seq}", messages_path(conversation)), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

fn envelope_of(message: &Value) -> Envelope {
    serde_json::from_value(message["envelope"].clone()).expect("a stored envelope")
}

/// `(user_id, device_id)` pairs, as in `details.missing` / `details.extra`.
type DeviceList<'a> = Vec<(&'a str, &'a str)>;

fn device_refs(expected: &[(&str, &str)]) -> Value {
    Value::Array(expected.iter().map(|(u, d)| json!({"user_id": u, "device_id": d})).collect())
}

/// A 409 `recipients_mismatch` listing exactly `missing` and `extra` (sorted by user, device).
fn assert_mismatch(reply: &Reply, missing: &[(&str, &str)], extra: &[(&str, &str)]) {
    assert_error(reply, StatusCode::CONFLICT, "recipients_mismatch");
    assert_eq!(reply.body["error"]["details"]["missing"], device_refs(missing), "{}", reply.text);
    assert_eq!(reply.body["error"]["details"]["extra"], device_refs(extra), "{}", reply.text);
}

/// alice (phone, laptop), bob (laptop, tablet) and carol (phone) in an E2E group alice created.
struct Scene {
    app: TestApp,
    tenant: ChatTenant,
    alice: Person,
    bob: Person,
    carol: Person,
    conversation: String,
}

async fn scene_with(extra: &[(&'static str, String)]) -> Scene {
    let app = spawn_app_with(extra).await;
    let tenant = app.chat_tenant().await;
    let alice = person(&app, &tenant, "alice", &["phone", "laptop"]).await;
    let bob = person(&app, &tenant, "bob", &["laptop", "tablet"]).await;
    let carol = person(&app, &tenant, "carol", &["phone"]).await;
    let conversation = e2e_group(&app, &alice.token, &["bob", "carol"]).await;
    Scene { app, tenant, alice, bob, carol, conversation }
}

async fn scene() -> Scene {
    scene_with(&[]).await
}

impl Scene {
    fn ctx(&self, message_id: &str, sender: &str, device: &str) -> Context {
        context(&self.tenant.id, &self.conversation, message_id, sender, device)
    }

    /// What alice's phone must seal for: alice's laptop, both of bob's devices, carol's phone.
    fn expected_recipients(&self) -> Vec<RecipientKey> {
        recipients_for(&[&self.alice, &self.bob, &self.carol], "alice", "phone")
    }

    /// alice's phone seals `plaintext` as message `message_id` for `recipients`.
    fn seal(&self, message_id: &str, plaintext: &[u8], recipients: &[RecipientKey]) -> Envelope {
        let ctx = self.ctx(message_id, "alice", "phone");
        seal(&ctx, self.alice.device("phone"), plaintext, recipients, &mut rand::rng())
    }

    async fn send(&self, message_id: &str, envelope: &Envelope) -> Reply {
        send_envelope(&self.app, &self.alice.token, &self.conversation, message_id, envelope).await
    }

    async fn last_seq(&self) -> i64 {
        last_seq(&self.app, &self.alice.token, &self.conversation).await
    }

    /// Opens a stored envelope of alice's phone as `reader`'s device `keys`.
    fn open_as(&self, envelope: &Envelope, message_id: &str, reader: &str, keys: &DeviceKeys) -> Vec<u8> {
        let ctx = self.ctx(message_id, "alice", "phone");
        open(envelope, &ctx, &self.alice.device("phone").identity_public(), reader, keys)
            .unwrap_or_else(|e| panic!("{reader}/{} cannot open: {e}", keys.device_id))
    }
}

// ---------------------------------------------------------------------------------------------
// Smoke
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 1. Key directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn registration_requires_the_key_signed_by_the_devices_identity_for_this_tenant_user_and_device() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let other_tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    app.user(&tenant, "bob").await;
    let keys = DeviceKeys::generate("phone", "k1", &mut rand::rng());
    let stranger = DeviceKeys::generate("phone", "k1", &mut rand::rng());
    let not_after = in_days(30);
    let honest = json!({
        "device_id": "phone",
        "identity_key": b64(&keys.identity_public()),
        "key": key_body(&tenant.id, "alice", &keys, not_after),
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = honest.clone();
        f(&mut body);
        body
    };
    let forged = [
        (
            "signed by another identity",
            with(&|b| b["key"] = key_body(&tenant.id, "alice", &signed_by(&keys, &stranger), not_after)),
        ),
        ("another identity key announced", with(&|b| b["identity_key"] = json!(b64(&stranger.identity_public())))),
        ("signed for another user", with(&|b| b["key"] = key_body(&tenant.id, "bob", &keys, not_after))),
        ("signed for another tenant", with(&|b| b["key"] = key_body(&other_tenant.id, "alice", &keys, not_after))),
        ("signed for another device id", with(&|b| b["device_id"] = json!("laptop"))),
        ("not_after changed", with(&|b| b["key"]["not_after"] = json!((not_after + Duration::hours(1)).to_rfc3339()))),
        ("key_id changed", with(&|b| b["key"]["key_id"] = json!("k2"))),
        ("public key swapped", with(&|b| b["key"]["public_key"] = json!(b64(&stranger.x25519_public())))),
        ("signature of another key", with(&|b| b["key"]["signature"] = stranger_sig(&tenant.id, &stranger))),
    ];
    for (what, body) in forged {
        let reply = post_device(&app, &alice, body).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_signature", "{what}: {}", reply.text);
    }
    assert!(directory(&app, &alice, &["alice"]).await.is_empty(), "refused uploads publish nothing");
    assert!(key_events(&app, &alice, "alice", 50).await.is_empty(), "refused uploads log nothing");

    let accepted = post_device(&app, &alice, honest).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.text);
    let device = &accepted.body;
    assert_eq!(device["user_id"], "alice");
    assert_eq!(device["device_id"], "phone");
    assert_eq!(device["identity_key"], b64(&keys.identity_public()));
    assert_eq!(device["current_key"]["key_id"], "k1");
    assert_eq!(device["current_key"]["public_key"], b64(&keys.x25519_public()));
    assert_eq!(device["current_key"]["status"], "current");
    assert_eq!(device["retired_keys"], json!([]));
    let listed = directory(&app, &alice, &["alice"]).await;
    assert_eq!(listed_pairs(&listed), pairs(&[("alice", "phone")]));
    verified_recipient(&tenant.id, &listed[0]);
}

/// The signature `stranger` makes over its own key upload (a valid signature for another key).
fn stranger_sig(tenant: &str, stranger: &DeviceKeys) -> Value {
    json!(b64(&stranger.sign_key_upload(tenant, "alice", in_days(30).timestamp())))
}

#[tokio::test]
async fn registration_rejects_malformed_keys_and_past_expiry() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let keys = DeviceKeys::generate("phone", "k1", &mut rand::rng());
    let base = device_body(&tenant.id, "alice", &keys);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = base.clone();
        f(&mut body);
        body
    };
    let padded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, keys.identity_public());
    let past = key_body(&tenant.id, "alice", &keys, Utc::now() - Duration::days(1));
    let cases = [
        (with(&|b| b["device_id"] = json!("")), "device_id"),
        (with(&|b| b["device_id"] = json!("has space")), "device_id"),
        (with(&|b| b["device_id"] = json!("d".repeat(65))), "device_id"),
        (with(&|b| b["identity_key"] = json!(b64(&[7u8; 31]))), "identity_key"),
        (with(&|b| b["identity_key"] = json!(b64(&[7u8; 33]))), "identity_key"),
        (with(&|b| b["identity_key"] = json!("not base64!")), "identity_key"),
        (with(&|b| b["identity_key"] = json!(padded.clone())), "identity_key"),
        (with(&|b| b["key"]["key_id"] = json!("")), "key_id"),
        (with(&|b| b["key"]["key_id"] = json!("k/1")), "key_id"),
        (with(&|b| b["key"]["key_id"] = json!("k".repeat(65))), "key_id"),
        (with(&|b| b["key"]["public_key"] = json!(b64(&[1u8; 31]))), "public_key"),
        (with(&|b| b["key"]["public_key"] = json!(b64(&[1u8; 33]))), "public_key"),
        (with(&|b| b["key"]["public_key"] = json!("%%%")), "public_key"),
        (with(&|b| b["key"]["signature"] = json!(b64(&[2u8; 63]))), "signature"),
        (with(&|b| b["key"]["signature"] = json!(b64(&[2u8; 65]))), "signature"),
        (with(&|b| b["key"]["signature"] = json!("***")), "signature"),
        (with(&|b| b["key"]["not_after"] = json!("next tuesday")), "not_after"),
        (with(&|b| b["key"] = past.clone()), "not_after"),
        (with(&|b| b["surprise"] = json!(true)), ""),
        (with(&|b| b["key"]["surprise"] = json!(true)), ""),
        (with(&|b| drop(b.as_object_mut().unwrap().remove("key"))), ""),
    ];
    for (body, field) in cases {
        let reply = post_device(&app, &alice, body.clone()).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(reply.invalid_field().ends_with(field), "{body}: expected field {field}: {}", reply.text);
    }
    assert!(directory(&app, &alice, &["alice"]).await.is_empty());
    register_keys(&app, &tenant.id, &alice, "alice", &keys).await;
}

#[tokio::test]
async fn a_device_id_registers_once_and_the_device_limit_counts_active_devices() {
    let app = spawn_app_with(&[("e2e.max_devices_per_user", "2".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let phone = register(&app, &tenant, &alice, "alice", "phone").await;

    let impostor = DeviceKeys::generate("phone", "k1", &mut rand::rng());
    let again = post_device(&app, &alice, device_body(&tenant.id, "alice", &impostor)).await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    assert_eq!(again.body["error"]["details"]["device_id"], "phone", "{}", again.text);
    let retried = post_device(&app, &alice, device_body(&tenant.id, "alice", &phone)).await;
    assert_error(&retried, StatusCode::CONFLICT, "conflict");
    let listed = directory(&app, &alice, &["alice"]).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["identity_key"], b64(&phone.identity_public()), "the first registration stands");

    register(&app, &tenant, &alice, "alice", "laptop").await;
    let tablet = DeviceKeys::generate("tablet", "k1", &mut rand::rng());
    let over = post_device(&app, &alice, device_body(&tenant.id, "alice", &tablet)).await;
    assert_error(&over, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(over.body["error"]["details"], json!({"limit": "max_devices_per_user", "value": 2}), "{}", over.text);

    // The limit is per user.
    register(&app, &tenant, &bob, "bob", "phone").await;
    register(&app, &tenant, &bob, "bob", "laptop").await;

    // Revoked devices do not count.
    assert_eq!(revoke(&app, &alice, "laptop").await.status, StatusCode::NO_CONTENT);
    register_keys(&app, &tenant.id, &alice, "alice", &tablet).await;
    assert_eq!(
        listed_pairs(&directory(&app, &alice, &["alice"]).await),
        pairs(&[("alice", "phone"), ("alice", "tablet")])
    );
    let events = key_events(&app, &alice, "alice", 50).await;
    let added = events.iter().filter(|e| e["kind"] == "device_added").count();
    assert_eq!(added, 3, "only accepted registrations are logged: {events:?}");
}

/// Registrations racing past the device limit never leave more active devices than it allows.
#[tokio::test]
async fn racing_registrations_never_pass_the_device_limit() {
    let app = spawn_app_with(&[("e2e.max_devices_per_user", "3".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bodies: Vec<Value> = (0..10)
        .map(|n| device_body(&tenant.id, "alice", &DeviceKeys::generate(&format!("d{n}"), "k1", &mut rand::rng())))
        .collect();
    let replies = futures_util::future::join_all(bodies.into_iter().map(|body| post_device(&app, &alice, body))).await;
    for reply in &replies {
        assert!([StatusCode::CREATED, StatusCode::CONFLICT].contains(&reply.status), "{}", reply.text);
    }
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert!(created <= 3, "{created} registrations got in past a limit of 3");
    assert_eq!(directory(&app, &alice, &["alice"]).await.len(), created);
    // Refused racers may register again, up to the limit exactly.
    for n in 10..20 {
        let keys = DeviceKeys::generate(&format!("d{n}"), "k1", &mut rand::rng());
        if post_device(&app, &alice, device_body(&tenant.id, "alice", &keys)).await.status != StatusCode::CREATED {
            break;
        }
    }
    assert_eq!(directory(&app, &alice, &["alice"]).await.len(), 3);
    let events = key_events(&app, &alice, "alice", 50).await;
    let added = events.iter().filter(|e| e["kind"] == "device_added").count();
    assert_eq!(added, 3, "only registrations that stand are logged: {events:?}");
}

#[tokio::test]
async fn the_directory_lists_the_active_devices_of_several_users_at_once() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = person(&app, &tenant, "alice", &["phone", "laptop"]).await;
    let bob = person(&app, &tenant, "bob", &["tablet"]).await;
    let carol = person(&app, &tenant, "carol", &[]).await;
    let dave = person(&app, &tenant, "dave", &["desktop"]).await;

    let items = directory(&app, &carol.token, &["alice", "bob", "carol"]).await;
    assert_eq!(listed_pairs(&items), pairs(&[("alice", "laptop"), ("alice", "phone"), ("bob", "tablet")]));
    for item in &items {
        let owner = if item["user_id"] == "alice" { &alice } else { &bob };
        let keys = owner.device(item["device_id"].as_str().unwrap());
        assert_eq!(item["identity_key"], b64(&keys.identity_public()));
        assert_eq!(item["current_key"]["key_id"], "k1");
        assert_eq!(item["current_key"]["public_key"], b64(&keys.x25519_public()));
        assert_eq!(item["current_key"]["status"], "current");
        assert_eq!(item["retired_keys"], json!([]));
        let checked = verified_recipient(&tenant.id, item);
        assert_eq!(checked.public_key, keys.x25519_public());
    }

    // A server key reads the directory too; unknown users simply have no devices.
    let reply = app.call(Method::GET, "/v1/devices?user_ids=dave,nobody", &tenant.key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let items = reply.body["items"].as_array().unwrap().clone();
    assert_eq!(listed_pairs(&items), pairs(&[("dave", "desktop")]));
    assert_eq!(items[0]["identity_key"], b64(&dave.devices[0].identity_public()));

    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    for query in ["", "user_ids=", "user_ids=a%20b", &format!("user_ids={}", too_many.join(","))] {
        let reply = app.call(Method::GET, &format!("/v1/devices?{query}"), &alice.token, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.text);
    }
}

#[tokio::test]
async fn rotation_retires_the_old_key_and_never_reuses_a_key_id() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let k1 = register(&app, &tenant, &alice, "alice", "phone").await;

    let k2 = next_key(&k1, "k2");
    let rotated = rotate(&app, &tenant.id, &alice, "alice", &k2).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let view = &rotated.body;
    assert_eq!(view["identity_key"], b64(&k1.identity_public()));
    assert_eq!(view["current_key"]["key_id"], "k2");
    assert_eq!(view["current_key"]["public_key"], b64(&k2.x25519_public()));
    assert_eq!(view["current_key"]["status"], "current");
    let retired = view["retired_keys"].as_array().unwrap();
    assert_eq!(retired.len(), 1, "{}", rotated.text);
    assert_eq!(retired[0]["key_id"], "k1");
    assert_eq!(retired[0]["public_key"], b64(&k1.x25519_public()));
    assert_eq!(retired[0]["status"], "retired");

    let listed = directory(&app, &bob, &["alice"]).await;
    assert_eq!(listed[0]["current_key"]["key_id"], "k2");
    assert_eq!(listed[0]["retired_keys"][0]["key_id"], "k1");
    assert_eq!(verified_recipient(&tenant.id, &listed[0]).public_key, k2.x25519_public());

    for reused in ["k1", "k2"] {
        let reply = rotate(&app, &tenant.id, &alice, "alice", &next_key(&k1, reused)).await;
        assert_error(&reply, StatusCode::CONFLICT, "conflict");
    }
    let stranger = DeviceKeys::generate("phone", "k3", &mut rand::rng());
    let forged = rotate(&app, &tenant.id, &alice, "alice", &signed_by(&next_key(&k1, "k3"), &stranger)).await;
    assert_error(&forged, StatusCode::FORBIDDEN, "invalid_signature");
    let expired = app
        .call(
            Method::POST,
            "/v1/me/devices/phone/keys",
            &alice,
            Some(key_body(&tenant.id, "alice", &next_key(&k1, "k3"), Utc::now() - Duration::hours(1))),
        )
        .await;
    assert_invalid(&expired, "not_after");
    let bad_size = app
        .call(
            Method::POST,
            "/v1/me/devices/phone/keys",
            &alice,
            Some(json!({"key_id": "k3", "public_key": b64(&[0u8; 16]), "not_after": in_days(1).to_rfc3339(),
                        "signature": b64(&[0u8; 64])})),
        )
        .await;
    assert_invalid(&bad_size, "public_key");
    let unknown = rotate(
        &app,
        &tenant.id,
        &alice,
        "alice",
        &next_key(&DeviceKeys::generate("ghost", "x", &mut rand::rng()), "k1"),
    )
    .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    // bob has no device "phone": his /me namespace is his own.
    let not_his = rotate(&app, &tenant.id, &bob, "bob", &next_key(&k1, "k9")).await;
    assert_error(&not_his, StatusCode::NOT_FOUND, "not_found");

    let k3 = next_key(&k1, "k3");
    let again = rotate(&app, &tenant.id, &alice, "alice", &k3).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["current_key"]["key_id"], "k3");
    let retired: Vec<&str> =
        again.body["retired_keys"].as_array().unwrap().iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    assert_eq!(retired, ["k1", "k2"]);

    assert_eq!(revoke(&app, &alice, "phone").await.status, StatusCode::NO_CONTENT);
    let after_revoke = rotate(&app, &tenant.id, &alice, "alice", &next_key(&k1, "k4")).await;
    assert_error(&after_revoke, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn revocation_and_the_key_event_log() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let phone = register(&app, &tenant, &alice, "alice", "phone").await;
    register(&app, &tenant, &alice, "alice", "laptop").await;
    register(&app, &tenant, &bob, "bob", "tablet").await;
    let rotated = rotate(&app, &tenant.id, &alice, "alice", &next_key(&phone, "k2")).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    register(&app, &tenant, &alice, "alice", "watch").await;

    assert_eq!(revoke(&app, &alice, "laptop").await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        listed_pairs(&directory(&app, &bob, &["alice"]).await),
        pairs(&[("alice", "phone"), ("alice", "watch")])
    );
    let again = revoke(&app, &alice, "laptop").await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "revoking twice is harmless: {}", again.text);
    assert_error(&revoke(&app, &alice, "ghost").await, StatusCode::NOT_FOUND, "not_found");
    // bob cannot revoke alice's devices: /me is his own.
    assert_error(&revoke(&app, &bob, "phone").await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        listed_pairs(&directory(&app, &bob, &["alice"]).await),
        pairs(&[("alice", "phone"), ("alice", "watch")])
    );

    let expected = vec![
        ("device_added".to_string(), "phone".to_string(), json!("k1")),
        ("device_added".to_string(), "laptop".to_string(), json!("k1")),
        ("key_rotated".to_string(), "phone".to_string(), json!("k2")),
        ("device_added".to_string(), "watch".to_string(), json!("k1")),
        ("device_revoked".to_string(), "laptop".to_string(), Value::Null),
    ];
    let all = key_events(&app, &bob, "alice", 50).await;
    assert_eq!(event_summary(&all), expected, "oldest first, read by another user of the tenant");
    let times: Vec<DateTime<Utc>> = all.iter().map(|e| e["at"].as_str().unwrap().parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for limit in [1, 2, 3] {
        let paged = key_events(&app, &alice, "alice", limit).await;
        let ids: Vec<&Value> = paged.iter().map(|e| &e["id"]).collect();
        let all_ids: Vec<&Value> = all.iter().map(|e| &e["id"]).collect();
        assert_eq!(ids, all_ids, "pages of {limit}");
    }
    let first = app.call(Method::GET, "/v1/users/alice/key-events?limit=3", &tenant.key, None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["items"].as_array().unwrap().len(), 3);
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_string();
    let rest = app.call(Method::GET, &format!("/v1/users/alice/key-events?limit=3&after={cursor}"), &bob, None).await;
    assert_eq!(event_summary(rest.body["items"].as_array().unwrap()), expected[3..].to_vec());
    assert!(rest.body["next_cursor"].is_null(), "{}", rest.text);

    assert_eq!(
        event_summary(&key_events(&app, &alice, "bob", 50).await),
        vec![("device_added".to_string(), "tablet".to_string(), json!("k1"))]
    );
    assert!(key_events(&app, &alice, "nobody", 50).await.is_empty());
    let zero = app.call(Method::GET, "/v1/users/alice/key-events?limit=0", &alice, None).await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "invalid_request");
}

// ---------------------------------------------------------------------------------------------
// 2. Conversations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_e2e_conversation_accepts_envelopes_only_and_a_plain_one_refuses_them() {
    let s = scene().await;
    let app = &s.app;
    let alice = &s.alice.token;
    let seen = app.call(Method::GET, &format!("/v1/conversations/{}", s.conversation), &s.bob.token, None).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.text);
    assert_eq!(seen.body["encryption"], "e2e");
    let plain = create_conversation(app, alice, json!({"type": "group", "members": ["bob", "carol"]})).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{}", plain.text);
    assert_eq!(plain.body["encryption"], "none");
    let plain = plain.body["id"].as_str().unwrap().to_string();
    let direct =
        create_conversation(app, alice, json!({"type": "direct", "members": ["carol"], "encryption": "e2e"})).await;
    assert_eq!(direct.status, StatusCode::CREATED, "{}", direct.text);
    assert_eq!(direct.body["encryption"], "e2e");
    let bogus = create_conversation(app, alice, json!({"type": "group", "members": [], "encryption": "rot13"})).await;
    assert_invalid(&bogus, "encryption");

    // Encryption is fixed at creation.
    let downgrade = app
        .call(
            Method::PATCH,
            &format!("/v1/conversations/{}", s.conversation),
            alice,
            Some(json!({"encryption": "none"})),
        )
        .await;
    assert_eq!(downgrade.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", downgrade.text);

    let text = app.say(alice, &s.conversation, "hello in the clear").await;
    assert_error(&text, StatusCode::BAD_REQUEST, "invalid_request");
    let nothing =
        app.call(Method::POST, &messages_path(&s.conversation), alice, Some(json!({"client_msg_id": "m-0"}))).await;
    assert_error(&nothing, StatusCode::BAD_REQUEST, "invalid_request");

    let envelope = s.seal("m-1", b"both at once", &s.expected_recipients());
    let both = app
        .call(
            Method::POST,
            &messages_path(&s.conversation),
            alice,
            Some(json!({"client_msg_id": "m-1", "text": "both at once", "envelope": envelope})),
        )
        .await;
    assert_error(&both, StatusCode::BAD_REQUEST, "invalid_request");
    let attached = app
        .call(
            Method::POST,
            &messages_path(&s.conversation),
            alice,
            Some(json!({"client_msg_id": "m-1", "envelope": envelope,
                        "attachments": [{"url": "https://example.com/plain.png"}]})),
        )
        .await;
    assert_error(&attached, StatusCode::BAD_REQUEST, "invalid_request");

    let for_plain = seal(
        &context(&s.tenant.id, &plain, "p-1", "alice", "phone"),
        s.alice.device("phone"),
        b"into the plain room",
        &s.expected_recipients(),
        &mut rand::rng(),
    );
    let refused = send_envelope(app, alice, &plain, "p-1", &for_plain).await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(last_seq(app, alice, &plain).await, 0);
    assert_eq!(s.last_seq().await, 0, "refused messages store nothing");

    let sent = s.send("m-1", &envelope).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], 1);
    assert!(sent.body["text"].is_null(), "{}", sent.text);
    assert_eq!(sent.body["envelope"], json!(envelope));
    assert_eq!(app.say(alice, &plain, "plain is fine").await.status, StatusCode::CREATED);
}

// ---------------------------------------------------------------------------------------------
// 3. Round trips
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_recipient_device_opens_what_the_server_stored_for_1_to_50_devices() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    // (sender's devices, the other members' devices): the sending device is never a recipient,
    // the sender's other devices always are.
    let cases: [(usize, &[usize]); 5] = [(2, &[]), (1, &[1]), (2, &[3, 1, 0]), (1, &[4, 4, 4]), (3, &[6; 8])];
    for (case, (own, others)) in cases.iter().enumerate() {
        let names = |n: usize| (0..n).map(|i| format!("d{i}")).collect::<Vec<_>>();
        let own_names = names(*own);
        let sender_id = format!("s{case}");
        let sender = person(&app, &tenant, &sender_id, &own_names.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let mut people = vec![sender];
        for (j, count) in others.iter().enumerate() {
            let devices = names(*count);
            let id = format!("u{case}-{j}");
            people.push(person(&app, &tenant, &id, &devices.iter().map(String::as_str).collect::<Vec<_>>()).await);
        }
        let ids: Vec<&str> = people.iter().map(|p| p.id.as_str()).collect();
        let conversation = e2e_group(&app, &people[0].token, &ids[1..]).await;

        // Recipients as a client finds them: from the directory, each key's signature checked.
        let sending = &people[0].devices[0];
        let recipients: Vec<RecipientKey> = directory(&app, &people[0].token, &ids)
            .await
            .iter()
            .map(|item| verified_recipient(&tenant.id, item))
            .filter(|r| !(r.user_id == sender_id && r.device_id == sending.device_id))
            .collect();
        let expected = own - 1 + others.iter().sum::<usize>();
        assert_eq!(recipients.len(), expected, "case {case}");

        let message_id = format!("m-{}", random_lower(10));
        let plaintext = format!("case {case}: a secret for {expected} devices");
        let ctx = context(&tenant.id, &conversation, &message_id, &sender_id, &sending.device_id);
        let envelope = seal(&ctx, sending, plaintext.as_bytes(), &recipients, &mut rand::rng());
        let sent = send_envelope(&app, &people[0].token, &conversation, &message_id, &envelope).await;
        assert_eq!(sent.status, StatusCode::CREATED, "case {case}: {}", sent.text);
        assert_eq!(sent.body["envelope"], json!(envelope), "returned as sent");
        let seq = sent.body["seq"].as_i64().unwrap();

        let mut opened = 0;
        for reader in &people {
            let listed = history(&app, &reader.token, &conversation).await;
            let in_history = listed.iter().find(|m| m["seq"] == seq).expect("the message is in history");
            assert_eq!(in_history["client_msg_id"], message_id.as_str());
            assert_eq!(in_history["sender_id"], sender_id.as_str());
            assert!(in_history["text"].is_null());
            let by_seq = message_at(&app, &reader.token, &conversation, seq).await;
            for stored in [envelope_of(in_history), envelope_of(&by_seq)] {
                assert_eq!(stored, envelope, "stored verbatim");
                for keys in &reader.devices {
                    let result = open(&stored, &ctx, &sending.identity_public(), &reader.id, keys);
                    if reader.id == sender_id && keys.device_id == sending.device_id {
                        assert_eq!(result, Err(OpenError::NotARecipient), "the sending device is not a recipient");
                    } else {
                        assert_eq!(result.as_deref(), Ok(plaintext.as_bytes()), "case {case}: {}", reader.id);
                        opened += 1;
                    }
                }
            }
        }
        assert_eq!(opened, 2 * expected, "case {case}: every recipient opened history and the single message");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Server checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_or_revoked_sender_device_is_refused() {
    let s = scene().await;
    let everyone = recipients_for(&[&s.alice, &s.bob, &s.carol], "alice", "");

    let ghost = DeviceKeys::generate("ghost", "k1", &mut rand::rng());
    let from_ghost = seal(&s.ctx("m-1", "alice", "ghost"), &ghost, b"boo", &everyone, &mut rand::rng());
    assert_invalid(&s.send("m-1", &from_ghost).await, "envelope.sender_device_id");

    // Another user's device is not the sender's.
    let bobs = s.bob.device("tablet");
    let from_bobs = seal(
        &s.ctx("m-1", "alice", "tablet"),
        bobs,
        b"borrowed",
        &without(&everyone, "bob", "tablet"),
        &mut rand::rng(),
    );
    assert_invalid(&s.send("m-1", &from_bobs).await, "envelope.sender_device_id");

    assert_eq!(revoke(&s.app, &s.alice.token, "laptop").await.status, StatusCode::NO_CONTENT);
    let laptop = s.alice.device("laptop");
    let remaining = without(&everyone, "alice", "laptop");
    let from_revoked = seal(&s.ctx("m-1", "alice", "laptop"), laptop, b"old", &remaining, &mut rand::rng());
    assert_invalid(&s.send("m-1", &from_revoked).await, "envelope.sender_device_id");
    assert_eq!(s.last_seq().await, 0, "refused messages store nothing");

    let good = s.seal("m-1", b"from the phone", &without(&remaining, "alice", "phone"));
    let sent = s.send("m-1", &good).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
}

#[tokio::test]
async fn the_signature_binds_every_field_and_the_tenant_conversation_message_and_sender() {
    let s = scene().await;
    let other_conversation = e2e_group(&s.app, &s.alice.token, &["bob", "carol"]).await;
    let recipients = s.expected_recipients();
    let phone = s.alice.device("phone");
    let good = s.seal("m-1", b"signed and sealed", &recipients);
    let tampered = |f: &dyn Fn(&mut Envelope)| {
        let mut envelope = good.clone();
        f(&mut envelope);
        envelope
    };
    let sealed_in = |ctx: Context, sender: &DeviceKeys| seal(&ctx, sender, b"elsewhere", &recipients, &mut rand::rng());
    let flipped = {
        let mut bytes = unb64(&good.ciphertext).unwrap();
        bytes[0] ^= 1;
        b64(&bytes)
    };
    let cases: Vec<(&str, Envelope)> = vec![
        ("ciphertext", tampered(&|e| e.ciphertext = flipped.clone())),
        ("nonce", tampered(&|e| e.nonce = b64(&random_bytes(12)))),
        ("commitment", tampered(&|e| e.commitment = b64(&random_bytes(32)))),
        ("recipient enc", tampered(&|e| e.recipients[1].enc = b64(&random_bytes(32)))),
        ("recipient wrapped_key", tampered(&|e| e.recipients[2].wrapped_key = b64(&random_bytes(48)))),
        ("recipient key id", tampered(&|e| e.recipients[0].key_id = "k2".into())),
        ("recipient order", tampered(&|e| e.recipients.reverse())),
        ("recipient dropped", tampered(&|e| drop(e.recipients.pop()))),
        ("signature", tampered(&|e| e.signature = b64(&random_bytes(64)))),
        ("sender device claimed", tampered(&|e| e.sender_device_id = "laptop".into())),
        ("another conversation", sealed_in(context(&s.tenant.id, &other_conversation, "m-1", "alice", "phone"), phone)),
        ("another message id", sealed_in(s.ctx("m-2", "alice", "phone"), phone)),
        ("another tenant", sealed_in(context("t-elsewhere", &s.conversation, "m-1", "alice", "phone"), phone)),
        ("another sender user", sealed_in(s.ctx("m-1", "bob", "phone"), phone)),
        ("another sender device in the context", sealed_in(s.ctx("m-1", "alice", "laptop"), phone)),
        (
            "signed by another identity",
            sealed_in(s.ctx("m-1", "alice", "phone"), &signed_by(phone, s.bob.device("tablet"))),
        ),
    ];
    for (what, envelope) in cases {
        let reply = s.send("m-1", &envelope).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_signature", "{what}: {}", reply.text);
    }
    let renamed = s.send("m-2", &good).await;
    assert_error(&renamed, StatusCode::FORBIDDEN, "invalid_signature");
    assert_eq!(s.last_seq().await, 0, "refused messages store nothing");

    let sent = s.send("m-1", &good).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], 1);
    let stored = envelope_of(&message_at(&s.app, &s.carol.token, &s.conversation, 1).await);
    assert_eq!(s.open_as(&stored, "m-1", "carol", s.carol.device("phone")), b"signed and sealed");
}

#[tokio::test]
async fn the_recipients_must_be_exactly_the_members_active_devices() {
    let s = scene().await;
    let dave = person(&s.app, &s.tenant, "dave", &["desktop"]).await;
    let old = register(&s.app, &s.tenant, &s.bob.token, "bob", "old").await;
    assert_eq!(revoke(&s.app, &s.bob.token, "old").await.status, StatusCode::NO_CONTENT);
    let ghost = DeviceKeys::generate("ghost", "k1", &mut rand::rng());
    let all = s.expected_recipients();
    let plus = |extra: Vec<RecipientKey>| [all.clone(), extra].concat();
    let everyone_else = [("alice", "laptop"), ("bob", "laptop"), ("bob", "tablet"), ("carol", "phone")];

    let cases: Vec<(&str, Vec<RecipientKey>, DeviceList, DeviceList)> = vec![
        ("a member's device left out", without(&all, "bob", "tablet"), vec![("bob", "tablet")], vec![]),
        ("the sender's other device left out", without(&all, "alice", "laptop"), vec![("alice", "laptop")], vec![]),
        (
            "the sending device listed",
            plus(vec![recipient("alice", s.alice.device("phone"))]),
            vec![],
            vec![("alice", "phone")],
        ),
        ("a non-member's device", plus(vec![recipient("dave", &dave.devices[0])]), vec![], vec![("dave", "desktop")]),
        ("a revoked device", plus(vec![recipient("bob", &old)]), vec![], vec![("bob", "old")]),
        ("an unregistered device", plus(vec![recipient("bob", &ghost)]), vec![], vec![("bob", "ghost")]),
        (
            "both",
            [without(&all, "carol", "phone"), vec![recipient("dave", &dave.devices[0])]].concat(),
            vec![("carol", "phone")],
            vec![("dave", "desktop")],
        ),
        ("nobody right", vec![recipient("dave", &dave.devices[0])], everyone_else.to_vec(), vec![("dave", "desktop")]),
    ];
    for (what, recipients, missing, extra) in cases {
        let reply = s.send("m-1", &s.seal("m-1", what.as_bytes(), &recipients)).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{what}: {}", reply.text);
        assert_mismatch(&reply, &missing, &extra);
    }

    let twice = plus(vec![all[1].clone()]);
    assert_invalid(&s.send("m-1", &s.seal("m-1", b"twice", &twice)).await, "envelope.recipients");
    let mut other_key = all[1].clone();
    other_key.key_id = "k7".into();
    let twice_other_key = plus(vec![other_key]);
    assert_invalid(&s.send("m-1", &s.seal("m-1", b"twice", &twice_other_key)).await, "envelope.recipients");
    assert_invalid(&s.send("m-1", &s.seal("m-1", b"nobody", &[])).await, "envelope.recipients");
    assert_eq!(s.last_seq().await, 0, "refused messages store nothing");

    let sent = s.send("m-1", &s.seal("m-1", b"exactly right", &all)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);

    // A device registered later must be included from then on.
    let watch = register(&s.app, &s.tenant, &s.bob.token, "bob", "watch").await;
    let stale_list = s.send("m-2", &s.seal("m-2", b"forgot the watch", &all)).await;
    assert_mismatch(&stale_list, &[("bob", "watch")], &[]);
    let with_watch = plus(vec![recipient("bob", &watch)]);
    let sent = s.send("m-2", &s.seal("m-2", b"with the watch", &with_watch)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(s.last_seq().await, 2);
    let stored = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 2).await);
    assert_eq!(s.open_as(&stored, "m-2", "bob", &watch), b"with the watch");
}

#[tokio::test]
async fn a_rotated_recipient_key_is_stale_until_the_sender_re_seals() {
    let s = scene().await;
    let all = s.expected_recipients();
    let before = s.send("m-0", &s.seal("m-0", b"before rotation", &all)).await;
    assert_eq!(before.status, StatusCode::CREATED, "{}", before.text);

    let bob_k2 = next_key(s.bob.device("laptop"), "k2");
    assert_eq!(rotate(&s.app, &s.tenant.id, &s.bob.token, "bob", &bob_k2).await.status, StatusCode::OK);
    let carol_k2 = next_key(s.carol.device("phone"), "k2");
    assert_eq!(rotate(&s.app, &s.tenant.id, &s.carol.token, "carol", &carol_k2).await.status, StatusCode::OK);

    let stale = s.send("m-1", &s.seal("m-1", b"to old keys", &all)).await;
    assert_error(&stale, StatusCode::GONE, "stale_keys");
    assert_eq!(
        stale.body["error"]["details"]["stale"],
        json!([
            {"user_id": "bob", "device_id": "laptop", "key_id": "k1", "current_key_id": "k2"},
            {"user_id": "carol", "device_id": "phone", "key_id": "k1", "current_key_id": "k2"},
        ]),
        "{}",
        stale.text
    );
    // A key id the device never had is stale too.
    let refreshed: Vec<RecipientKey> = all
        .iter()
        .map(|r| match (r.user_id.as_str(), r.device_id.as_str()) {
            ("bob", "laptop") => recipient("bob", &bob_k2),
            ("carol", "phone") => recipient("carol", &carol_k2),
            _ => r.clone(),
        })
        .collect();
    let mut invented = refreshed.clone();
    let tablet = invented.iter_mut().find(|r| r.device_id == "tablet").unwrap();
    tablet.key_id = "k9".into();
    let unknown = s.send("m-1", &s.seal("m-1", b"invented", &invented)).await;
    assert_error(&unknown, StatusCode::GONE, "stale_keys");
    assert_eq!(
        unknown.body["error"]["details"]["stale"],
        json!([{"user_id": "bob", "device_id": "tablet", "key_id": "k9", "current_key_id": "k1"}]),
        "{}",
        unknown.text
    );
    assert_eq!(s.last_seq().await, 1, "refused messages store nothing");

    // Refresh from the directory and seal again with the same client_msg_id.
    let listed = directory(&s.app, &s.alice.token, &["alice", "bob", "carol"]).await;
    let from_directory: Vec<RecipientKey> = listed
        .iter()
        .map(|item| verified_recipient(&s.tenant.id, item))
        .filter(|r| !(r.user_id == "alice" && r.device_id == "phone"))
        .collect();
    let resealed = s.seal("m-1", b"to new keys", &from_directory);
    let sent = s.send("m-1", &resealed).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], 2);

    let stored = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 2).await);
    assert_eq!(s.open_as(&stored, "m-1", "bob", &bob_k2), b"to new keys");
    assert_eq!(s.open_as(&stored, "m-1", "carol", &carol_k2), b"to new keys");
    let ctx = s.ctx("m-1", "alice", "phone");
    let with_old_key = open(&stored, &ctx, &s.alice.device("phone").identity_public(), "bob", s.bob.device("laptop"));
    assert_eq!(with_old_key, Err(OpenError::NotARecipient));
    // The message sealed before the rotation still opens with the retired key.
    let old = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 1).await);
    assert_eq!(s.open_as(&old, "m-0", "bob", s.bob.device("laptop")), b"before rotation");
}

#[tokio::test]
async fn malformed_envelopes_are_refused_with_the_field_named() {
    let s = scene().await;
    let good = s.seal("m-1", b"well formed", &s.expected_recipients());
    let tampered = |f: &dyn Fn(&mut Envelope)| {
        let mut envelope = good.clone();
        f(&mut envelope);
        envelope
    };
    let cases: Vec<(Envelope, &str)> = vec![
        (tampered(&|e| e.v = 2), "envelope"),
        (tampered(&|e| e.v = 0), "envelope"),
        (tampered(&|e| e.suite = "x25519-hkdf-sha256-chacha20poly1305+ed25519".into()), "envelope"),
        (tampered(&|e| e.suite = String::new()), "envelope"),
        (tampered(&|e| e.nonce = b64(&[0u8; 11])), "envelope.nonce"),
        (tampered(&|e| e.nonce = b64(&[0u8; 24])), "envelope.nonce"),
        (tampered(&|e| e.nonce = "not base64!".into()), "envelope.nonce"),
        (tampered(&|e| e.commitment = b64(&[0u8; 31])), "envelope.commitment"),
        (tampered(&|e| e.signature = b64(&[0u8; 63])), "envelope.signature"),
        (tampered(&|e| e.signature = format!("{}==", e.signature)), "envelope.signature"),
        (tampered(&|e| e.ciphertext = b64(&[0u8; 15])), "envelope.ciphertext"),
        (tampered(&|e| e.ciphertext = "%%%%".into()), "envelope.ciphertext"),
        (tampered(&|e| e.recipients[0].enc = b64(&[0u8; 31])), "envelope.recipients.enc"),
        (tampered(&|e| e.recipients[3].wrapped_key = b64(&[0u8; 47])), "envelope.recipients.wrapped_key"),
        (tampered(&|e| e.recipients.clear()), "envelope.recipients"),
    ];
    for (envelope, field) in cases {
        let reply = s.send("m-1", &envelope).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {}", reply.text);
        assert_invalid(&reply, field);
    }
    let as_json = serde_json::to_value(&good).unwrap();
    let raw = |f: &dyn Fn(&mut Value)| {
        let mut value = as_json.clone();
        f(&mut value);
        value
    };
    for envelope in [
        raw(&|e| e["extra"] = json!("field")),
        raw(&|e| e["recipients"][0]["extra"] = json!(1)),
        raw(&|e| drop(e.as_object_mut().unwrap().remove("signature"))),
        raw(&|e| e["v"] = json!("1")),
        raw(&|e| e["recipients"] = json!({})),
    ] {
        let reply = s
            .app
            .call(
                Method::POST,
                &messages_path(&s.conversation),
                &s.alice.token,
                Some(json!({"client_msg_id": "m-1", "envelope": envelope})),
            )
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(reply.invalid_field().starts_with("envelope"), "{}", reply.text);
    }
    assert_eq!(s.last_seq().await, 0, "refused messages store nothing");
    assert_eq!(s.send("m-1", &good).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_envelope_over_the_size_limit_is_refused_with_413() {
    let s = scene_with(&[("e2e.max_envelope_bytes", "2000".into())]).await;
    let all = s.expected_recipients();
    let small = s.seal("m-1", b"short", &all);
    assert!(serde_json::to_vec(&small).unwrap().len() < 2000, "the small envelope fits");
    let sent = s.send("m-1", &small).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);

    let big = s.seal("m-2", &[b'x'; 1500], &all);
    assert!(serde_json::to_vec(&big).unwrap().len() > 2000);
    let refused = s.send("m-2", &big).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(refused.body["error"]["details"]["limit_bytes"], 2000, "{}", refused.text);
    assert_eq!(s.last_seq().await, 1, "refused messages store nothing");

    // Editing is held to the same limit.
    let big_edit = s.seal("m-1", &[b'y'; 1500], &all);
    let edit = edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &big_edit).await;
    assert_error(&edit, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let stored = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 1).await);
    assert_eq!(stored, small);
}

#[tokio::test]
async fn more_recipients_than_e2e_max_recipients_are_refused() {
    let s = scene_with(&[("e2e.max_recipients", "3".into())]).await;
    let all = s.expected_recipients();
    assert_eq!(all.len(), 4);
    assert_invalid(&s.send("m-1", &s.seal("m-1", b"too many", &all)).await, "envelope.recipients");
    assert_eq!(s.last_seq().await, 0);
}

#[tokio::test]
async fn the_recipient_check_sees_every_member_even_when_members_outnumber_max_recipients() {
    // Few devices, more members than e2e.max_recipients: members without devices need no copy,
    // but every member's devices must be checked, whatever their place in the roster.
    let app = spawn_app_with(&[("e2e.max_recipients", "2".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = person(&app, &tenant, "alice", &["phone"]).await;
    let bob = person(&app, &tenant, "bob", &["laptop"]).await;
    for id in ["carol", "dave"] {
        person(&app, &tenant, id, &[]).await;
    }
    let zed = person(&app, &tenant, "zed", &["laptop"]).await;
    let conversation = e2e_group(&app, &alice.token, &["bob", "carol", "dave", "zed"]).await;
    let ctx = context(&tenant.id, &conversation, "m-1", "alice", "phone");
    let sealed = |recipients: &[RecipientKey]| seal(&ctx, alice.device("phone"), b"hi", recipients, &mut rand::rng());

    let without_zed = sealed(&[recipient("bob", bob.device("laptop"))]);
    let reply = send_envelope(&app, &alice.token, &conversation, "m-1", &without_zed).await;
    assert_mismatch(&reply, &[("zed", "laptop")], &[]);
    assert_eq!(last_seq(&app, &alice.token, &conversation).await, 0);

    let both = sealed(&[recipient("bob", bob.device("laptop")), recipient("zed", zed.device("laptop"))]);
    let reply = send_envelope(&app, &alice.token, &conversation, "m-1", &both).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let stored = envelope_of(&message_at(&app, &zed.token, &conversation, 1).await);
    let opened = open(&stored, &ctx, &alice.device("phone").identity_public(), "zed", zed.device("laptop"));
    assert_eq!(opened.as_deref(), Ok(&b"hi"[..]));
}

// ---------------------------------------------------------------------------------------------
// 5. Idempotency and seq
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_client_msg_id_returns_the_original_and_seqs_stay_gapless() {
    let s = scene().await;
    let all = s.expected_recipients();
    let first = s.seal("m-1", b"first", &all);
    let created = s.send("m-1", &first).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["seq"], 1);

    let retried = s.send("m-1", &first).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["seq"], 1);
    assert_eq!(retried.body["id"], created.body["id"]);
    assert_eq!(retried.body["envelope"], json!(first));
    let resealed = s.send("m-1", &s.seal("m-1", b"first, sealed again", &all)).await;
    assert_eq!(resealed.status, StatusCode::OK, "{}", resealed.text);
    assert_eq!(resealed.body["seq"], 1);
    assert_eq!(resealed.body["envelope"], json!(first), "the original is returned, not replaced");
    assert_eq!(s.last_seq().await, 1);

    // A refused attempt neither takes a seq nor the client_msg_id.
    let refused = s.send("m-2", &s.seal("m-2", b"second", &without(&all, "bob", "laptop"))).await;
    assert_mismatch(&refused, &[("bob", "laptop")], &[]);
    let second = s.send("m-2", &s.seal("m-2", b"second", &all)).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_eq!(second.body["seq"], 2);

    // Another sender's client_msg_id space is separate.
    let bob_ctx = s.ctx("m-1", "bob", "tablet");
    let bob_recipients = recipients_for(&[&s.alice, &s.bob, &s.carol], "bob", "tablet");
    let from_bob = seal(&bob_ctx, s.bob.device("tablet"), b"bob's m-1", &bob_recipients, &mut rand::rng());
    let bobs = send_envelope(&s.app, &s.bob.token, &s.conversation, "m-1", &from_bob).await;
    assert_eq!(bobs.status, StatusCode::CREATED, "{}", bobs.text);
    assert_eq!(bobs.body["seq"], 3);

    let third = s.send("m-3", &s.seal("m-3", b"third", &all)).await;
    assert_eq!(third.body["seq"], 4, "{}", third.text);
    assert_eq!(s.send("m-2", &s.seal("m-2", b"again", &all)).await.body["seq"], 2);

    let items = history(&s.app, &s.carol.token, &s.conversation).await;
    let seqs: Vec<i64> = items.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let ids: Vec<(&str, &str)> =
        items.iter().map(|m| (m["sender_id"].as_str().unwrap(), m["client_msg_id"].as_str().unwrap())).collect();
    assert_eq!(ids, [("alice", "m-1"), ("alice", "m-2"), ("bob", "m-1"), ("alice", "m-3")]);
    assert_eq!(s.last_seq().await, 4);
    let carol = s.carol.device("phone");
    assert_eq!(s.open_as(&envelope_of(&items[0]), "m-1", "carol", carol), b"first");
    assert_eq!(s.open_as(&envelope_of(&items[1]), "m-2", "carol", carol), b"second");
    let bobs_opened =
        open(&envelope_of(&items[2]), &bob_ctx, &s.bob.device("tablet").identity_public(), "carol", carol);
    assert_eq!(bobs_opened.as_deref(), Ok(&b"bob's m-1"[..]));
}

// ---------------------------------------------------------------------------------------------
// 6. No plaintext on the server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_database_holds_no_plaintext_and_search_finds_no_e2e_message() {
    let s = scene().await;
    let all = s.expected_recipients();
    let secrets = ["quokkalantern at the harbour", "zebrafirmament opens the vault", "marmaladecomet 4471"];
    for (i, secret) in secrets.iter().enumerate() {
        let id = format!("m-{i}");
        let sent = s.send(&id, &s.seal(&id, secret.as_bytes(), &all)).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    }
    let edited_secret = "pangolinsextant replaces it";
    let edit =
        edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &s.seal("m-0", edited_secret.as_bytes(), &all)).await;
    assert_eq!(edit.status, StatusCode::OK, "{}", edit.text);
    // A control: a plain conversation's text is stored and searchable.
    let plain = s.app.conversation(&s.alice.token, "group", &["bob"]).await;
    assert_eq!(s.app.say(&s.alice.token, &plain, "platypusbeacon in the clear").await.status, StatusCode::CREATED);

    let db = s.app.mongo().await.database(&s.app.tenant_db_name(&s.tenant.id));
    let messages: Vec<Document> =
        db.collection::<Document>("messages").find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    assert!(messages.len() >= 4, "{messages:?}");
    let mut dump = String::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<Document> =
            db.collection::<Document>(&name).find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
        for doc in docs {
            dump.push_str(&serde_json::to_string(&doc).unwrap());
            dump.push('\n');
        }
    }
    assert!(dump.contains("platypusbeacon"), "the dump includes the messages collection");
    let stored = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 2).await);
    assert!(dump.contains(&stored.ciphertext), "the envelopes are stored");
    let words = ["quokkalantern", "zebrafirmament", "marmaladecomet", "pangolinsextant"];
    for secret in secrets.iter().chain([&edited_secret]) {
        assert!(!dump.contains(secret), "plaintext {secret:?} is in the database");
        assert!(!dump.contains(&b64(secret.as_bytes())), "base64 of {secret:?} is in the database");
    }
    for word in words {
        assert!(!dump.contains(word), "{word:?} is in the database");
    }

    for (token, word) in
        [(&s.bob.token, "quokkalantern"), (&s.alice.token, "zebrafirmament"), (&s.carol.token, "pangolinsextant")]
    {
        let reply = s.app.call(Method::GET, &format!("/v1/search/messages?q={word}"), token, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["items"], json!([]), "{word}: {}", reply.text);
    }
    let scoped = s
        .app
        .call(
            Method::GET,
            &format!("/v1/search/messages?q=quokkalantern&conversation_id={}", s.conversation),
            &s.bob.token,
            None,
        )
        .await;
    assert_eq!(scoped.status, StatusCode::OK, "{}", scoped.text);
    assert_eq!(scoped.body["items"], json!([]));
    let control = s.app.call(Method::GET, "/v1/search/messages?q=platypusbeacon", &s.bob.token, None).await;
    assert_eq!(control.body["items"].as_array().map(Vec::len), Some(1), "{}", control.text);
}

// ---------------------------------------------------------------------------------------------
// 7. Membership changes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn recipients_follow_membership_changes() {
    let s = scene().await;
    let dave = person(&s.app, &s.tenant, "dave", &["desktop", "phone"]).await;
    person(&s.app, &s.tenant, "erin", &[]).await;
    let all = s.expected_recipients();
    assert_eq!(s.send("m-1", &s.seal("m-1", b"all three", &all)).await.status, StatusCode::CREATED);

    let removed = s
        .app
        .call(Method::DELETE, &format!("/v1/conversations/{}/members/carol", s.conversation), &s.alice.token, None)
        .await;
    assert!(removed.status.is_success(), "{}", removed.text);
    let seq = s.last_seq().await;
    let still_carol = s.send("m-2", &s.seal("m-2", b"carol is gone", &all)).await;
    assert_mismatch(&still_carol, &[], &[("carol", "phone")]);
    assert_eq!(s.last_seq().await, seq);
    let without_carol = without(&all, "carol", "phone");
    let sent = s.send("m-2", &s.seal("m-2", b"carol is gone", &without_carol)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], seq + 1);

    let added = s
        .app
        .call(
            Method::POST,
            &format!("/v1/conversations/{}/members", s.conversation),
            &s.alice.token,
            Some(json!({"user_ids": ["dave", "erin"]})),
        )
        .await;
    assert!(added.status.is_success(), "{}", added.text);
    let seq = s.last_seq().await;
    let forgot_dave = s.send("m-3", &s.seal("m-3", b"welcome", &without_carol)).await;
    assert_mismatch(&forgot_dave, &[("dave", "desktop"), ("dave", "phone")], &[]);
    let half_dave = [without_carol.clone(), vec![recipient("dave", dave.device("phone"))]].concat();
    assert_mismatch(&s.send("m-3", &s.seal("m-3", b"welcome", &half_dave)).await, &[("dave", "desktop")], &[]);
    let with_dave = [without_carol.clone(), recipients_for(&[&dave], "", "")].concat();
    let sent = s.send("m-3", &s.seal("m-3", b"welcome, dave", &with_dave)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], seq + 1);

    let stored = envelope_of(&message_at(&s.app, &dave.token, &s.conversation, seq + 1).await);
    for keys in &dave.devices {
        assert_eq!(s.open_as(&stored, "m-3", "dave", keys), b"welcome, dave");
    }
    let ctx = s.ctx("m-3", "alice", "phone");
    let carol_tries = open(&stored, &ctx, &s.alice.device("phone").identity_public(), "carol", s.carol.device("phone"));
    assert_eq!(carol_tries, Err(OpenError::NotARecipient));

    // A banned member's devices are no longer recipients either.
    let banned =
        s.app.call(Method::PUT, &format!("/v1/conversations/{}/bans/dave", s.conversation), &s.alice.token, None).await;
    assert!(banned.status.is_success(), "{}", banned.text);
    let still_dave = s.send("m-4", &s.seal("m-4", b"dave is banned", &with_dave)).await;
    assert_mismatch(&still_dave, &[], &[("dave", "desktop"), ("dave", "phone")]);
    let sent = s.send("m-4", &s.seal("m-4", b"dave is banned", &without_carol)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
}

// ---------------------------------------------------------------------------------------------
// 8. Replays
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_accepted_envelope_replayed_into_another_tenant_or_conversation_is_refused() {
    let s = scene().await;
    let all = s.expected_recipients();
    let original = s.seal("m-1", b"for tenant A only", &all);
    assert_eq!(s.send("m-1", &original).await.status, StatusCode::CREATED);

    // Tenant B: the same user ids, the very same device keys (registered for B), and a
    // conversation with the same members.
    let b = s.app.chat_tenant().await;
    let mut tokens = Vec::new();
    for p in [&s.alice, &s.bob, &s.carol] {
        let token = s.app.user(&b, &p.id).await;
        assert!(directory(&s.app, &token, &[&p.id]).await.is_empty(), "tenant A's devices are not listed in B");
        for keys in &p.devices {
            register_keys(&s.app, &b.id, &token, &p.id, keys).await;
        }
        tokens.push(token);
    }
    let events_in_b = event_summary(&key_events(&s.app, &tokens[0], "alice", 50).await);
    let added_in_b = vec![
        ("device_added".to_string(), "phone".to_string(), json!("k1")),
        ("device_added".to_string(), "laptop".to_string(), json!("k1")),
    ];
    assert_eq!(events_in_b, added_in_b, "each tenant has its own key-event log");
    let in_b = e2e_group(&s.app, &tokens[0], &["bob", "carol"]).await;
    let replay = send_envelope(&s.app, &tokens[0], &in_b, "m-1", &original).await;
    assert_error(&replay, StatusCode::FORBIDDEN, "invalid_signature");
    assert_eq!(last_seq(&s.app, &tokens[0], &in_b).await, 0);
    // Tenant A's conversation does not exist in B.
    let across = send_envelope(&s.app, &tokens[0], &s.conversation, "m-1", &original).await;
    assert_eq!(across.status, StatusCode::NOT_FOUND, "{}", across.text);
    // The same keys sealing for B are accepted there: only the binding differed.
    let ctx_b = context(&b.id, &in_b, "m-1", "alice", "phone");
    let own = seal(&ctx_b, s.alice.device("phone"), b"for tenant B", &all, &mut rand::rng());
    assert_eq!(send_envelope(&s.app, &tokens[0], &in_b, "m-1", &own).await.status, StatusCode::CREATED);

    // Another conversation of tenant A, same members.
    let other = e2e_group(&s.app, &s.alice.token, &["bob", "carol"]).await;
    let replay = send_envelope(&s.app, &s.alice.token, &other, "m-1", &original).await;
    assert_error(&replay, StatusCode::FORBIDDEN, "invalid_signature");
    assert_eq!(last_seq(&s.app, &s.alice.token, &other).await, 0);
    // Another member replaying it in the same conversation under their own name.
    let by_bob = send_envelope(&s.app, &s.bob.token, &s.conversation, "m-1", &original).await;
    assert!(by_bob.status.is_client_error(), "{}", by_bob.text);
    assert_eq!(s.last_seq().await, 1);
}

// ---------------------------------------------------------------------------------------------
// 9. Edits and deletes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_author_replaces_the_envelope_and_deletes_leave_a_tombstone() {
    let s = scene().await;
    let all = s.expected_recipients();
    let sent = s.send("m-1", &s.seal("m-1", b"first draft", &all)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);

    let replacement = s.seal("m-1", b"final text", &all);
    let edited = edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &replacement).await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.text);
    assert_eq!(edited.body["envelope"], json!(replacement));
    assert!(edited.body["edited_at"].is_string(), "{}", edited.text);
    assert!(edited.body["text"].is_null());
    assert_eq!(edited.body["seq"], 1);
    for (reader, keys) in
        [("bob", s.bob.device("laptop")), ("bob", s.bob.device("tablet")), ("carol", s.carol.device("phone"))]
    {
        let token = if reader == "bob" { &s.bob.token } else { &s.carol.token };
        let stored = envelope_of(&message_at(&s.app, token, &s.conversation, 1).await);
        assert_eq!(s.open_as(&stored, "m-1", reader, keys), b"final text");
    }
    assert_eq!(s.last_seq().await, 1, "an edit takes no seq");

    // Refusals leave the edited envelope in place.
    let by_bob = s.seal("m-1", b"bob was here", &all);
    let not_author = edit_envelope(&s.app, &s.bob.token, &s.conversation, 1, &by_bob).await;
    assert_error(&not_author, StatusCode::FORBIDDEN, "forbidden");
    let path = format!("{}/1", messages_path(&s.conversation));
    let text = s.app.call(Method::PATCH, &path, &s.alice.token, Some(json!({"text": "plain edit"}))).await;
    assert_error(&text, StatusCode::BAD_REQUEST, "invalid_request");
    let other_id = edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &s.seal("m-2", b"wrong id", &all)).await;
    assert_error(&other_id, StatusCode::FORBIDDEN, "invalid_signature");
    let short = edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &s.seal("m-1", b"short", &all[1..])).await;
    assert_mismatch(&short, &[("alice", "laptop")], &[]);
    let stored = envelope_of(&message_at(&s.app, &s.bob.token, &s.conversation, 1).await);
    assert_eq!(stored, replacement);

    // An envelope edit in a plain conversation is refused.
    let plain = s.app.conversation(&s.alice.token, "group", &["bob"]).await;
    assert_eq!(s.app.say(&s.alice.token, &plain, "plain").await.status, StatusCode::CREATED);
    let ctx = context(&s.tenant.id, &plain, "x", "alice", "phone");
    let into_plain = seal(&ctx, s.alice.device("phone"), b"x", &all, &mut rand::rng());
    let refused = edit_envelope(&s.app, &s.alice.token, &plain, 1, &into_plain).await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_request");

    // Delete: a tombstone without the envelope.
    let deleted = s.app.call(Method::DELETE, &path, &s.alice.token, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let tombstone = message_at(&s.app, &s.bob.token, &s.conversation, 1).await;
    assert_eq!(tombstone["deleted"], true);
    assert!(tombstone["envelope"].is_null(), "{tombstone}");
    assert!(tombstone["text"].is_null());
    assert_eq!(tombstone["seq"], 1);
    let listed = history(&s.app, &s.carol.token, &s.conversation).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["envelope"].is_null());
    let after = edit_envelope(&s.app, &s.alice.token, &s.conversation, 1, &replacement).await;
    assert_error(&after, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(s.last_seq().await, 1);
    let next = s.send("m-2", &s.seal("m-2", b"after the delete", &all)).await;
    assert_eq!(next.body["seq"], 2, "{}", next.text);
}

#[tokio::test]
async fn a_recipient_key_past_its_not_after_is_stale() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = person(&app, &tenant, "alice", &["phone"]).await;
    let bob_token = app.user(&tenant, "bob").await;
    let bob_keys = DeviceKeys::generate("laptop", "k1", &mut rand::rng());
    let short_lived = json!({
        "device_id": "laptop",
        "identity_key": b64(&bob_keys.identity_public()),
        "key": key_body(&tenant.id, "bob", &bob_keys, Utc::now() + Duration::seconds(2)),
    });
    assert_eq!(post_device(&app, &bob_token, short_lived).await.status, StatusCode::CREATED);
    let conversation = e2e_group(&app, &alice.token, &["bob"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let ctx = context(&tenant.id, &conversation, "late", "alice", "phone");
    let envelope = seal(&ctx, alice.device("phone"), b"too late", &[recipient("bob", &bob_keys)], &mut rand::rng());
    let reply = send_envelope(&app, &alice.token, &conversation, "late", &envelope).await;
    assert_error(&reply, StatusCode::GONE, "stale_keys");
    assert_eq!(reply.body["error"]["details"]["stale"][0]["device_id"], "laptop");
    assert!(reply.body["error"]["details"]["stale"][0]["current_key_id"].is_null());
    assert_eq!(last_seq(&app, &alice.token, &conversation).await, 0);
}
