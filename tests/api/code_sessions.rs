//! Code sessions over REST and sockets: sessions, members and roles (with the session's chat
//! following), the workspace tree and its limits, file content, forks, tenant isolation,
//! `workspace.changed` frames on `/v1/ws`, compaction and reload on a fresh node, and the auth
//! of the y-websocket upgrade.
//!
//! Negatives on sockets ("X is not sent") are proven with a marker: a chat message said after
//! the event in question. Each node has one Redis subscriber and each socket a FIFO outbox, so
//! an event published before the marker reaches a socket before the marker does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{ChatTenant, Reply, TestApp, assert_error, assert_invalid, spawn_app, spawn_app_with};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for a frame before failing.
const WAIT: Duration = Duration::from_secs(10);

/// A well-formed item id that names nothing.
const UNKNOWN: &str = "0190f0a0-0000-7000-8000-000000000001";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh tenant with alice, who owns a session named "demo".
struct Fixture {
    app: TestApp,
    tenant: ChatTenant,
    alice: String,
    session: Value,
}

impl Fixture {
    async fn new() -> Self {
        Self::on(spawn_app().await).await
    }

    async fn on(app: TestApp) -> Self {
        let tenant = app.chat_tenant().await;
        let alice = app.user(&tenant, "alice").await;
        let session = create_session(&app, &alice, json!({"name": "demo"})).await;
        Self { app, tenant, alice, session }
    }

    fn id(&self) -> &str {
        self.session["id"].as_str().unwrap()
    }

    /// Creates user `id` and adds them to the session with `role`; returns their token.
    async fn member(&self, id: &str, role: &str) -> String {
        let token = self.app.user(&self.tenant, id).await;
        let added = put_member(&self.app, &self.alice, self.id(), id, role).await;
        assert_eq!(added.status, StatusCode::OK, "{}", added.text);
        token
    }
}

async fn create_session(app: &TestApp, token: &str, body: Value) -> Value {
    let reply = app.call(Method::POST, "/v1/sessions", token, Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

async fn put_member(app: &TestApp, token: &str, session: &str, user: &str, role: &str) -> Reply {
    let path = format!("/v1/sessions/{session}/members/{user}");
    app.call(Method::PUT, &path, token, Some(json!({"role": role}))).await
}

async fn remove_member(app: &TestApp, token: &str, session: &str, user: &str) -> Reply {
    app.call(Method::DELETE, &format!("/v1/sessions/{session}/members/{user}"), token, None).await
}

async fn get_session(app: &TestApp, token: &str, session: &str) -> Reply {
    app.call(Method::GET, &format!("/v1/sessions/{session}"), token, None).await
}

async fn list_sessions(app: &TestApp, token: &str) -> Vec<Value> {
    app.collect_pages("/v1/sessions?limit=2", token, "after", 2).await
}

fn ids(items: &[Value]) -> BTreeSet<String> {
    items.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

/// `POST .../items`: the raw reply.
async fn try_create_item(
    app: &TestApp,
    token: &str,
    session: &str,
    parent: Option<&str>,
    name: &str,
    kind: &str,
    content: Option<&str>,
) -> Reply {
    let mut body = json!({"name": name, "kind": kind});
    if let Some(parent) = parent {
        body["parent_id"] = json!(parent);
    }
    if let Some(content) = content {
        body["content"] = json!(content);
    }
    app.call(Method::POST, &format!("/v1/sessions/{session}/items"), token, Some(body)).await
}

async fn folder(app: &TestApp, token: &str, session: &str, parent: Option<&str>, name: &str) -> Value {
    let reply = try_create_item(app, token, session, parent, name, "folder", None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

async fn file(app: &TestApp, token: &str, session: &str, parent: Option<&str>, name: &str, text: &str) -> Value {
    let reply = try_create_item(app, token, session, parent, name, "file", Some(text)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

fn id_of(item: &Value) -> &str {
    item["id"].as_str().unwrap()
}

async fn patch_item(app: &TestApp, token: &str, session: &str, item: &str, body: Value) -> Reply {
    app.call(Method::PATCH, &format!("/v1/sessions/{session}/items/{item}"), token, Some(body)).await
}

async fn delete_item(app: &TestApp, token: &str, session: &str, item: &str) -> Reply {
    app.call(Method::DELETE, &format!("/v1/sessions/{session}/items/{item}"), token, None).await
}

/// The tree's items as served (asserting 200).
async fn tree(app: &TestApp, token: &str, session: &str) -> Vec<Value> {
    let reply = app.call(Method::GET, &format!("/v1/sessions/{session}/items"), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().unwrap().clone()
}

/// The tree as `(path, kind)` in the order served.
async fn shape(app: &TestApp, token: &str, session: &str) -> Vec<(String, String)> {
    tree(app, token, session)
        .await
        .iter()
        .map(|i| (i["path"].as_str().unwrap().to_string(), i["kind"].as_str().unwrap().to_string()))
        .collect()
}

async fn paths(app: &TestApp, token: &str, session: &str) -> Vec<String> {
    shape(app, token, session).await.into_iter().map(|(path, _)| path).collect()
}

async fn get_content(app: &TestApp, token: &str, session: &str, item: &str) -> Reply {
    app.call(Method::GET, &format!("/v1/sessions/{session}/files/{item}/content"), token, None).await
}

/// The file's text (asserting 200 and a text/plain answer).
async fn text_of(app: &TestApp, token: &str, session: &str, item: &str) -> String {
    let reply = get_content(app, token, session, item).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let kind = reply.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(kind.starts_with("text/plain"), "content type {kind}");
    reply.text
}

async fn put_content(app: &TestApp, token: &str, session: &str, item: &str, body: impl Into<reqwest::Body>) -> Reply {
    let path = format!("/v1/sessions/{session}/files/{item}/content");
    app.send(app.request(Method::PUT, &path).bearer_auth(token).body(body)).await
}

/// Another node sharing `app`'s databases and Redis keys, with the same `extra` settings.
async fn node_like(app: &TestApp, extra: &[(&'static str, String)]) -> TestApp {
    let mut settings = vec![
        ("mongodb.db_prefix", app.db_prefix.clone()),
        ("redis.key_prefix", app.redis_prefix.clone()),
        ("auth.operator_token", app.operator_token.clone()),
    ];
    settings.extend(extra.iter().cloned());
    spawn_app_with(&settings).await
}

fn yjs_url(app: &TestApp, session: &str, item: &str, query: &str) -> String {
    format!("{}/v1/sessions/{session}/files/{item}/yjs{query}", app.address.replace("http://", "ws://"))
}

async fn open_yjs(app: &TestApp, token: &str, session: &str, item: &str, query: &str) -> Result<Socket, WsError> {
    let mut request = yjs_url(app, session, item, query).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket)
}

fn refused_with(result: Result<Socket, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the socket opened"),
    }
}

/// Reads until the server closes the socket; returns the close code and reason.
async fn close_of(socket: &mut Socket) -> (u16, String) {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next()).await.expect("the server closes in time");
        match frame {
            Some(Ok(Frame::Close(Some(close)))) => return (u16::from(close.code), close.reason.to_string()),
            Some(Ok(Frame::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            None => panic!("the stream ended without a close frame"),
        }
    }
}

async fn open_gateway(app: &TestApp, token: &str) -> Socket {
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("the gateway upgrades");
    let ready = next_json(&mut socket).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    socket
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Frame::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}

/// The `workspace.changed` frames read until one satisfies `last` (which is included).
async fn workspace_frames_until(socket: &mut Socket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = next_json(socket).await;
        let done = last(&frame);
        if frame["type"] == "workspace.changed" {
            seen.push(frame);
        }
        if done {
            return seen;
        }
    }
}

fn is_message(frame: &Value, text: &str) -> bool {
    frame["type"] == "message.new" && frame["message"]["text"] == text
}

// ---------------------------------------------------------------------------------------------
// 1. Sessions

#[tokio::test]
async fn a_new_session_has_defaults_an_owner_and_a_chat() {
    let f = Fixture::new().await;
    let s = &f.session;
    assert_eq!(s["my_role"], "owner");
    assert_eq!(s["name"], "demo");
    assert_eq!(s["language"], "python");
    assert_eq!(s["visibility"], "private");
    assert_eq!(s["owner_id"], "alice");
    assert_eq!(s["active"], true);
    assert_eq!(s["tags"], json!([]));
    assert_eq!(s["forked_from"], Value::Null);
    assert_eq!(s["description"], Value::Null);
    assert_eq!(s["item_count"], 0);
    let chat = s["conversation_id"].as_str().expect("conversation_id");
    assert!(!chat.is_empty());

    let got = get_session(&f.app, &f.alice, f.id()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["id"], s["id"]);
    assert_eq!(got.body["my_role"], "owner");
    assert_eq!(got.body["conversation_id"], chat);

    // The chat exists and alice is in it.
    let conversation = f.app.call(Method::GET, &format!("/v1/conversations/{chat}"), &f.alice, None).await;
    assert_eq!(conversation.status, StatusCode::OK, "{}", conversation.text);

    let full = create_session(
        &f.app,
        &f.alice,
        json!({"name": "rusty", "description": "d", "language": "rust", "visibility": "tenant", "tags": ["a", "b"]}),
    )
    .await;
    assert_eq!(full["language"], "rust");
    assert_eq!(full["visibility"], "tenant");
    assert_eq!(full["description"], "d");
    assert_eq!(full["tags"], json!(["a", "b"]));
    assert_ne!(full["conversation_id"], s["conversation_id"], "each session has its own chat");
}

#[tokio::test]
async fn sessions_are_listed_for_members_and_tenant_visibility_only() {
    let f = Fixture::new().await;
    let app = &f.app;
    let bob = app.user(&f.tenant, "bob").await;
    let carol = app.user(&f.tenant, "carol").await;
    let bob_private = create_session(app, &bob, json!({"name": "bob private"})).await;
    let bob_public = create_session(app, &bob, json!({"name": "bob public", "visibility": "tenant"})).await;
    let shared = create_session(app, &bob, json!({"name": "bob shares"})).await;
    let added = put_member(app, &bob, shared["id"].as_str().unwrap(), "alice", "editor").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text);

    let alice_sees = list_sessions(app, &f.alice).await;
    let expected: BTreeSet<String> =
        [&f.session, &bob_public, &shared].iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids(&alice_sees), expected);
    assert_eq!(alice_sees.len(), expected.len(), "no session is listed twice");
    let order: Vec<&str> = alice_sees.iter().map(|s| s["id"].as_str().unwrap()).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "listed in id order");

    let carol_sees = list_sessions(app, &carol).await;
    assert_eq!(ids(&carol_sees), BTreeSet::from([bob_public["id"].as_str().unwrap().to_string()]));

    let hidden = get_session(app, &f.alice, bob_private["id"].as_str().unwrap()).await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "not_found");
    let visible = get_session(app, &carol, bob_public["id"].as_str().unwrap()).await;
    assert_eq!(visible.status, StatusCode::OK, "{}", visible.text);
    assert_eq!(visible.body["my_role"], "viewer");
    let as_editor = get_session(app, &f.alice, shared["id"].as_str().unwrap()).await;
    assert_eq!(as_editor.body["my_role"], "editor");

    let bad_limit = app.call(Method::GET, "/v1/sessions?limit=0", &f.alice, None).await;
    assert_error(&bad_limit, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn owners_update_sessions_and_others_may_not() {
    let f = Fixture::new().await;
    let app = &f.app;
    let path = format!("/v1/sessions/{}", f.id());
    let first = app
        .call(Method::PATCH, &path, &f.alice, Some(json!({"name": "renamed", "description": "about", "tags": ["x"]})))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["name"], "renamed");
    assert_eq!(first.body["description"], "about");
    assert_eq!(first.body["tags"], json!(["x"]));

    let second =
        app.call(Method::PATCH, &path, &f.alice, Some(json!({"description": null, "active": false, "tags": []}))).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.body["description"], Value::Null, "null removes the description");
    assert_eq!(second.body["name"], "renamed", "absent fields are kept");
    assert_eq!(second.body["active"], false);
    assert_eq!(second.body["tags"], json!([]));
    let stored = get_session(app, &f.alice, f.id()).await;
    assert_eq!(stored.body["description"], Value::Null);
    assert_eq!(stored.body["active"], false);
    assert_eq!(stored.body["name"], "renamed");

    let bob = f.member("bob", "editor").await;
    let refused = app.call(Method::PATCH, &path, &bob, Some(json!({"name": "mine"}))).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let carol = app.user(&f.tenant, "carol").await;
    let hidden = app.call(Method::PATCH, &path, &carol, Some(json!({"name": "mine"}))).await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(get_session(app, &f.alice, f.id()).await.body["name"], "renamed");

    let empty = app.call(Method::PATCH, &path, &f.alice, Some(json!({"name": ""}))).await;
    assert_invalid(&empty, "name");
    let unknown = app.call(Method::PATCH, &path, &f.alice, Some(json!({"owner_id": "bob"}))).await;
    assert!(unknown.status.is_client_error(), "{}", unknown.text);
    assert_eq!(unknown.code(), "validation_failed", "{}", unknown.text);
    let visibility = app.call(Method::PATCH, &path, &f.alice, Some(json!({"visibility": "public"}))).await;
    assert_invalid(&visibility, "visibility");

    let no_name = app.call(Method::POST, "/v1/sessions", &f.alice, Some(json!({"name": ""}))).await;
    assert_invalid(&no_name, "name");
    let extra = app.call(Method::POST, "/v1/sessions", &f.alice, Some(json!({"name": "x", "color": "red"}))).await;
    assert!(extra.status.is_client_error(), "{}", extra.text);
    let missing = app.call(Method::POST, "/v1/sessions", &f.alice, Some(json!({}))).await;
    assert_error(&missing, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(missing.text.contains("name"), "{}", missing.text);
}

#[tokio::test]
async fn only_owners_delete_a_session_and_it_is_gone_with_its_tree() {
    let f = Fixture::new().await;
    let app = &f.app;
    let bob = f.member("bob", "editor").await;
    let src = folder(app, &f.alice, f.id(), None, "src").await;
    let main = file(app, &f.alice, f.id(), Some(id_of(&src)), "main.py", "x = 1\n").await;
    let path = format!("/v1/sessions/{}", f.id());

    let refused = app.call(Method::DELETE, &path, &bob, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(get_session(app, &f.alice, f.id()).await.status, StatusCode::OK);

    let deleted = app.call(Method::DELETE, &path, &f.alice, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    for token in [&f.alice, &bob] {
        assert_error(&get_session(app, token, f.id()).await, StatusCode::NOT_FOUND, "not_found");
        let items = app.call(Method::GET, &format!("{path}/items"), token, None).await;
        assert_error(&items, StatusCode::NOT_FOUND, "not_found");
        assert_error(&get_content(app, token, f.id(), id_of(&main)).await, StatusCode::NOT_FOUND, "not_found");
        assert!(!ids(&list_sessions(app, token).await).contains(f.id()));
    }
    let again = app.call(Method::DELETE, &path, &f.alice, None).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");

    let db = app.mongo().await.database(&app.tenant_db_name(&f.tenant.id));
    let left = db.collection::<Document>("workspace_items").count_documents(doc! {"session_id": f.id()}).await.unwrap();
    assert_eq!(left, 0, "the tree is deleted with the session");
    let docs =
        db.collection::<Document>("collab_updates").count_documents(doc! {"doc_id": id_of(&main)}).await.unwrap();
    assert_eq!(docs, 0, "the files' documents are deleted with the session");
}

// ---------------------------------------------------------------------------------------------
// 2. Members

#[tokio::test]
async fn owners_manage_members_and_roles() {
    let f = Fixture::new().await;
    let app = &f.app;
    let bob = f.member("bob", "editor").await;
    let carol = f.member("carol", "viewer").await;
    let dave = app.user(&f.tenant, "dave").await;

    let members = app.call(Method::GET, &format!("/v1/sessions/{}/members", f.id()), &carol, None).await;
    assert_eq!(members.status, StatusCode::OK, "{}", members.text);
    let roles: BTreeMap<String, String> = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().to_string(), m["role"].as_str().unwrap().to_string()))
        .collect();
    let expected: BTreeMap<String, String> =
        [("alice", "owner"), ("bob", "editor"), ("carol", "viewer")].map(|(u, r)| (u.into(), r.into())).into();
    assert_eq!(roles, expected);
    assert_eq!(get_session(app, &bob, f.id()).await.body["my_role"], "editor");
    assert_eq!(get_session(app, &carol, f.id()).await.body["my_role"], "viewer");
    let outsider = app.call(Method::GET, &format!("/v1/sessions/{}/members", f.id()), &dave, None).await;
    assert_error(&outsider, StatusCode::NOT_FOUND, "not_found");

    // Role change, and the same role again is a no-op.
    let promoted = put_member(app, &f.alice, f.id(), "carol", "editor").await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text);
    assert_eq!(promoted.body["role"], "editor");
    assert_eq!(put_member(app, &f.alice, f.id(), "carol", "editor").await.status, StatusCode::OK);
    assert_eq!(get_session(app, &carol, f.id()).await.body["my_role"], "editor");

    // Only owners add or remove others.
    assert_error(&put_member(app, &bob, f.id(), "dave", "viewer").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&put_member(app, &bob, f.id(), "carol", "owner").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove_member(app, &bob, f.id(), "carol").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&put_member(app, &dave, f.id(), "dave", "owner").await, StatusCode::NOT_FOUND, "not_found");

    // Unknown users and roles.
    assert_invalid(&put_member(app, &f.alice, f.id(), "ghost", "viewer").await, "user_id");
    assert_invalid(&put_member(app, &f.alice, f.id(), "dave", "admin").await, "role");
    let none = remove_member(app, &f.alice, f.id(), "dave").await;
    assert_error(&none, StatusCode::NOT_FOUND, "not_found");

    // The last owner can neither be demoted nor leave.
    assert_error(&put_member(app, &f.alice, f.id(), "alice", "editor").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&remove_member(app, &f.alice, f.id(), "alice").await, StatusCode::CONFLICT, "last_owner");
    assert_eq!(get_session(app, &f.alice, f.id()).await.body["my_role"], "owner");

    // With a second owner, alice may step down; bob is then the last owner.
    assert_eq!(put_member(app, &f.alice, f.id(), "bob", "owner").await.status, StatusCode::OK);
    let stepped_down = put_member(app, &f.alice, f.id(), "alice", "editor").await;
    assert_eq!(stepped_down.status, StatusCode::OK, "{}", stepped_down.text);
    assert_error(&put_member(app, &f.alice, f.id(), "bob", "editor").await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&remove_member(app, &bob, f.id(), "bob").await, StatusCode::CONFLICT, "last_owner");
    assert_error(&put_member(app, &bob, f.id(), "bob", "viewer").await, StatusCode::CONFLICT, "last_owner");

    // Anyone may leave.
    let left = remove_member(app, &carol, f.id(), "carol").await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "{}", left.text);
    assert_error(&get_session(app, &carol, f.id()).await, StatusCode::NOT_FOUND, "not_found");
    let alice_left = remove_member(app, &f.alice, f.id(), "alice").await;
    assert_eq!(alice_left.status, StatusCode::NO_CONTENT, "{}", alice_left.text);
    assert_error(&get_session(app, &f.alice, f.id()).await, StatusCode::NOT_FOUND, "not_found");
    let members = app.call(Method::GET, &format!("/v1/sessions/{}/members", f.id()), &bob, None).await;
    let remaining: Vec<&str> =
        members.body["items"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(remaining, ["bob"]);
}

#[tokio::test]
async fn the_sessions_chat_follows_its_membership() {
    let f = Fixture::new().await;
    let app = &f.app;
    let chat = f.session["conversation_id"].as_str().unwrap().to_string();
    let conversation = format!("/v1/conversations/{chat}");
    let messages = format!("{conversation}/messages");
    let bob = app.user(&f.tenant, "bob").await;
    let carol = app.user(&f.tenant, "carol").await;
    assert_error(&app.call(Method::GET, &conversation, &bob, None).await, StatusCode::NOT_FOUND, "not_found");

    assert_eq!(put_member(app, &f.alice, f.id(), "bob", "editor").await.status, StatusCode::OK);
    assert_eq!(put_member(app, &f.alice, f.id(), "carol", "viewer").await.status, StatusCode::OK);
    for token in [&bob, &carol] {
        let got = app.call(Method::GET, &conversation, token, None).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text);
        let listed = app.call(Method::GET, &messages, token, None).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    }
    let said = app.say(&f.alice, &chat, "hello session").await;
    assert_eq!(said.status, StatusCode::CREATED, "{}", said.text);
    let listed = app.call(Method::GET, &messages, &bob, None).await;
    assert!(listed.text.contains("hello session"), "{}", listed.text);
    let members = app.call(Method::GET, &format!("{conversation}/members"), &f.alice, None).await;
    for user in ["alice", "bob", "carol"] {
        assert!(members.text.contains(&format!("\"{user}\"")), "{user} in the chat: {}", members.text);
    }

    // A role change keeps the chat membership.
    assert_eq!(put_member(app, &f.alice, f.id(), "carol", "editor").await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, &conversation, &carol, None).await.status, StatusCode::OK);

    // Removed by an owner, or leaving: out of the chat too.
    assert_eq!(remove_member(app, &f.alice, f.id(), "bob").await.status, StatusCode::NO_CONTENT);
    assert_eq!(remove_member(app, &carol, f.id(), "carol").await.status, StatusCode::NO_CONTENT);
    for token in [&bob, &carol] {
        let got = app.call(Method::GET, &conversation, token, None).await;
        assert_error(&got, StatusCode::NOT_FOUND, "not_found");
        let listed = app.call(Method::GET, &messages, token, None).await;
        assert_eq!(listed.status, StatusCode::NOT_FOUND, "{}", listed.text);
    }
    assert_eq!(app.call(Method::GET, &conversation, &f.alice, None).await.status, StatusCode::OK);

    // Re-adding brings them back.
    assert_eq!(put_member(app, &f.alice, f.id(), "bob", "viewer").await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, &conversation, &bob, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn members_per_session_are_limited() {
    let f = Fixture::on(spawn_app_with(&[("collab.max_members", "2".into())]).await).await;
    f.member("bob", "viewer").await;
    f.app.user(&f.tenant, "carol").await;
    let refused = put_member(&f.app, &f.alice, f.id(), "carol", "viewer").await;
    assert_error(&refused, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(
        put_member(&f.app, &f.alice, f.id(), "bob", "editor").await.status,
        StatusCode::OK,
        "role changes still work"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The tree

#[tokio::test]
async fn the_tree_is_listed_by_path_and_follows_renames_and_moves() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let src = folder(app, alice, s, None, "src").await;
    assert_eq!(src["path"], "src");
    assert_eq!(src["parent_id"], Value::Null);
    assert_eq!(src["kind"], "folder");
    assert_eq!(src["session_id"], s);
    let lib = folder(app, alice, s, Some(id_of(&src)), "lib").await;
    assert_eq!(lib["path"], "src/lib");
    assert_eq!(lib["parent_id"], src["id"]);
    let util = file(app, alice, s, Some(id_of(&lib)), "util.py", "def f(): pass\n").await;
    assert_eq!(util["path"], "src/lib/util.py");
    assert_eq!(util["kind"], "file");
    assert_eq!(util["language"], "python");
    assert_eq!(util["size"], "def f(): pass\n".len());
    assert_eq!(util["last_modified_by"], "alice");
    let main = file(app, alice, s, Some(id_of(&src)), "main.rs", "").await;
    assert_eq!(main["language"], "rust");
    file(app, alice, s, None, "README.md", "# hi\n").await;
    let docs = folder(app, alice, s, None, "docs").await;

    let listed = shape(app, alice, s).await;
    let expected = [
        ("README.md", "file"),
        ("docs", "folder"),
        ("src", "folder"),
        ("src/lib", "folder"),
        ("src/lib/util.py", "file"),
        ("src/main.rs", "file"),
    ];
    assert_eq!(listed, expected.map(|(p, k)| (p.to_string(), k.to_string())));
    assert_eq!(get_session(app, alice, s).await.body["item_count"], 6);

    let got = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{}", id_of(&util)), alice, None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["path"], "src/lib/util.py");
    assert_eq!(got.body["parent_id"], lib["id"]);

    // Rename a file: its path and language follow.
    let renamed = patch_item(app, alice, s, id_of(&util), json!({"name": "helpers.js"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.body["path"], "src/lib/helpers.js");
    assert_eq!(renamed.body["language"], "javascript");
    assert_eq!(renamed.body["parent_id"], lib["id"], "a rename does not move");
    assert!(renamed.body["version"].as_i64().unwrap() > util["version"].as_i64().unwrap());

    // Move a folder: its children's paths change.
    let moved = patch_item(app, alice, s, id_of(&lib), json!({"parent_id": id_of(&docs)})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["path"], "docs/lib");
    assert_eq!(moved.body["name"], "lib");
    assert_eq!(
        paths(app, alice, s).await,
        ["README.md", "docs", "docs/lib", "docs/lib/helpers.js", "src", "src/main.rs"]
    );

    // Rename a folder: its children's paths change too.
    let renamed = patch_item(app, alice, s, id_of(&docs), json!({"name": "doc"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(paths(app, alice, s).await, ["README.md", "doc", "doc/lib", "doc/lib/helpers.js", "src", "src/main.rs"]);

    // Not into itself or its subtree.
    let into_self = patch_item(app, alice, s, id_of(&docs), json!({"parent_id": id_of(&docs)})).await;
    assert_invalid(&into_self, "parent_id");
    let into_child = patch_item(app, alice, s, id_of(&docs), json!({"parent_id": id_of(&lib)})).await;
    assert_invalid(&into_child, "parent_id");

    // Move and rename at once, then to the root with null.
    let both = patch_item(app, alice, s, id_of(&main), json!({"parent_id": id_of(&lib), "name": "app.rs"})).await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.text);
    assert_eq!(both.body["path"], "doc/lib/app.rs");
    let to_root = patch_item(app, alice, s, id_of(&lib), json!({"parent_id": null})).await;
    assert_eq!(to_root.status, StatusCode::OK, "{}", to_root.text);
    assert_eq!(to_root.body["parent_id"], Value::Null);
    assert_eq!(to_root.body["path"], "lib");
    assert_eq!(paths(app, alice, s).await, ["README.md", "doc", "lib", "lib/app.rs", "lib/helpers.js", "src"]);
    let unchanged = patch_item(app, alice, s, id_of(&lib), json!({})).await;
    assert_eq!(unchanged.status, StatusCode::OK, "{}", unchanged.text);
    assert_eq!(unchanged.body["path"], "lib", "an empty patch keeps the item where it is");

    // Contents survive renames and moves.
    assert_eq!(text_of(app, alice, s, id_of(&util)).await, "def f(): pass\n");

    let missing = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{UNKNOWN}"), alice, None).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let malformed = app.call(Method::GET, &format!("/v1/sessions/{s}/items/nope"), alice, None).await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn names_are_unique_per_folder_and_checked() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let src = folder(app, alice, s, None, "src").await;
    let other = folder(app, alice, s, None, "other").await;
    let main = file(app, alice, s, Some(id_of(&src)), "main.py", "").await;
    // Same name in different folders is fine.
    file(app, alice, s, None, "main.py", "").await;
    file(app, alice, s, Some(id_of(&other)), "main.py", "").await;

    let twice = try_create_item(app, alice, s, Some(id_of(&src)), "main.py", "file", None).await;
    assert_error(&twice, StatusCode::CONFLICT, "conflict");
    let folder_clash = try_create_item(app, alice, s, None, "src", "folder", None).await;
    assert_error(&folder_clash, StatusCode::CONFLICT, "conflict");
    let moved_onto = patch_item(app, alice, s, id_of(&main), json!({"parent_id": id_of(&other)})).await;
    assert_error(&moved_onto, StatusCode::CONFLICT, "conflict");
    let renamed_onto = patch_item(app, alice, s, id_of(&other), json!({"name": "src"})).await;
    assert_error(&renamed_onto, StatusCode::CONFLICT, "conflict");
    assert_eq!(get_session(app, alice, s).await.body["item_count"], 5, "refused creations take no slot");
    assert_eq!(
        paths(app, alice, s).await,
        ["main.py", "other", "other/main.py", "src", "src/main.py"],
        "refused changes change nothing"
    );

    let too_long = "x".repeat(256);
    for bad in ["", ".", "..", "a/b", "a\\b", " lead", "trail ", "tab\there", too_long.as_str()] {
        let created = try_create_item(app, alice, s, None, bad, "file", None).await;
        assert_invalid(&created, "name");
        let renamed = patch_item(app, alice, s, id_of(&main), json!({"name": bad})).await;
        assert_invalid(&renamed, "name");
    }
    let longest = "y".repeat(255);
    file(app, alice, s, None, &longest, "").await;
    file(app, alice, s, None, ".gitignore", "").await;

    // Parents must be folders of this session.
    let under_file = try_create_item(app, alice, s, Some(id_of(&main)), "x.py", "file", None).await;
    assert_invalid(&under_file, "parent_id");
    let move_under_file = patch_item(app, alice, s, id_of(&other), json!({"parent_id": id_of(&main)})).await;
    assert_invalid(&move_under_file, "parent_id");
    let unknown = try_create_item(app, alice, s, Some(UNKNOWN), "x.py", "file", None).await;
    assert_invalid(&unknown, "parent_id");
    let malformed = try_create_item(app, alice, s, Some("nope"), "x.py", "file", None).await;
    assert_invalid(&malformed, "parent_id");
    let elsewhere = create_session(app, alice, json!({"name": "elsewhere"})).await;
    let foreign = folder(app, alice, elsewhere["id"].as_str().unwrap(), None, "foreign").await;
    let cross = try_create_item(app, alice, s, Some(id_of(&foreign)), "x.py", "file", None).await;
    assert_invalid(&cross, "parent_id");
    let cross_move = patch_item(app, alice, s, id_of(&main), json!({"parent_id": id_of(&foreign)})).await;
    assert_invalid(&cross_move, "parent_id");
    let cross_item = patch_item(app, alice, s, id_of(&foreign), json!({"name": "stolen"})).await;
    assert_error(&cross_item, StatusCode::NOT_FOUND, "not_found");
    assert_error(&delete_item(app, alice, s, id_of(&foreign)).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        paths(app, alice, elsewhere["id"].as_str().unwrap()).await,
        ["foreign"],
        "an item is reachable only through its own session"
    );

    let folder_with_content = try_create_item(app, alice, s, None, "d", "folder", Some("x")).await;
    assert_invalid(&folder_with_content, "content");
    let bad_kind = try_create_item(app, alice, s, None, "d", "symlink", None).await;
    assert_invalid(&bad_kind, "kind");
}

#[tokio::test]
async fn nesting_depth_is_limited() {
    let f = Fixture::on(spawn_app_with(&[("collab.max_depth", "3".into())]).await).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let a = folder(app, alice, s, None, "a").await;
    let b = folder(app, alice, s, Some(id_of(&a)), "b").await;
    let c = folder(app, alice, s, Some(id_of(&b)), "c").await;
    assert_eq!(c["path"], "a/b/c");
    file(app, alice, s, Some(id_of(&b)), "ok.py", "").await;
    let too_deep = try_create_item(app, alice, s, Some(id_of(&c)), "deep.py", "file", None).await;
    assert_invalid(&too_deep, "parent_id");
    let too_deep_folder = try_create_item(app, alice, s, Some(id_of(&c)), "d", "folder", None).await;
    assert_invalid(&too_deep_folder, "parent_id");

    // A move counts the moved folder's subtree.
    let x = folder(app, alice, s, None, "x").await;
    folder(app, alice, s, Some(id_of(&x)), "y").await;
    let fits = patch_item(app, alice, s, id_of(&x), json!({"parent_id": id_of(&a)})).await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.text);
    assert_eq!(fits.body["path"], "a/x");
    let deeper = patch_item(app, alice, s, id_of(&x), json!({"parent_id": id_of(&b)})).await;
    assert_invalid(&deeper, "parent_id");
    assert!(paths(app, alice, s).await.contains(&"a/x/y".to_string()), "the refused move changed nothing");
}

#[tokio::test]
async fn items_per_session_are_limited_and_deletes_free_slots() {
    let f = Fixture::on(spawn_app_with(&[("collab.max_items_per_session", "5".into())]).await).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let src = folder(app, alice, s, None, "src").await;
    let lib = folder(app, alice, s, Some(id_of(&src)), "lib").await;
    let util = file(app, alice, s, Some(id_of(&lib)), "util.py", "u = 1\n").await;
    let main = file(app, alice, s, None, "main.py", "print(1)\n").await;
    file(app, alice, s, None, "README.md", "").await;
    assert_eq!(get_session(app, alice, s).await.body["item_count"], 5);

    let full = try_create_item(app, alice, s, None, "one-too-many.py", "file", None).await;
    assert_error(&full, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(full.body["error"]["details"]["limit"], "max_items_per_session", "{}", full.text);
    assert_eq!(full.body["error"]["details"]["value"], 5, "{}", full.text);
    assert_error(
        &try_create_item(app, alice, s, None, "again", "folder", None).await,
        StatusCode::CONFLICT,
        "limit_reached",
    );

    // Deleting a folder takes its subtree and frees every slot.
    let deleted = delete_item(app, alice, s, id_of(&src)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(paths(app, alice, s).await, ["README.md", "main.py"]);
    assert_eq!(get_session(app, alice, s).await.body["item_count"], 2);
    for id in [&src, &lib, &util] {
        let gone = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{}", id_of(id)), alice, None).await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
    }
    assert_error(&get_content(app, alice, s, id_of(&util)).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&delete_item(app, alice, s, id_of(&src)).await, StatusCode::NOT_FOUND, "not_found");
    let db = app.mongo().await.database(&app.tenant_db_name(&f.tenant.id));
    let stored =
        db.collection::<Document>("collab_updates").count_documents(doc! {"doc_id": id_of(&util)}).await.unwrap();
    assert_eq!(stored, 0, "a deleted file's document is deleted");
    assert_eq!(text_of(app, alice, s, id_of(&main)).await, "print(1)\n", "siblings outside the folder stay");

    for name in ["a", "b", "c"] {
        folder(app, alice, s, None, name).await;
    }
    let full = try_create_item(app, alice, s, None, "d", "folder", None).await;
    assert_error(&full, StatusCode::CONFLICT, "limit_reached");

    // A file deletes alone, and a re-created name starts empty.
    assert_eq!(delete_item(app, alice, s, id_of(&main)).await.status, StatusCode::NO_CONTENT);
    let again = try_create_item(app, alice, s, None, "main.py", "file", None).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(text_of(app, alice, s, id_of(&again.body)).await, "");
}

#[tokio::test]
async fn file_content_is_read_and_replaced_as_text() {
    let f = Fixture::on(spawn_app_with(&[("collab.max_file_bytes", "64".into())]).await).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let main = file(app, alice, s, None, "main.py", "print('hi')\n").await;
    let id = id_of(&main);
    let got = get_content(app, alice, s, id).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(got.text, "print('hi')\n");

    let replaced = put_content(app, alice, s, id, "print('bye')\n").await;
    assert_eq!(replaced.status, StatusCode::NO_CONTENT, "{}", replaced.text);
    assert_eq!(text_of(app, alice, s, id).await, "print('bye')\n");
    let item = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{id}"), alice, None).await;
    assert_eq!(item.body["size"], "print('bye')\n".len(), "{}", item.text);
    assert!(item.body["version"].as_i64().unwrap() > main["version"].as_i64().unwrap());

    // Non-ASCII text in several steps (prefix/suffix-preserving edits at char boundaries).
    for text in ["héllo wörld", "héllo wörld 🎉", "hi 🎉 wörld", "ü", "", "日本語のテキスト", "日本語 text"]
    {
        let put = put_content(app, alice, s, id, text).await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text);
        assert_eq!(text_of(app, alice, s, id).await, text);
    }
    let same = put_content(app, alice, s, id, "日本語 text").await;
    assert_eq!(same.status, StatusCode::NO_CONTENT, "an unchanged text is accepted");

    // Limits.
    let exact = "e".repeat(64);
    assert_eq!(put_content(app, alice, s, id, exact.clone()).await.status, StatusCode::NO_CONTENT);
    let too_big = put_content(app, alice, s, id, "x".repeat(65)).await;
    assert_error(&too_big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(too_big.body["error"]["details"]["limit"], "max_file_bytes", "{}", too_big.text);
    assert_eq!(text_of(app, alice, s, id).await, exact, "a refused write changes nothing");
    let big_file = try_create_item(app, alice, s, None, "big.py", "file", Some(&"x".repeat(65))).await;
    assert_error(&big_file, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let not_utf8 = put_content(app, alice, s, id, vec![0xff, 0xfe, 0x00]).await;
    assert_invalid(&not_utf8, "body");

    // A file created without content is empty; folders have no content.
    let empty = try_create_item(app, alice, s, None, "empty.py", "file", None).await;
    assert_eq!(text_of(app, alice, s, id_of(&empty.body)).await, "");
    let dir = folder(app, alice, s, None, "dir").await;
    assert_invalid(&get_content(app, alice, s, id_of(&dir)).await, "item_id");
    assert_invalid(&put_content(app, alice, s, id_of(&dir), "x").await, "item_id");
    let unknown = get_content(app, alice, s, UNKNOWN).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 4. Roles

#[tokio::test]
async fn viewers_read_but_never_change_and_outsiders_see_nothing() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let src = folder(app, alice, s, None, "src").await;
    let main = file(app, alice, s, Some(id_of(&src)), "main.py", "print(1)\n").await;
    let (src, main) = (id_of(&src), id_of(&main));
    let viewer = f.member("vic", "viewer").await;
    let editor = f.member("eddie", "editor").await;
    let outsider = app.user(&f.tenant, "olga").await;

    // Viewers read.
    assert_eq!(paths(app, &viewer, s).await, ["src", "src/main.py"]);
    let item = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{main}"), &viewer, None).await;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text);
    assert_eq!(text_of(app, &viewer, s, main).await, "print(1)\n");

    // Viewers change nothing.
    let forbidden = [
        try_create_item(app, &viewer, s, None, "x.py", "file", None).await,
        try_create_item(app, &viewer, s, Some(src), "x", "folder", None).await,
        patch_item(app, &viewer, s, main, json!({"name": "renamed.py"})).await,
        patch_item(app, &viewer, s, main, json!({"parent_id": null})).await,
        delete_item(app, &viewer, s, main).await,
        delete_item(app, &viewer, s, src).await,
        put_content(app, &viewer, s, main, "hacked").await,
        put_member(app, &viewer, s, "olga", "viewer").await,
    ];
    for reply in &forbidden {
        assert_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(paths(app, alice, s).await, ["src", "src/main.py"]);
    assert_eq!(text_of(app, alice, s, main).await, "print(1)\n");
    assert_eq!(get_session(app, alice, s).await.body["item_count"], 2);

    // Editors change the tree and content, but not the session or its members.
    assert_eq!(
        try_create_item(app, &editor, s, Some(src), "e.py", "file", Some("e")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(put_content(app, &editor, s, main, "print(2)\n").await.status, StatusCode::NO_CONTENT);
    let by = app.call(Method::GET, &format!("/v1/sessions/{s}/items/{main}"), alice, None).await;
    assert_eq!(by.body["last_modified_by"], "eddie", "{}", by.text);

    // Outsiders of a private session: 404 everywhere, as if it did not exist.
    let not_found = [
        get_session(app, &outsider, s).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/items"), &outsider, None).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/items/{main}"), &outsider, None).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/members"), &outsider, None).await,
        try_create_item(app, &outsider, s, None, "x.py", "file", None).await,
        patch_item(app, &outsider, s, main, json!({"name": "x.py"})).await,
        delete_item(app, &outsider, s, main).await,
        get_content(app, &outsider, s, main).await,
        put_content(app, &outsider, s, main, "hacked").await,
        app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), &outsider, None).await,
        app.call(Method::DELETE, &format!("/v1/sessions/{s}"), &outsider, None).await,
    ];
    for reply in &not_found {
        assert_error(reply, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(refused_with(open_yjs(app, &outsider, s, main, "").await), 404);
    assert_eq!(text_of(app, alice, s, main).await, "print(2)\n");

    // A tenant-visible session: everyone reads as a viewer, and changes nothing.
    let update =
        app.call(Method::PATCH, &format!("/v1/sessions/{s}"), alice, Some(json!({"visibility": "tenant"}))).await;
    assert_eq!(update.status, StatusCode::OK, "{}", update.text);
    assert_eq!(get_session(app, &outsider, s).await.body["my_role"], "viewer");
    assert_eq!(text_of(app, &outsider, s, main).await, "print(2)\n");
    assert_eq!(paths(app, &outsider, s).await, ["src", "src/e.py", "src/main.py"]);
    assert_error(
        &try_create_item(app, &outsider, s, None, "x.py", "file", None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(&put_content(app, &outsider, s, main, "hacked").await, StatusCode::FORBIDDEN, "forbidden");
    let mut socket = open_yjs(app, &outsider, s, main, "").await.expect("a tenant reader opens the document");
    let hello = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(hello, Frame::Binary(ref b) if b.starts_with(&[0, 0])), "sync step 1 first: {hello:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Tenant isolation

#[tokio::test]
async fn another_tenant_cannot_reach_sessions_or_items_even_with_the_same_user_ids() {
    let app = spawn_app().await;
    let a = Fixture::on(app).await;
    let app = &a.app;
    let s = a.id();
    let make_visible =
        app.call(Method::PATCH, &format!("/v1/sessions/{s}"), &a.alice, Some(json!({"visibility": "tenant"}))).await;
    assert_eq!(make_visible.status, StatusCode::OK);
    let src = folder(app, &a.alice, s, None, "src").await;
    let main = file(app, &a.alice, s, Some(id_of(&src)), "main.py", "secret\n").await;
    let (src, main) = (id_of(&src), id_of(&main));

    let tenant_b = app.chat_tenant().await;
    let alice_b = app.user(&tenant_b, "alice").await;
    app.user(&tenant_b, "bob").await;
    let own = create_session(app, &alice_b, json!({"name": "b's own"})).await;
    let own = own["id"].as_str().unwrap();

    assert_eq!(ids(&list_sessions(app, &alice_b).await), BTreeSet::from([own.to_string()]));
    let not_found = [
        get_session(app, &alice_b, s).await,
        app.call(Method::PATCH, &format!("/v1/sessions/{s}"), &alice_b, Some(json!({"name": "x"}))).await,
        app.call(Method::DELETE, &format!("/v1/sessions/{s}"), &alice_b, None).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/members"), &alice_b, None).await,
        put_member(app, &alice_b, s, "bob", "owner").await,
        remove_member(app, &alice_b, s, "alice").await,
        app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), &alice_b, None).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/items"), &alice_b, None).await,
        app.call(Method::GET, &format!("/v1/sessions/{s}/items/{main}"), &alice_b, None).await,
        try_create_item(app, &alice_b, s, Some(src), "x.py", "file", None).await,
        patch_item(app, &alice_b, s, main, json!({"name": "x.py"})).await,
        delete_item(app, &alice_b, s, src).await,
        get_content(app, &alice_b, s, main).await,
        put_content(app, &alice_b, s, main, "stolen").await,
        // A's item ids under B's own session.
        app.call(Method::GET, &format!("/v1/sessions/{own}/items/{main}"), &alice_b, None).await,
        get_content(app, &alice_b, own, main).await,
        put_content(app, &alice_b, own, main, "stolen").await,
        patch_item(app, &alice_b, own, main, json!({"name": "x.py"})).await,
        delete_item(app, &alice_b, own, main).await,
    ];
    for reply in &not_found {
        assert_error(reply, StatusCode::NOT_FOUND, "not_found");
    }
    assert_invalid(&try_create_item(app, &alice_b, own, Some(src), "x.py", "file", None).await, "parent_id");
    assert_eq!(refused_with(open_yjs(app, &alice_b, s, main, "").await), 404);
    assert_eq!(refused_with(open_yjs(app, &alice_b, own, main, "").await), 404);

    // Tenant A is untouched.
    assert_eq!(text_of(app, &a.alice, s, main).await, "secret\n");
    assert_eq!(paths(app, &a.alice, s).await, ["src", "src/main.py"]);
    let members = app.call(Method::GET, &format!("/v1/sessions/{s}/members"), &a.alice, None).await;
    assert_eq!(members.body["items"].as_array().unwrap().len(), 1, "{}", members.text);
    assert_eq!(get_session(app, &a.alice, s).await.body["name"], "demo");
}

// ---------------------------------------------------------------------------------------------
// 6. Fork

#[tokio::test]
async fn a_fork_copies_the_tree_and_texts_and_then_lives_on_its_own() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let update = app
        .call(Method::PATCH, &format!("/v1/sessions/{s}"), alice, Some(json!({"description": "orig", "tags": ["t"]})))
        .await;
    assert_eq!(update.status, StatusCode::OK);
    let src = folder(app, alice, s, None, "src").await;
    let lib = folder(app, alice, s, Some(id_of(&src)), "lib").await;
    let util = file(app, alice, s, Some(id_of(&lib)), "util.py", "def util(): ...\n").await;
    let main = file(app, alice, s, Some(id_of(&src)), "main.py", "v1\n").await;
    file(app, alice, s, None, "empty.txt", "").await;
    folder(app, alice, s, None, "docs").await;
    // The fork takes the current text, including edits since creation.
    assert_eq!(put_content(app, alice, s, id_of(&main), "import lib\nv2\n").await.status, StatusCode::NO_CONTENT);
    let viewer = f.member("vic", "viewer").await;

    let forked = app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), &viewer, None).await;
    assert_eq!(forked.status, StatusCode::CREATED, "{}", forked.text);
    let fork = forked.body;
    let fs = fork["id"].as_str().unwrap();
    assert_ne!(fs, s);
    assert_eq!(fork["forked_from"], s);
    assert_eq!(fork["owner_id"], "vic");
    assert_eq!(fork["my_role"], "owner");
    assert_eq!(fork["name"], "demo (fork)");
    assert_eq!(fork["visibility"], "private");
    assert_eq!(fork["description"], "orig");
    assert_eq!(fork["tags"], json!(["t"]));
    assert_eq!(fork["item_count"], 6);
    assert_ne!(fork["conversation_id"], f.session["conversation_id"], "the fork has its own chat");
    let got = get_session(app, &viewer, fs).await;
    assert_eq!(got.body["forked_from"], s, "{}", got.text);
    assert_eq!(got.body["my_role"], "owner");
    assert_eq!(got.body["item_count"], 6);

    let original_tree = tree(app, alice, s).await;
    let fork_tree = tree(app, &viewer, fs).await;
    let shape_of = |items: &[Value]| -> Vec<(Value, Value, Value)> {
        items.iter().map(|i| (i["path"].clone(), i["kind"].clone(), i["language"].clone())).collect()
    };
    assert_eq!(shape_of(&fork_tree), shape_of(&original_tree));
    assert!(ids(&fork_tree).is_disjoint(&ids(&original_tree)), "the fork's items have new ids");
    assert!(fork_tree.iter().all(|i| i["session_id"] == fs));
    let by_path: BTreeMap<String, Value> =
        fork_tree.iter().map(|i| (i["path"].as_str().unwrap().to_string(), i.clone())).collect();
    // Parent links point into the fork.
    assert_eq!(by_path["src/lib"]["parent_id"], by_path["src"]["id"]);
    assert_eq!(by_path["src/lib/util.py"]["parent_id"], by_path["src/lib"]["id"]);
    for original in original_tree.iter().filter(|i| i["kind"] == "file") {
        let copy = &by_path[original["path"].as_str().unwrap()];
        assert_eq!(
            text_of(app, &viewer, fs, id_of(copy)).await,
            text_of(app, alice, s, id_of(original)).await,
            "{}",
            original["path"]
        );
    }
    assert_eq!(text_of(app, &viewer, fs, id_of(&by_path["src/main.py"])).await, "import lib\nv2\n");

    // The forker owns the fork; the original's owner is not in it, and the viewer still only views.
    assert_error(&get_session(app, alice, fs).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&put_content(app, &viewer, s, id_of(&main), "x").await, StatusCode::FORBIDDEN, "forbidden");

    // Editing the fork does not touch the original, and the other way round.
    let fork_main = id_of(&by_path["src/main.py"]);
    assert_eq!(put_content(app, &viewer, fs, fork_main, "forked edit\n").await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        patch_item(app, &viewer, fs, id_of(&by_path["src/lib"]), json!({"name": "library"})).await.status,
        StatusCode::OK
    );
    assert_eq!(delete_item(app, &viewer, fs, id_of(&by_path["docs"])).await.status, StatusCode::NO_CONTENT);
    assert_eq!(try_create_item(app, &viewer, fs, None, "new.py", "file", None).await.status, StatusCode::CREATED);
    assert_eq!(text_of(app, alice, s, id_of(&main)).await, "import lib\nv2\n");
    assert_eq!(shape_of(&tree(app, alice, s).await), shape_of(&original_tree));
    assert_eq!(put_content(app, alice, s, id_of(&util), "changed upstream\n").await.status, StatusCode::NO_CONTENT);
    assert_eq!(text_of(app, &viewer, fs, id_of(&by_path["src/lib/util.py"])).await, "def util(): ...\n");
    assert_eq!(text_of(app, &viewer, fs, fork_main).await, "forked edit\n");
    assert_eq!(
        paths(app, &viewer, fs).await,
        ["empty.txt", "new.py", "src", "src/library", "src/library/util.py", "src/main.py"]
    );

    // A reader of a tenant-visible session may fork it too.
    let carol = app.user(&f.tenant, "carol").await;
    let visible =
        app.call(Method::PATCH, &format!("/v1/sessions/{s}"), alice, Some(json!({"visibility": "tenant"}))).await;
    assert_eq!(visible.status, StatusCode::OK);
    let by_reader = app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), &carol, None).await;
    assert_eq!(by_reader.status, StatusCode::CREATED, "{}", by_reader.text);
    assert_eq!(by_reader.body["owner_id"], "carol");
    assert_eq!(by_reader.body["visibility"], "private", "a fork starts private");
    let carol_fork = by_reader.body["id"].as_str().unwrap();
    let main_copy = tree(app, &carol, carol_fork).await.into_iter().find(|i| i["path"] == "src/main.py").unwrap();
    assert_eq!(text_of(app, &carol, carol_fork, id_of(&main_copy)).await, "import lib\nv2\n");

    // A named fork, and a fork of a fork.
    let named = app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), alice, Some(json!({"name": "mine"}))).await;
    assert_eq!(named.status, StatusCode::CREATED, "{}", named.text);
    assert_eq!(named.body["name"], "mine");
    assert_eq!(named.body["owner_id"], "alice");
    let again = app.call(Method::POST, &format!("/v1/sessions/{fs}/fork"), &viewer, None).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["forked_from"], fs);
    assert_eq!(again.body["name"], "demo (fork) (fork)");
    let bad = app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), alice, Some(json!({"name": ""}))).await;
    assert_invalid(&bad, "name");
}

#[tokio::test]
async fn a_fork_respects_the_item_limit() {
    let f = Fixture::on(spawn_app_with(&[("collab.max_items_per_session", "3".into())]).await).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    for name in ["a", "b", "c"] {
        folder(app, alice, s, None, name).await;
    }
    let forked = app.call(Method::POST, &format!("/v1/sessions/{s}/fork"), alice, None).await;
    assert_eq!(forked.status, StatusCode::CREATED, "{}", forked.text);
    assert_eq!(forked.body["item_count"], 3);
    let fs = forked.body["id"].as_str().unwrap();
    assert_eq!(paths(app, alice, fs).await, ["a", "b", "c"]);
    let full = try_create_item(app, alice, fs, None, "d", "folder", None).await;
    assert_error(&full, StatusCode::CONFLICT, "limit_reached");
}

/// A tree over the limit of the node forking it (here: lowered since the tree was made) is
/// refused before anything is made: no half-made session is left behind.
#[tokio::test]
async fn a_fork_over_the_item_limit_leaves_nothing_behind() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    for name in ["a", "b", "c", "d"] {
        folder(app, alice, s, None, name).await;
    }
    let strict = app.second_node_with(&[("collab.max_items_per_session", "3".into())]).await;
    let forked = strict.call(Method::POST, &format!("/v1/sessions/{s}/fork"), alice, None).await;
    assert_error(&forked, StatusCode::CONFLICT, "limit_reached");
    assert_eq!(forked.body["error"]["details"], json!({"limit": "max_items_per_session", "value": 3}));
    assert_eq!(ids(&list_sessions(app, alice).await), BTreeSet::from([s.to_string()]), "no half-made fork");
}

// ---------------------------------------------------------------------------------------------
// 7. workspace.changed on /v1/ws

#[tokio::test]
async fn members_sockets_hear_workspace_changes_and_others_do_not() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let bob = f.member("bob", "viewer").await;
    let carol = app.user(&f.tenant, "carol").await;
    // Markers: direct chats alice shares with bob and carol, outside the session.
    let bob_dm = app.conversation(alice, "direct", &["bob"]).await;
    let carol_dm = app.conversation(alice, "direct", &["carol"]).await;
    let mut bob_socket = open_gateway(app, &bob).await;
    let mut carol_socket = open_gateway(app, &carol).await;

    let src = folder(app, alice, s, None, "src").await;
    let main = file(app, alice, s, Some(id_of(&src)), "main.py", "x").await;
    let renamed = patch_item(app, alice, s, id_of(&main), json!({"name": "app.py"})).await;
    assert_eq!(renamed.status, StatusCode::OK);
    let moved = patch_item(app, alice, s, id_of(&main), json!({"parent_id": null})).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(delete_item(app, alice, s, id_of(&src)).await.status, StatusCode::NO_CONTENT);
    // Content changes are not tree changes.
    assert_eq!(put_content(app, alice, s, id_of(&main), "y").await.status, StatusCode::NO_CONTENT);
    assert_eq!(delete_item(app, alice, s, id_of(&main)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.say(alice, &bob_dm, "marker").await.status, StatusCode::CREATED);
    assert_eq!(app.say(alice, &carol_dm, "marker").await.status, StatusCode::CREATED);

    let heard = workspace_frames_until(&mut bob_socket, |frame| is_message(frame, "marker")).await;
    let event = |change: &str, item: &Value, path: &str, kind: &str| {
        json!({"type": "workspace.changed", "session_id": s, "change": change, "item_id": item["id"],
               "path": path, "kind": kind, "by": "alice"})
    };
    assert_eq!(
        heard,
        vec![
            event("created", &src, "src", "folder"),
            event("created", &main, "src/main.py", "file"),
            event("updated", &main, "src/app.py", "file"),
            event("updated", &main, "app.py", "file"),
            event("deleted", &src, "src", "folder"),
            event("deleted", &main, "app.py", "file"),
        ]
    );
    let carol_heard = workspace_frames_until(&mut carol_socket, |frame| is_message(frame, "marker")).await;
    assert_eq!(carol_heard, Vec::<Value>::new(), "non-members hear nothing");

    // Once removed, bob's socket stops hearing the session.
    assert_eq!(remove_member(app, alice, s, "bob").await.status, StatusCode::NO_CONTENT);
    folder(app, alice, s, None, "after").await;
    assert_eq!(app.say(alice, &bob_dm, "marker 2").await.status, StatusCode::CREATED);
    let after = workspace_frames_until(&mut bob_socket, |frame| is_message(frame, "marker 2")).await;
    assert_eq!(after, Vec::<Value>::new(), "a removed member hears nothing more");

    // Added while connected: the socket starts hearing the session.
    assert_eq!(put_member(app, alice, s, "carol", "editor").await.status, StatusCode::OK);
    let docs = folder(app, &carol, s, None, "docs").await;
    let heard = workspace_frames_until(&mut carol_socket, |frame| frame["type"] == "workspace.changed").await;
    assert_eq!(
        heard,
        vec![json!({"type": "workspace.changed", "session_id": s, "change": "created", "item_id": docs["id"],
                    "path": "docs", "kind": "folder", "by": "carol"})]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Compaction and reload

#[tokio::test]
async fn edits_are_compacted_into_snapshots_and_a_fresh_node_serves_the_latest_text() {
    let first = spawn_app_with(&[("collab.snapshot_every", "5".into())]).await;
    let f = Fixture::on(first).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let main = file(app, alice, s, None, "main.py", "edit 0\n").await;
    let id = id_of(&main);
    let edits: u64 = 12;
    let mut expected = String::new();
    for n in 1..=edits {
        expected = (1..=n).map(|k| format!("edit {k}\n")).collect();
        let put = put_content(app, alice, s, id, expected.clone()).await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text);
    }
    assert_eq!(text_of(app, alice, s, id).await, expected);

    let db = app.mongo().await.database(&app.tenant_db_name(&f.tenant.id));
    let snapshots = db.collection::<Document>("collab_snapshots");
    let updates = db.collection::<Document>("collab_updates");
    let mut state = (0, u64::MAX);
    for _ in 0..100 {
        state = (
            snapshots.count_documents(doc! {"doc_id": id}).await.unwrap(),
            updates.count_documents(doc! {"doc_id": id}).await.unwrap(),
        );
        if state.0 >= 1 && state.1 < edits {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (snapshot_count, update_count) = state;
    assert!(snapshot_count >= 1, "a snapshot is stored after {edits} edits");
    assert!(update_count < edits, "compaction deleted covered updates: {update_count} left of {edits}");
    let newest =
        snapshots.find_one(doc! {"doc_id": id}).sort(doc! {"upto_seq": -1}).await.unwrap().expect("a snapshot");
    let upto = newest.get_i64("upto_seq").unwrap();
    assert!(upto >= 5, "{newest:?}");
    assert_eq!(newest.get_i64("epoch").unwrap(), 1);
    let covered = updates.count_documents(doc! {"doc_id": id, "seq": {"$lte": upto}}).await.unwrap();
    assert_eq!(covered, 0, "no update the snapshot covers is kept");

    // A node that never held the document loads snapshot + later updates from MongoDB.
    let fresh = app.second_node().await;
    assert_eq!(text_of(&fresh, alice, s, id).await, expected);
    // And keeps going from there.
    let more = format!("{expected}edit {}\n", edits + 1);
    assert_eq!(put_content(&fresh, alice, s, id, more.clone()).await.status, StatusCode::NO_CONTENT);
    let third = app.second_node().await;
    assert_eq!(text_of(&third, alice, s, id).await, more);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = text_of(app, alice, s, id).await;
        if seen == more {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, more, "the first node learns of the other node's edit");
}

// ---------------------------------------------------------------------------------------------
// 9. The y-websocket upgrade

#[tokio::test]
async fn the_yjs_upgrade_checks_the_token_the_item_and_the_epoch() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let main = file(app, alice, s, None, "main.py", "print(1)\n").await;
    let dir = folder(app, alice, s, None, "dir").await;
    let id = id_of(&main);
    assert_eq!(main["epoch"], 1);

    assert_eq!(refused_with(open_yjs(app, "not-a-token", s, id, "").await), 401);
    let anonymous = tokio_tungstenite::connect_async(yjs_url(app, s, id, "")).await.map(|(socket, _)| socket);
    assert_eq!(refused_with(anonymous), 401);
    assert_eq!(refused_with(open_yjs(app, alice, s, id_of(&dir), "").await), 422, "folders have no document");
    assert_eq!(refused_with(open_yjs(app, alice, s, UNKNOWN, "").await), 404);
    assert_eq!(refused_with(open_yjs(app, alice, s, "nope", "").await), 400);

    // A stale epoch: the socket opens, then closes with 4409 before any document frame.
    let mut stale = open_yjs(app, alice, s, id, "?epoch=7").await.expect("the upgrade succeeds");
    let first = tokio::time::timeout(WAIT, stale.next()).await.expect("a frame").expect("open").expect("valid");
    match first {
        Frame::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 4409);
            assert_eq!(close.reason.as_str(), "epoch_changed");
        }
        other => panic!("expected a 4409 close first, got {other:?}"),
    }

    // The current epoch: sync step 1 (message 0, sync type 0) comes first.
    let mut current = open_yjs(app, alice, s, id, "?epoch=1").await.expect("the upgrade succeeds");
    let hello = tokio::time::timeout(WAIT, current.next()).await.expect("a frame").expect("open").expect("valid");
    assert!(matches!(hello, Frame::Binary(ref b) if b.starts_with(&[0, 0])), "sync step 1 first: {hello:?}");

    // Deleting the file closes its live sockets with 4409.
    assert_eq!(delete_item(app, alice, s, id).await.status, StatusCode::NO_CONTENT);
    let (code, reason) = close_of(&mut current).await;
    assert_eq!(code, 4409, "{reason}");
    assert_eq!(refused_with(open_yjs(app, alice, s, id, "").await), 404);
}

/// A y-websocket update message carrying `update`.
fn sync_update(update: Vec<u8>) -> Frame {
    use yrs::updates::encoder::Encode;
    Frame::binary(yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update)).encode_v1())
}

/// Applies the updates `socket` is relayed to `doc` until its text is `expected`.
async fn follow_until(socket: &mut Socket, doc: &yrs::Doc, expected: &str) {
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Transact};
    let text = doc.get_or_insert_text("content");
    while text.get_string(&doc.transact()) != expected {
        let frame = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").expect("open").unwrap();
        let Frame::Binary(bytes) = frame else { continue };
        if let Ok(yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update))) =
            yrs::sync::Message::decode_v1(&bytes)
        {
            doc.transact_mut().apply_update(yrs::Update::decode_v1(&update).unwrap()).unwrap();
        }
    }
}

/// Edits written in one burst reach the room together and are applied as one batch: every one
/// lands, in order, for REST readers, for another editor (relayed one by one) and in MongoDB (a
/// node that never held the document loads them). An update that does not decode closes its
/// socket with 4400; the edits before it stay.
#[tokio::test]
async fn a_burst_of_edits_is_applied_relayed_and_stored_and_a_bad_update_closes_only_its_socket() {
    use futures_util::SinkExt;
    use yrs::{Text, Transact};
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let item = file(app, alice, s, None, "burst.txt", "").await;
    let id = id_of(&item);
    let mut watcher = open_yjs(app, alice, s, id, "").await.expect("the watcher connects");
    let mut writer = open_yjs(app, alice, s, id, "").await.expect("the writer connects");

    let author = yrs::Doc::new();
    let text = author.get_or_insert_text("content");
    let mut expected = String::new();
    for n in 0..300u32 {
        let ch = char::from(b'a' + (n % 26) as u8).to_string();
        let mut txn = author.transact_mut();
        text.insert(&mut txn, n, &ch);
        writer.feed(sync_update(txn.encode_update_v1())).await.unwrap();
        expected.push_str(&ch);
    }
    writer.flush().await.unwrap();
    assert_eq!(text_of(app, alice, s, id).await, expected, "a REST read sees every edit of the burst");
    follow_until(&mut watcher, &yrs::Doc::new(), &expected).await;
    let fresh = app.second_node().await;
    let mut stored = String::new();
    for _ in 0..100 {
        stored = text_of(&fresh, alice, s, id).await;
        if stored == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, expected, "the burst is stored");

    let before_bad = {
        let mut txn = author.transact_mut();
        text.push(&mut txn, "!");
        txn.encode_update_v1()
    };
    writer.feed(sync_update(before_bad)).await.unwrap();
    writer.feed(sync_update(vec![0xff, 0xff, 0xff])).await.unwrap();
    writer.flush().await.unwrap();
    assert_eq!(close_of(&mut writer).await, (4400, "invalid_update".to_string()));
    expected.push('!');
    assert_eq!(text_of(app, alice, s, id).await, expected, "the edit before the bad one stays");
}

/// A frame that is not a y-websocket message closes its socket with 4400 `invalid_message`; the
/// messages before it in the same frame still count.
#[tokio::test]
async fn a_frame_that_is_not_y_websocket_closes_with_4400() {
    use futures_util::SinkExt;
    use yrs::{Text, Transact};
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let item = file(app, alice, s, None, "garbled.txt", "").await;
    let id = id_of(&item);
    let mut socket = open_yjs(app, alice, s, id, "").await.expect("the editor connects");
    let author = yrs::Doc::new();
    let text = author.get_or_insert_text("content");
    let update = {
        let mut txn = author.transact_mut();
        text.push(&mut txn, "kept");
        txn.encode_update_v1()
    };
    // One frame: a valid update, then a sync message of an unknown kind (9).
    let mut frame = sync_update(update).into_data().to_vec();
    frame.extend_from_slice(&[0, 9]);
    socket.send(Frame::binary(frame)).await.unwrap();
    assert_eq!(close_of(&mut socket).await, (4400, "invalid_message".to_string()));
    assert_eq!(text_of(app, alice, s, id).await, "kept", "the update before the bad message stays");
}

#[tokio::test]
async fn a_yjs_message_over_the_size_limit_closes_with_4413() {
    use futures_util::SinkExt;
    let f = Fixture::on(spawn_app_with(&[("collab.max_message_bytes", "1024".into())]).await).await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let item = file(app, alice, s, None, "big.txt", "").await;
    let mut socket = open_yjs(app, alice, s, id_of(&item), "").await.expect("the upgrade succeeds");
    socket.send(Frame::binary(vec![0u8; 2000])).await.unwrap();
    assert_eq!(close_of(&mut socket).await, (4413, "message_too_large".to_string()));
}

#[tokio::test]
async fn the_yjs_upgrade_checks_the_tenants_origin_allow_list_like_the_gateway() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let main = file(app, alice, s, None, "main.py", "").await;
    let patch = json!({"allowed_origins": ["https://app.example.com"]});
    let updated = app.admin(Method::PATCH, &format!("/admin/v1/tenants/{}", f.tenant.id), Some(patch)).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    let with_origin = |origin: &'static str| {
        let mut request = yjs_url(app, s, id_of(&main), "").into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {alice}").parse().unwrap());
        request.headers_mut().insert("origin", origin.parse().unwrap());
        async { tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket) }
    };
    assert!(with_origin("https://app.example.com").await.is_ok());
    assert_eq!(refused_with(with_origin("https://evil.example.net").await), 403);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[tokio::test]
async fn owners_demoting_each_other_at_once_leave_an_owner() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let bob = f.member("bob", "owner").await;
    for round in 0..15 {
        let (a, b) =
            tokio::join!(put_member(app, alice, s, "bob", "editor"), put_member(app, &bob, s, "alice", "editor"));
        let members = app.call(Method::GET, &format!("/v1/sessions/{s}/members"), alice, None).await;
        let owners: Vec<String> = members.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "owner")
            .map(|m| m["user_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(owners.len(), 1, "round {round}: {} / {} -> owners {owners:?}", a.text, b.text);
        let (owner, other) = if owners[0] == "alice" { (alice, "bob") } else { (&bob, "alice") };
        assert_eq!(put_member(app, owner, s, other, "owner").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn leaving_at_once_cannot_leave_a_session_without_owners() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let bob = f.member("bob", "owner").await;
    for round in 0..15 {
        let (a, b) = tokio::join!(remove_member(app, alice, s, "alice"), remove_member(app, &bob, s, "bob"));
        let owners = app
            .mongo()
            .await
            .database(&app.tenant_db_name(&f.tenant.id))
            .collection::<Document>("session_members")
            .count_documents(doc! {"session_id": s, "role": "owner"})
            .await
            .unwrap();
        assert!(owners >= 1, "round {round}: {} / {} -> no owner left", a.text, b.text);
        let (owner, other) = if a.status == StatusCode::NO_CONTENT { (&bob, "alice") } else { (alice, "bob") };
        assert_eq!(put_member(app, owner, s, other, "owner").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn concurrent_moves_on_two_nodes_never_make_a_cycle() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let f = Fixture::on(first).await;
    let (alice, s) = (&f.alice, f.id());
    let a = folder(&f.app, alice, s, None, "a").await;
    let b = folder(&f.app, alice, s, None, "b").await;
    file(&f.app, alice, s, Some(id_of(&a)), "in-a.py", "").await;
    for round in 0..10 {
        let (x, y) = tokio::join!(
            patch_item(&f.app, alice, s, id_of(&a), json!({"parent_id": id_of(&b)})),
            patch_item(&second, alice, s, id_of(&b), json!({"parent_id": id_of(&a)})),
        );
        let oks = [&x, &y].iter().filter(|r| r.status == StatusCode::OK).count();
        assert!(oks <= 1, "round {round}: both moves succeeded: {} / {}", x.text, y.text);
        let listed = tree(&f.app, alice, s).await;
        assert_eq!(listed.len(), 3, "round {round}: every item has a path (no cycle): {listed:?}");
        for id in [&a, &b] {
            patch_item(&f.app, alice, s, id_of(id), json!({"parent_id": null})).await;
        }
        assert_eq!(paths(&f.app, alice, s).await, ["a", "a/in-a.py", "b"]);
    }
}

#[tokio::test]
async fn concurrent_creates_of_one_name_and_past_the_limit_are_refused_cleanly() {
    let limit = [("collab.max_items_per_session", "5".to_string())];
    let first = spawn_app_with(&limit).await;
    let second = node_like(&first, &limit).await;
    let f = Fixture::on(first).await;
    let (alice, s) = (&f.alice, f.id());
    let same = futures_util::future::join_all((0..6).map(|n| {
        let app = if n % 2 == 0 { &f.app } else { &second };
        try_create_item(app, alice, s, None, "same.py", "file", None)
    }))
    .await;
    let created = same.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{:?}", same.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert!(same.iter().all(|r| r.status == StatusCode::CREATED || r.code() == "conflict"));
    assert_eq!(get_session(&f.app, alice, s).await.body["item_count"], 1);

    let names: Vec<String> = (0..8).map(|n| format!("f{n}")).collect();
    let many = futures_util::future::join_all(names.iter().enumerate().map(|(n, name)| {
        let app = if n % 2 == 0 { &f.app } else { &second };
        try_create_item(app, alice, s, None, name, "folder", None)
    }))
    .await;
    let created = many.iter().filter(|r| r.status == StatusCode::CREATED).count();
    eprintln!(
        "DEBUG created {created} tree {} count {}",
        tree(&f.app, alice, s).await.len(),
        get_session(&f.app, alice, s).await.body["item_count"]
    );
    assert_eq!(created, 4, "{:?}", many.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert!(many.iter().all(|r| r.status == StatusCode::CREATED || r.code() == "limit_reached"));
    assert_eq!(tree(&f.app, alice, s).await.len(), 5);
    assert_eq!(get_session(&f.app, alice, s).await.body["item_count"], 5);
}

#[tokio::test]
async fn deleting_a_session_closes_its_live_documents() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let main = file(app, alice, s, None, "main.py", "x").await;
    let mut socket = open_yjs(app, alice, s, id_of(&main), "").await.expect("opens");
    let hello = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(hello, Frame::Binary(_)));
    let deleted = app.call(Method::DELETE, &format!("/v1/sessions/{s}"), alice, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4409, "{reason}");
}

#[tokio::test]
async fn the_sessions_chat_cannot_be_joined_around_the_session() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let chat = f.session["conversation_id"].as_str().unwrap().to_string();
    let dave = app.user(&f.tenant, "dave").await;
    let added = app
        .call(Method::POST, &format!("/v1/conversations/{chat}/members"), alice, Some(json!({"user_ids": ["dave"]})))
        .await;
    // Whether the chat refuses the member or the server keeps tree events to session members,
    // a non-member must not learn the private tree's paths.
    let _ = added;
    let mut socket = open_gateway(app, &dave).await;
    folder(app, alice, s, None, "secret-plans").await;
    let dm = app.conversation(alice, "direct", &["dave"]).await;
    app.say(alice, &dm, "marker").await;
    let heard = workspace_frames_until(&mut socket, |frame| is_message(frame, "marker")).await;
    assert_eq!(heard, Vec::<Value>::new(), "a non-member of the session hears its tree: {heard:?}");
}

#[tokio::test]
async fn the_sessions_owners_moderate_its_chat() {
    let f = Fixture::new().await;
    let (app, alice, s) = (&f.app, &f.alice, f.id());
    let bob = f.member("bob", "owner").await;
    let chat = f.session["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(remove_member(app, alice, s, "alice").await.status, StatusCode::NO_CONTENT);
    let rename =
        app.call(Method::PATCH, &format!("/v1/conversations/{chat}"), &bob, Some(json!({"name": "ours"}))).await;
    assert_eq!(rename.status, StatusCode::OK, "the session's owner moderates its chat: {}", rename.text);
}
