//! The real-time gateway as browsers and apps use it: tickets and subprotocol auth, the per-user
//! connection limit, connection tracking and presence across nodes, member and pin events, slow
//! consumers, a Redis outage, tenant isolation, and frames matching `openapi/asyncapi.yaml`.
//!
//! Negatives ("X is not sent") are proven with a marker: a message said after the event in
//! question. Every node has one Redis subscriber and every socket a FIFO outbox, so an event
//! published before the marker reaches a socket before the marker does.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::HeaderName;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{ChatTenant, Relay, ServeProcess, TestApp, random_lower, spawn_app, spawn_app_with};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Handshake = Result<(Socket, Response), WsError>;

/// How long a test waits for a frame or a condition before failing.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The AsyncAPI document: every server frame a test reads is checked against it.

fn asyncapi() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/asyncapi.yaml"))
            .expect("openapi/asyncapi.yaml exists");
        serde_norway::from_str(&text).expect("openapi/asyncapi.yaml is YAML")
    })
}

/// The frame types the document says a side (`server` or `client`) sends.
fn documented(side: &str) -> BTreeSet<String> {
    let messages = asyncapi()["components"]["messages"].as_object().expect("components.messages");
    let prefix = format!("{side}.");
    messages.keys().filter_map(|key| key.strip_prefix(&prefix)).map(String::from).collect()
}

fn resolve(schema: &Value) -> &Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            &asyncapi()["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn has_json_type(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// Asserts that `frame` is a documented message of `side`: its `type` names one, it has every
/// required field, no field the payload does not describe, and fields of the documented JSON type.
fn assert_documented(side: &str, frame: &Value) {
    let kind = frame["type"].as_str().unwrap_or_else(|| panic!("a frame without a type: {frame}"));
    let message = &asyncapi()["components"]["messages"][format!("{side}.{kind}")];
    assert_eq!(message["name"], kind, "`{kind}` is not a {side} message in openapi/asyncapi.yaml: {frame}");
    let payload = &message["payload"];
    let parts: Vec<&Value> = match payload["allOf"].as_array() {
        Some(parts) => parts.iter().map(resolve).collect(),
        None => vec![resolve(payload)],
    };
    let mut properties = serde_json::Map::new();
    let mut required = BTreeSet::new();
    for part in parts {
        if let Some(more) = part["properties"].as_object() {
            properties.extend(more.clone());
        }
        required.extend(part["required"].as_array().into_iter().flatten().filter_map(Value::as_str));
    }
    let fields = frame.as_object().expect("frames are JSON objects");
    for name in required {
        assert!(fields.contains_key(name), "{side}.{kind} requires `{name}` (asyncapi): {frame}");
    }
    for (name, value) in fields {
        let schema = properties
            .get(name)
            .unwrap_or_else(|| panic!("{side}.{kind} has `{name}`, which asyncapi does not describe: {frame}"));
        let kinds: Vec<&str> = match &schema["type"] {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        assert!(
            kinds.iter().any(|kind| has_json_type(value, kind)),
            "{side}.{kind}.{name} should be {kinds:?} (asyncapi): {frame}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets.

fn ws_url(app: &TestApp, query: &str) -> String {
    format!("{}/v1/ws{query}", app.address.replace("http://", "ws://"))
}

/// The WebSocket handshake with `?query` and extra headers; no Authorization unless given.
async fn handshake(app: &TestApp, query: &str, headers: &[(&'static str, String)]) -> Handshake {
    let mut request = ws_url(app, query).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// The status and JSON body of a refused upgrade.
fn refusal(attempt: Handshake) -> (u16, Value) {
    match attempt {
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, but the socket opened"),
    }
}

struct Client {
    socket: Socket,
    /// The `ready` frame the socket opened with.
    ready: Value,
    /// Every frame type read so far.
    seen: BTreeSet<String>,
}

impl Client {
    /// Opens a socket with the user's JWT in the Authorization header.
    async fn open(app: &TestApp, token: &str) -> Client {
        Client::accept(handshake(app, "", &bearer(token)).await).await
    }

    /// A socket from an accepted handshake, once its `ready` frame is read.
    async fn accept(attempt: Handshake) -> Client {
        let (socket, _) = attempt.expect("the upgrade is accepted");
        let mut client = Client { socket, ready: Value::Null, seen: BTreeSet::new() };
        let ready = client.next().await;
        assert_eq!(ready["type"], "ready", "the first frame is ready: {ready}");
        client.ready = ready;
        client
    }

    fn user_id(&self) -> &str {
        self.ready["user_id"].as_str().unwrap()
    }

    /// The next JSON text frame (pings skipped), checked against the AsyncAPI document.
    async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"))
                .expect("the socket is open")
                .expect("a valid frame");
            match frame {
                Frame::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                    assert_documented("server", &frame);
                    self.seen.insert(frame["type"].as_str().unwrap().to_string());
                    return frame;
                }
                Frame::Close(reason) => panic!("the server closed the socket: {reason:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Frames until one matches; returns it and the frames before it.
    async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let frame = self.next().await;
            if wanted(&frame) {
                return (frame, before);
            }
            before.push(frame);
        }
    }

    /// Sends a client frame (which must be a documented one).
    async fn send(&mut self, frame: Value) {
        assert_documented("client", &frame);
        self.socket.send(Frame::text(frame.to_string())).await.expect("the frame is sent");
    }

    /// Pings with a fresh ref and returns the frames read before the pong.
    async fn ping(&mut self) -> Vec<Value> {
        let reference = format!("p-{}", random_lower(8));
        self.send(json!({"type": "ping", "ref": reference})).await;
        let (pong, before) = self.until(|f| f["ref"] == reference.as_str()).await;
        assert_eq!(pong, json!({"type": "pong", "ref": reference}));
        before
    }

    /// Reads until the server closes: the text frames before, and the close frame if one came
    /// (`None` when the connection just ended).
    async fn read_to_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames = Vec::new();
        let outcome = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(frame) = self.socket.next().await {
                match frame {
                    Ok(Frame::Text(text)) => frames.push(serde_json::from_str::<Value>(&text).expect("a JSON frame")),
                    Ok(Frame::Close(reason)) => return reason,
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("the server ends the socket");
        (frames, outcome)
    }

    /// Closes from the client side and waits for the server's answer. The server unregisters
    /// the connection (and announces presence) before answering, so both are done on return.
    async fn close(mut self) {
        self.socket.close(None).await.expect("the close frame is sent");
        self.read_to_close().await;
    }
}

/// Says a fresh marker text in `conversation` as `token` and reads `client` up to the marker's
/// `message.new`: the frames the socket got before it.
async fn before_marker(app: &TestApp, token: &str, conversation: &str, client: &mut Client) -> Vec<Value> {
    before_marker_on(app, token, conversation, &mut [client]).await.remove(0)
}

/// `before_marker` for several sockets following the conversation, with one marker.
async fn before_marker_on(
    app: &TestApp,
    token: &str,
    conversation: &str,
    clients: &mut [&mut Client],
) -> Vec<Vec<Value>> {
    let marker = format!("marker {}", random_lower(10));
    let said = app.say(token, conversation, &marker).await;
    assert_eq!(said.status, StatusCode::CREATED, "{}", said.text);
    let mut before = Vec::new();
    for client in clients.iter_mut() {
        let (_, frames) = client.until(|f| f["type"] == "message.new" && f["message"]["text"] == marker.as_str()).await;
        before.push(frames);
    }
    before
}

/// Retries `probe` every 100 ms until it gives a value; fails after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `app`'s Redis subscriber delivers events: typing between two probe users of a
/// tenant of their own comes through. (The subscriber connects in the background at start-up.)
async fn wait_for_fan_out(app: &TestApp) {
    let tenant = app.chat_tenant().await;
    let a = app.user(&tenant, "probe-a").await;
    let b = app.user(&tenant, "probe-b").await;
    let conversation = app.conversation(&a, "group", &["probe-b"]).await;
    let mut sender = Client::open(app, &a).await;
    let mut receiver = Client::open(app, &b).await;
    for _ in 0..100 {
        sender.send(json!({"type": "typing", "conversation_id": conversation, "typing": false})).await;
        if tokio::time::timeout(Duration::from_millis(100), receiver.next_of("typing")).await.is_ok() {
            return;
        }
    }
    panic!("events never came through the node's subscriber");
}

/// A node like `first` (with `extra` settings) that reaches Redis through a relay the test can
/// cut, giving up on Redis calls after 500 ms.
async fn node_behind_relay(first: &TestApp, extra: &[(&'static str, String)]) -> (Relay, TestApp) {
    let (relay, relayed) = Relay::redis().await;
    let mut settings = extra.to_vec();
    settings.extend([("redis.url", relayed), ("redis.timeout_ms", "500".to_string())]);
    (relay, first.second_node_with(&settings).await)
}

fn settings(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(key, value)| (*key, value.to_string())).collect()
}

async fn connections(app: &TestApp, tenant: &ChatTenant, user: &str) -> Vec<Value> {
    let reply = app.call(Method::GET, &format!("/v1/users/{user}/connections"), &tenant.key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().expect("items").clone()
}

async fn wait_for_connections(app: &TestApp, tenant: &ChatTenant, user: &str, count: usize) -> Vec<Value> {
    eventually(&format!("{user} has {count} live connections"), || async {
        let live = connections(app, tenant, user).await;
        (live.len() == count).then_some(live)
    })
    .await
}

async fn presence(app: &TestApp, token: &str, user: &str) -> Value {
    let reply = app.call(Method::GET, &format!("/v1/users/{user}/presence"), token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn issue_ticket(app: &TestApp, token: &str) -> String {
    let reply = app.call(Method::POST, "/v1/ws/tickets", token, None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body["ticket"].as_str().expect("a ticket").to_string()
}

// ---------------------------------------------------------------------------------------------
// 1-2. Ways in for browsers: tickets and the subprotocol.

#[tokio::test]
async fn realtime_a_ticket_opens_one_socket_once_on_any_node() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let tenant = first.chat_tenant().await;
    let other = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    first.user(&other, "alice").await;

    let before = chrono::Utc::now();
    let issued = first.call(Method::POST, "/v1/ws/tickets", &alice, None).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text);
    let ticket = issued.body["ticket"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("cfw_"), "{ticket}");
    let expires_at = chrono::DateTime::parse_from_rfc3339(issued.body["expires_at"].as_str().unwrap()).unwrap();
    let ttl = first.settings.gateway.ticket_ttl_secs as i64;
    assert!(expires_at > before, "{expires_at} is in the future");
    assert!(expires_at <= chrono::Utc::now() + chrono::Duration::seconds(ttl), "{expires_at} within the TTL");

    let client = Client::accept(handshake(&first, &format!("?ticket={ticket}"), &[]).await).await;
    assert_eq!(client.user_id(), "alice", "{}", client.ready);
    let (status, body) = refusal(handshake(&first, &format!("?ticket={ticket}"), &[]).await);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "a ticket is single-use");

    let made_up = format!("cfw_{}_{}", tenant.id, random_lower(40));
    assert_eq!(refusal(handshake(&first, &format!("?ticket={made_up}"), &[]).await).0, 401);
    assert_eq!(refusal(handshake(&first, "?ticket=nonsense", &[]).await).0, 401);

    let fresh = issue_ticket(&first, &alice).await;
    let prefix = format!("cfw_{}_", tenant.id);
    let altered = fresh.replacen(&prefix, &format!("cfw_{}_", other.id), 1);
    assert_ne!(altered, fresh);
    let (status, _) = refusal(handshake(&first, &format!("?ticket={altered}"), &[]).await);
    assert_eq!(status, 401, "a ticket of one tenant does not open another tenant's socket");

    let elsewhere = Client::accept(handshake(&second, &format!("?ticket={fresh}"), &[]).await).await;
    assert_eq!(elsewhere.user_id(), "alice", "a ticket issued on one node is redeemed on another");
    let tracked = connections(&first, &tenant, "alice").await;
    assert_eq!(tracked.len(), 2, "both ticket sockets are alice's in her own tenant: {tracked:?}");
    assert!(connections(&first, &other, "alice").await.is_empty(), "nothing opened in the other tenant");

    let anonymous = first.send(first.request(Method::POST, "/v1/ws/tickets")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text);
}

#[tokio::test]
async fn realtime_an_expired_ticket_is_refused() {
    let app = spawn_app_with(&settings(&[("gateway.ticket_ttl_secs", "1")])).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let ticket = issue_ticket(&app, &alice).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = refusal(handshake(&app, &format!("?ticket={ticket}"), &[]).await);
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn realtime_a_jwt_offered_as_a_subprotocol_opens_the_socket() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;

    let offer = vec![("sec-websocket-protocol", format!("confab.v1, confab.bearer.{alice}"))];
    let (socket, response) = handshake(&app, "", &offer).await.expect("the subprotocol token is accepted");
    assert_eq!(response.headers()["sec-websocket-protocol"], "confab.v1", "the token is never echoed");
    let mut client = Client { socket, ready: Value::Null, seen: BTreeSet::new() };
    let ready = client.next().await;
    assert_eq!((ready["type"].as_str(), ready["user_id"].as_str()), (Some("ready"), Some("alice")), "{ready}");
    assert!(client.ping().await.is_empty());

    let bad = vec![("sec-websocket-protocol", "confab.v1, confab.bearer.not-a-jwt".to_string())];
    let (status, body) = refusal(handshake(&app, "", &bad).await);
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = refusal(handshake(&app, "", &[("sec-websocket-protocol", "confab.v1".to_string())]).await);
    assert_eq!(status, 401, "offering only confab.v1 is no credential");
}

/// RFC 6455: a server may only answer a subprotocol the client offered.
#[tokio::test]
async fn realtime_the_subprotocol_answer_is_one_the_client_offered() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut headers = bearer(&alice);
    headers.push(("sec-websocket-protocol", "chat.example".to_string()));
    match handshake(&app, "", &headers).await {
        Ok((_, response)) => {
            let answered = response.headers().get("sec-websocket-protocol");
            assert!(answered.is_none_or(|p| p == "chat.example"), "answered {answered:?}, offered chat.example");
        }
        Err(WsError::Http(response)) => assert!(response.status().is_client_error(), "{response:?}"),
        Err(other) => panic!("the handshake failed on the client: {other}"),
    }
    let token_only = vec![("sec-websocket-protocol", format!("confab.bearer.{alice}"))];
    match handshake(&app, "", &token_only).await {
        Ok((_, response)) => assert!(response.headers().get("sec-websocket-protocol").is_none(), "{response:?}"),
        Err(WsError::Http(response)) => assert!(response.status().is_client_error(), "{response:?}"),
        Err(other) => panic!("the handshake failed on the client: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 3-4. Connections: the per-user limit, tracking across nodes, and expiry of a lost node's.

#[tokio::test]
async fn realtime_a_user_may_hold_at_most_max_connections_per_user() {
    let app = spawn_app_with(&settings(&[("gateway.max_connections_per_user", "2")])).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let carol = app.user(&tenant, "carol").await;

    let first = Client::open(&app, &alice).await;
    let _second = Client::open(&app, &alice).await;
    let (status, body) = refusal(handshake(&app, "", &bearer(&alice)).await);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert_eq!(body["error"]["details"], json!({"limit": "max_connections_per_user", "value": 2}), "{body}");
    let ticket = issue_ticket(&app, &alice).await;
    assert_eq!(refusal(handshake(&app, &format!("?ticket={ticket}"), &[]).await).0, 429, "tickets count too");
    assert_eq!(connections(&app, &tenant, "alice").await.len(), 2, "refused attempts leave no record");

    let _carol_one = Client::open(&app, &carol).await;
    let _carol_two = Client::open(&app, &carol).await;

    first.close().await;
    wait_for_connections(&app, &tenant, "alice", 1).await;
    let again = Client::open(&app, &alice).await;
    assert_eq!(again.user_id(), "alice");
    assert_eq!(refusal(handshake(&app, "", &bearer(&alice)).await).0, 429, "and the limit holds again");
}

#[tokio::test]
async fn realtime_connections_are_listed_across_nodes_until_closed() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    first.user(&tenant, "nobody").await;

    let opened_at = now_ms();
    let mut web_headers = bearer(&alice);
    web_headers.push(("user-agent", "confab-tests (web)".into()));
    let web = Client::accept(handshake(&first, "?client=web/1.0", &web_headers).await).await;
    let mut ios_headers = bearer(&alice);
    ios_headers.push(("user-agent", "confab-tests (ios)".into()));
    let ios = Client::accept(handshake(&second, "?client=ios/2.3.1", &ios_headers).await).await;
    let opened_by = now_ms();

    let listed = connections(&first, &tenant, "alice").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let ids = |items: &[Value]| -> BTreeSet<String> {
        items.iter().map(|c| c["connection_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&connections(&second, &tenant, "alice").await), ids(&listed), "every node lists the same");
    let find = |client: &Client| {
        let id = &client.ready["connection_id"];
        listed.iter().find(|c| &c["connection_id"] == id).unwrap_or_else(|| panic!("{id} listed: {listed:?}")).clone()
    };
    let (on_first, on_second) = (find(&web), find(&ios));
    for (connection, client, agent) in
        [(&on_first, "web/1.0", "confab-tests (web)"), (&on_second, "ios/2.3.1", "confab-tests (ios)")]
    {
        assert_eq!(connection["user_id"], "alice", "{connection}");
        assert_eq!(connection["status"], "online", "{connection}");
        assert_eq!(connection["client"], client, "{connection}");
        assert_eq!(connection["user_agent"], agent, "{connection}");
        let connected_at = connection["connected_at"].as_i64().unwrap();
        assert!((opened_at - 1000..=opened_by + 1000).contains(&connected_at), "{connection}");
        assert!(connection["last_heartbeat"].as_i64().unwrap() >= connected_at, "{connection}");
        assert!(!connection["node"].as_str().unwrap().is_empty(), "{connection}");
    }
    assert_ne!(on_first["node"], on_second["node"], "each node records its own name");

    let as_user = first.call(Method::GET, "/v1/users/alice/connections", &alice, None).await;
    assert_eq!(as_user.status, StatusCode::UNAUTHORIZED, "connections are for servers only: {}", as_user.text);
    let unknown = first.call(Method::GET, "/v1/users/ghost/connections", &tenant.key, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert!(connections(&first, &tenant, "nobody").await.is_empty());

    ios.close().await;
    let left = wait_for_connections(&first, &tenant, "alice", 1).await;
    assert_eq!(left[0]["connection_id"], web.ready["connection_id"]);

    let long = "x".repeat(65);
    let (status, body) = refusal(handshake(&first, &format!("?client={long}"), &bearer(&alice)).await);
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("validation_failed")), "{body}");
    assert_eq!(connections(&first, &tenant, "alice").await.len(), 1, "a refused upgrade is not tracked");
}

/// A node that can no longer reach Redis stops refreshing its connections, as a crashed one
/// would: they drop out of the listing, presence and the per-user limit after the stale window.
/// When it reaches Redis again, they count against the limit like new connections.
#[tokio::test]
async fn realtime_connections_of_a_node_that_stops_heartbeating_expire() {
    let common = [
        ("gateway.presence_stale_secs", "2"),
        ("gateway.heartbeat_secs", "1"),
        ("gateway.max_connections_per_user", "1"),
    ];
    let first = spawn_app_with(&settings(&common)).await;
    let (relay, second) = node_behind_relay(&first, &settings(&common)).await;
    let tenant = first.chat_tenant().await;
    let bob = first.user(&tenant, "bob").await;

    let mut doomed = Client::accept(handshake(&second, "?client=doomed/1", &bearer(&bob)).await).await;
    let listed = connections(&first, &tenant, "bob").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["connection_id"], doomed.ready["connection_id"]);
    assert_eq!(refusal(handshake(&first, "", &bearer(&bob)).await).0, 429, "the connection counts while fresh");

    relay.cut();
    wait_for_connections(&first, &tenant, "bob", 0).await;
    let seen = presence(&first, &tenant.key, "bob").await;
    assert_eq!((seen["online"].as_bool(), seen["connections"].as_u64()), (Some(false), Some(0)), "{seen}");
    assert!(seen["last_seen_at"].as_i64().is_some(), "{seen}");
    let replacement = Client::open(&first, &bob).await;
    assert_eq!(replacement.user_id(), "bob", "a stale connection no longer counts against the limit");
    assert!(doomed.ping().await.is_empty(), "the socket itself stays open on its node");

    // Its node reaches Redis again: registering the old socket afresh would pass the limit, so
    // it is closed instead, and the replacement stays the only connection.
    relay.restore();
    let (_, closed) = doomed.read_to_close().await;
    let closed = closed.expect("a close frame");
    assert_eq!((u16::from(closed.code), closed.reason.as_str()), (1008, "too_many_connections"));
    let listed = connections(&first, &tenant, "bob").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["connection_id"], replacement.ready["connection_id"]);
}

/// The people who share a conversation with a user whose node died (here: lost Redis, so it no
/// longer heartbeats) hear that user went offline once the stale window has passed, from the
/// sweep of a node that is still alive: exactly once, though every node sweeps. When the node
/// comes back, so does the user, announced online once.
#[tokio::test]
async fn realtime_a_user_whose_node_stops_heartbeating_is_announced_offline_once() {
    let common =
        [("gateway.presence_stale_secs", "2"), ("gateway.heartbeat_secs", "1"), ("gateway.presence_sweep_secs", "1")];
    let first = spawn_app_with(&settings(&common)).await;
    let third = first.second_node_with(&settings(&common)).await;
    let (relay, second) = node_behind_relay(&first, &settings(&common)).await;
    wait_for_fan_out(&first).await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    let mut alice_socket = Client::open(&first, &alice).await;
    let doomed = Client::accept(handshake(&second, "", &bearer(&bob)).await).await;
    let online = alice_socket.next_of("presence").await;
    assert_eq!((online["user_id"].as_str(), online["online"].as_bool()), (Some("bob"), Some(true)), "{online}");

    relay.cut();
    let offline = tokio::time::timeout(Duration::from_secs(15), alice_socket.next_of("presence"))
        .await
        .expect("bob is announced offline after the stale window");
    assert_eq!((offline["user_id"].as_str(), offline["online"].as_bool()), (Some("bob"), Some(false)), "{offline}");
    let last_seen = offline["last_seen_at"].as_i64().unwrap();
    // His last heartbeat (or his connecting), not when the sweep noticed.
    let seen_from = online["last_seen_at"].as_i64().unwrap() - 1000;
    let seen_until = chrono::Utc::now().timestamp_millis() - 1000;
    assert!((seen_from..=seen_until).contains(&last_seen), "{offline}");
    // Two live nodes sweep every second; a few more rounds must not announce him again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = before_marker(&first, &alice, &conversation, &mut alice_socket).await;
    assert!(later.iter().all(|f| f["type"] != "presence"), "announced more than once: {later:?}");
    assert_eq!(presence(&third, &tenant.key, "bob").await["online"], false);

    // His node reaches Redis again: his socket's next heartbeat brings him back, announced once.
    relay.restore();
    let back = tokio::time::timeout(Duration::from_secs(15), alice_socket.next_of("presence"))
        .await
        .expect("bob is announced online again");
    assert_eq!((back["user_id"].as_str(), back["online"].as_bool()), (Some("bob"), Some(true)), "{back}");
    assert_eq!(presence(&third, &tenant.key, "bob").await["online"], true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = before_marker(&first, &alice, &conversation, &mut alice_socket).await;
    assert!(later.iter().all(|f| f["type"] != "presence"), "announced back more than once: {later:?}");
    doomed.close().await;
    let gone = alice_socket.next_of("presence").await;
    assert_eq!((gone["user_id"].as_str(), gone["online"].as_bool()), (Some("bob"), Some(false)), "{gone}");

    // The sweep visits only tenants with someone online: the last close takes this one off.
    let client = deadpool_redis::redis::Client::open(crate::helpers::redis_url()).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    let swept = format!("{}presence_tenants", first.redis_prefix);
    let listed = || {
        let (mut redis, swept, tenant) = (redis.clone(), swept.clone(), tenant.id.clone());
        async move {
            deadpool_redis::redis::cmd("SISMEMBER").arg(swept).arg(tenant).query_async::<i64>(&mut redis).await.unwrap()
        }
    };
    assert_eq!(listed().await, 1, "alice is online");
    alice_socket.close().await;
    eventually("the tenant to leave the sweep", || async { (listed().await == 0).then_some(()) }).await;
}

/// History needs no Redis: a node cut off from it reads how far the conversation goes from
/// MongoDB's counter, including messages stored since through another node.
#[tokio::test]
async fn history_on_a_node_cut_off_from_redis_still_reports_the_newest_seq() {
    let first = spawn_app().await;
    let (relay, second) = node_behind_relay(&first, &[]).await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=5 {
        first.say(&alice, &conversation, &format!("m{n}")).await;
    }
    relay.cut();
    for n in 6..=8 {
        first.say(&alice, &conversation, &format!("m{n}")).await;
    }
    let path = format!("/v1/conversations/{conversation}/messages?before_seq=3&limit=2");
    let page = second.call(Method::GET, &path, &bob, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let seqs: Vec<i64> = page.body["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!((page.body["last_seq"].as_i64(), page.body["has_more_after"].as_bool()), (Some(8), Some(true)));
}

/// When the node reaches Redis again its heartbeat re-registers the connection, and the entry
/// should describe the connection as it did before (node, client, user agent, connected_at).
#[tokio::test]
async fn realtime_a_connection_re_registered_after_an_outage_keeps_its_details() {
    let common = [("gateway.presence_stale_secs", "2"), ("gateway.heartbeat_secs", "1")];
    let first = spawn_app_with(&settings(&common)).await;
    let (relay, second) = node_behind_relay(&first, &settings(&common)).await;
    let tenant = first.chat_tenant().await;
    let bob = first.user(&tenant, "bob").await;

    let mut headers = bearer(&bob);
    headers.push(("user-agent", "confab-tests".into()));
    let _socket = Client::accept(handshake(&second, "?client=survivor/1", &headers).await).await;
    let before = wait_for_connections(&first, &tenant, "bob", 1).await.remove(0);
    relay.cut();
    wait_for_connections(&first, &tenant, "bob", 0).await;
    // Past the connection hash's own TTL (stale window + 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.restore();
    let after = wait_for_connections(&first, &tenant, "bob", 1).await.remove(0);
    for field in ["connection_id", "node", "client", "user_agent", "connected_at"] {
        assert_eq!(after[field], before[field], "{field}: before {before}, after {after}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Presence.

#[tokio::test]
async fn realtime_presence_follows_a_users_first_and_last_connection() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    wait_for_fan_out(&first).await;
    wait_for_fan_out(&second).await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let carol = first.user(&tenant, "carol").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    let carols = first.conversation(&carol, "group", &[]).await;

    let never = presence(&first, &alice, "bob").await;
    assert_eq!(never, json!({"user_id": "bob", "online": false, "connections": 0, "last_seen_at": null}));
    let hidden = first.call(Method::GET, "/v1/users/bob/presence", &carol, None).await;
    assert_eq!((hidden.status, hidden.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", hidden.text);
    assert_eq!(presence(&first, &tenant.key, "bob").await["online"], false, "servers see anyone");
    assert_eq!(presence(&first, &carol, "carol").await["user_id"], "carol", "users see themselves");

    let mut alice_socket = Client::open(&first, &alice).await;
    let mut carol_socket = Client::open(&first, &carol).await;
    let mut bob_one = Client::open(&second, &bob).await;
    let online = alice_socket.next_of("presence").await;
    assert_eq!((online["user_id"].as_str(), online["online"].as_bool()), (Some("bob"), Some(true)), "{online}");
    let seen = presence(&first, &alice, "bob").await;
    assert_eq!((seen["online"].as_bool(), seen["connections"].as_u64()), (Some(true), Some(1)), "{seen}");
    assert!(seen["last_seen_at"].as_i64().is_some(), "{seen}");
    assert_eq!(presence(&first, &tenant.key, "bob").await["online"], true);

    let bob_two = Client::open(&second, &bob).await;
    assert_eq!(presence(&first, &alice, "bob").await["connections"], 2);
    let quiet = before_marker(&first, &alice, &conversation, &mut alice_socket).await;
    assert!(quiet.iter().all(|f| f["type"] != "presence"), "a second socket is no news: {quiet:?}");
    let own = before_marker(&first, &alice, &conversation, &mut bob_one).await;
    assert!(own.iter().all(|f| f["type"] != "presence"), "nobody is told about themselves: {own:?}");

    bob_one.close().await;
    let quiet = before_marker(&first, &alice, &conversation, &mut alice_socket).await;
    assert!(quiet.iter().all(|f| f["type"] != "presence"), "bob still has a socket: {quiet:?}");
    assert_eq!(presence(&first, &alice, "bob").await["online"], true);

    bob_two.close().await;
    let offline = alice_socket.next_of("presence").await;
    assert_eq!((offline["user_id"].as_str(), offline["online"].as_bool()), (Some("bob"), Some(false)));
    assert!(offline["last_seen_at"].as_i64().unwrap() >= online["last_seen_at"].as_i64().unwrap(), "{offline}");
    let gone = presence(&first, &alice, "bob").await;
    assert_eq!((gone["online"].as_bool(), gone["connections"].as_u64()), (Some(false), Some(0)), "{gone}");
    assert!(gone["last_seen_at"].as_i64().is_some(), "{gone}");
    let quiet = before_marker(&first, &alice, &conversation, &mut alice_socket).await;
    assert!(quiet.iter().all(|f| f["type"] != "presence"), "offline is announced once: {quiet:?}");

    let strangers = before_marker(&first, &carol, &carols, &mut carol_socket).await;
    assert!(strangers.is_empty(), "carol shares no conversation with bob and hears nothing of him: {strangers:?}");
}

/// A request to `/v1/ws` that is not a WebSocket upgrade is refused; it should not make its user
/// appear online (and then offline) to everyone sharing a conversation.
#[tokio::test]
async fn realtime_a_failed_upgrade_announces_no_presence() {
    let app = spawn_app().await;
    wait_for_fan_out(&app).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let mut alice_socket = Client::open(&app, &alice).await;

    let plain = app.call(Method::GET, "/v1/ws", &bob, None).await;
    assert!(plain.status.is_client_error(), "not an upgrade: {}", plain.text);
    let heard = before_marker(&app, &alice, &conversation, &mut alice_socket).await;
    assert!(heard.iter().all(|f| f["type"] != "presence"), "bob never connected: {heard:?}");
    assert_eq!(presence(&app, &alice, "bob").await["last_seen_at"], Value::Null, "nor was he seen");
}

#[tokio::test]
async fn realtime_conversation_presence_lists_members_to_members_only() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    app.user(&tenant, "dave").await;
    let conversation = app.conversation(&alice, "group", &["bob", "dave"]).await;
    let path = format!("/v1/conversations/{conversation}/presence");

    let _alice_socket = Client::open(&app, &alice).await;
    let _bob_socket = Client::open(&app, &bob).await;
    let _carol_socket = Client::open(&app, &carol).await;
    let listed = app.call(Method::GET, &path, &bob, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let flags: Vec<(String, bool, u64)> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["user_id"].as_str().unwrap().into(), p["online"].as_bool().unwrap(), p["connections"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        flags,
        vec![("alice".into(), true, 1), ("bob".into(), true, 1), ("dave".into(), false, 0)],
        "members in user-id order, carol (online, not a member) left out"
    );
    assert_eq!(listed.body["next_cursor"], Value::Null);

    let paged = app.collect_pages(&format!("{path}?limit=2"), &alice, "after", 2).await;
    let users: Vec<&str> = paged.iter().map(|p| p["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["alice", "bob", "dave"]);

    let outsider = app.call(Method::GET, &path, &carol, None).await;
    assert_eq!((outsider.status, outsider.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", outsider.text);
    let server = app.call(Method::GET, &path, &tenant.key, None).await;
    assert_eq!(server.status, StatusCode::OK, "{}", server.text);
    assert_eq!(server.body["items"].as_array().unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Member and pin events.

#[tokio::test]
async fn realtime_membership_and_pin_changes_reach_the_members_sockets() {
    let app = spawn_app().await;
    wait_for_fan_out(&app).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let members = format!("/v1/conversations/{conversation}/members");
    let mut alice_socket = Client::open(&app, &alice).await;
    let mut bob_socket = Client::open(&app, &bob).await;
    let mut carol_socket = Client::open(&app, &carol).await;
    assert_eq!(carol_socket.ready["conversations"], json!([]));

    let added = app.call(Method::POST, &members, &alice, Some(json!({"user_ids": ["carol"]}))).await;
    assert!(added.status.is_success(), "{}", added.text);
    let joined = json!({"type": "member.joined", "conversation_id": conversation, "user_id": "carol"});
    assert_eq!(bob_socket.next_of("member.joined").await, joined);
    assert_eq!(alice_socket.next_of("member.joined").await, joined);
    let (welcome, before) = carol_socket.until(|f| f["type"] == "conversation.joined").await;
    assert_eq!(welcome["conversation_id"], conversation.as_str(), "{welcome}");
    assert!(welcome["after_seq"].as_i64().is_some(), "{welcome}");
    assert!(
        before.iter().all(|f| f["type"] != "member.joined"),
        "carol is not told she joined as a member: {before:?}"
    );

    let promoted = app.call(Method::PATCH, &format!("{members}/carol"), &alice, Some(json!({"role": "admin"}))).await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.text);
    let updated =
        json!({"type": "member.updated", "conversation_id": conversation, "user_id": "carol", "role": "admin"});
    assert_eq!(bob_socket.next_of("member.updated").await, updated);
    assert_eq!(carol_socket.next_of("member.updated").await, updated, "carol's socket now follows the conversation");

    let said = app.say(&alice, &conversation, "pin me").await;
    let seq = said.body["seq"].as_i64().expect("a seq");
    let pins = format!("/v1/conversations/{conversation}/pins/{seq}");
    let refused = app.call(Method::PUT, &pins, &bob, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "members may not pin: {}", refused.text);
    let pinned = app.call(Method::PUT, &pins, &carol, None).await;
    assert!(pinned.status.is_success(), "carol pins as an admin now: {}", pinned.text);
    let frame = |pinned: bool| json!({"type": "message.pinned", "conversation_id": conversation, "seq": seq, "pinned": pinned, "by": "carol"});
    assert_eq!(alice_socket.next_of("message.pinned").await, frame(true));
    assert_eq!(carol_socket.next_of("message.pinned").await, frame(true));
    let unpinned = app.call(Method::DELETE, &pins, &carol, None).await;
    assert!(unpinned.status.is_success(), "{}", unpinned.text);
    assert_eq!(alice_socket.next_of("message.pinned").await, frame(false));
    assert_eq!(bob_socket.next_of("message.pinned").await, frame(true));
    assert_eq!(bob_socket.next_of("message.pinned").await, frame(false));

    let removed = app.call(Method::DELETE, &format!("{members}/carol"), &alice, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let left = json!({"type": "member.left", "conversation_id": conversation, "user_id": "carol"});
    assert_eq!(bob_socket.next_of("member.left").await, left);
    let (gone, before) = carol_socket.until(|f| f["type"] == "conversation.left").await;
    assert_eq!(gone, json!({"type": "conversation.left", "conversation_id": conversation}));
    assert!(before.iter().all(|f| f["type"] != "member.left"), "{before:?}");

    let banned = app.call(Method::PUT, &format!("/v1/conversations/{conversation}/bans/bob"), &alice, None).await;
    assert!(banned.status.is_success(), "{}", banned.text);
    let bob_left = json!({"type": "member.left", "conversation_id": conversation, "user_id": "bob"});
    assert_eq!(
        alice_socket.next_of("member.left").await,
        json!({"type": "member.left", "conversation_id": conversation, "user_id": "carol"})
    );
    assert_eq!(alice_socket.next_of("member.left").await, bob_left, "a ban is a departure");
    assert_eq!(bob_socket.next_of("conversation.left").await["conversation_id"], conversation.as_str());
    let after = before_marker(&app, &carol, &app.conversation(&carol, "group", &[]).await, &mut carol_socket).await;
    assert!(after.iter().all(|f| f["conversation_id"] != conversation.as_str()), "{after:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. A slow consumer is cut off without slowing anyone else.

/// Big messages a slow socket cannot absorb: more than its outbox, its session queue and the
/// kernel's socket buffers hold.
const FLOOD: i64 = 300;

/// alice, bob (reading, in a task that returns the seqs read) and carol (not reading) in one
/// conversation on a node with 4-event outboxes; alice says `FLOOD` messages of 60 KB.
async fn flood(extra: &[(&'static str, &str)]) -> (TestApp, ChatTenant, Vec<i64>, Client, Client) {
    let mut overrides = settings(&[("gateway.outbox_capacity", "4")]);
    overrides.extend(settings(extra));
    let app = spawn_app_with(&overrides).await;
    let id = app.create_tenant_with(json!({"limits": {"max_message_bytes": 65536}})).await;
    let (key, _) = app.issue_key(&id, None).await;
    let tenant = ChatTenant { id, key };
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let conversation = app.conversation(&alice, "group", &["bob", "carol"]).await;

    let mut fast = Client::open(&app, &bob).await;
    let slow = Client::open(&app, &carol).await;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < FLOOD as usize {
            let frame = fast.next_of("message.new").await;
            seqs.push(frame["message"]["seq"].as_i64().unwrap());
        }
        (seqs, fast)
    });
    let filler = "x".repeat(60_000);
    for n in 1..=FLOOD {
        let said = app.say(&alice, &conversation, &format!("{n} {filler}")).await;
        assert_eq!(said.status, StatusCode::CREATED, "message {n}: {}", said.text);
    }
    let (seqs, fast) = reader.await.expect("the reader finishes");
    (app, tenant, seqs, fast, slow)
}

#[tokio::test]
async fn realtime_a_socket_that_stops_reading_is_closed_and_others_miss_nothing() {
    let (app, tenant, seqs, mut fast, mut slow) = flood(&[]).await;
    assert_eq!(seqs, (1..=FLOOD).collect::<Vec<_>>(), "the reading socket got every message once, in order");
    assert!(fast.ping().await.is_empty(), "and it is still open");

    let (frames, close) = slow.read_to_close().await;
    let got: Vec<i64> =
        frames.iter().filter(|f| f["type"] == "message.new").map(|f| f["message"]["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>(), "what it got before the close is in order");
    assert!((got.len() as i64) < FLOOD, "the slow socket was cut off, not sent everything");
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 1008, "{close:?}");
        assert_eq!(close.reason.as_str(), "slow_consumer", "{close:?}");
    }
    wait_for_connections(&app, &tenant, "carol", 0).await;
    assert_eq!(connections(&app, &tenant, "bob").await.len(), 1);
}

/// The server should let go of a socket that fell behind even if the client never reads again
/// (a frozen tab, a dead network path): neither the slow-consumer close nor the idle timeout
/// should wait for the client to read.
#[tokio::test]
async fn realtime_a_socket_that_never_reads_again_is_let_go() {
    let (app, tenant, seqs, _fast, _slow) =
        flood(&[("gateway.heartbeat_secs", "1"), ("gateway.idle_timeout_secs", "2")]).await;
    assert_eq!(seqs.len() as i64, FLOOD);
    wait_for_connections(&app, &tenant, "carol", 0).await;
}

/// Reads `message.new` frames (texts `m{seq}`) into `received` until seq `upto` is in.
async fn take(socket: &mut Client, received: &mut Vec<i64>, upto: i64) {
    while received.last().copied().unwrap_or(0) < upto {
        let frame = socket.next_of("message.new").await;
        assert_eq!(frame["message"]["text"], format!("m{}", frame["message"]["seq"]), "{frame}");
        received.push(frame["message"]["seq"].as_i64().unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Redis going away and coming back loses nothing and duplicates nothing.

#[tokio::test]
async fn realtime_a_redis_outage_loses_and_duplicates_no_message() {
    let heartbeat = ("gateway.heartbeat_secs", "1");
    let first = spawn_app_with(&settings(&[heartbeat])).await;
    let (relay, second) = node_behind_relay(&first, &settings(&[heartbeat])).await;
    wait_for_fan_out(&second).await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    let say = |n: i64| {
        let (first, alice, conversation) = (&first, &alice, &conversation);
        async move {
            let said = first.say(alice, conversation, &format!("m{n}")).await;
            assert_eq!(said.status, StatusCode::CREATED, "stored: {}", said.text);
            assert_eq!(said.body["seq"], n);
        }
    };
    let mut socket = Client::open(&second, &bob).await;
    let mut received: Vec<i64> = Vec::new();

    for n in 1..=3 {
        say(n).await;
    }
    take(&mut socket, &mut received, 3).await;

    relay.cut();
    eventually("the second node notices Redis is gone", || async {
        let ready = second.send(second.request(Method::GET, "/health/ready")).await;
        (ready.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    for n in 4..=8 {
        say(n).await;
    }
    let during = socket.ping().await;
    assert!(during.iter().all(|f| f["type"] != "message.new"), "the live path is down: {during:?}");

    relay.restore();
    take(&mut socket, &mut received, 8).await;
    say(9).await;
    take(&mut socket, &mut received, 9).await;
    let quiet = socket.ping().await;
    assert!(quiet.iter().all(|f| f["type"] != "message.new"), "nothing comes twice: {quiet:?}");
    assert_eq!(received, (1..=9).collect::<Vec<_>>(), "every message once, in order");

    socket.close().await;
    for n in 10..=12 {
        say(n).await;
    }
    let mut socket = Client::open(&second, &bob).await;
    assert_eq!(socket.ready["conversations"], json!([{"id": conversation, "last_seq": 12}]));
    socket.send(json!({"type": "resume", "ref": "r1", "conversations": {conversation.clone(): 9}})).await;
    let (ack, replayed) = socket.until(|f| f["ref"] == "r1").await;
    assert_eq!(ack, json!({"type": "ack", "ref": "r1"}));
    let replayed: Vec<i64> = replayed.iter().map(|f| f["message"]["seq"].as_i64().unwrap()).collect();
    assert_eq!(replayed, [10, 11, 12], "a resume replays exactly what was missed");
    received.extend(replayed);
    say(13).await;
    take(&mut socket, &mut received, 13).await;
    socket.send(json!({"type": "resume", "ref": "r2", "conversations": {conversation.clone(): 13}})).await;
    let (ack, before) = socket.until(|f| f["ref"] == "r2").await;
    assert_eq!((ack["type"].as_str(), before.len()), (Some("ack"), 0), "{before:?}");
    assert_eq!(received, (1..=13).collect::<Vec<_>>());
}

/// A message stored without a live event (here: written straight into MongoDB) in a conversation
/// where nothing else happens reaches the socket through the periodic sweep, exactly once; the
/// sweep waits a period before replaying, so events still on their way are not read twice.
#[tokio::test]
async fn realtime_a_message_whose_event_never_came_arrives_with_a_later_sweep() {
    use mongodb::bson::{Document, doc};
    let app = spawn_app_with(&settings(&[("gateway.heartbeat_secs", "1"), ("gateway.catch_up_secs", "1")])).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let mut socket = Client::open(&app, &bob).await;
    let mut received = Vec::new();
    let said = app.say(&alice, &conversation, "m1").await;
    assert_eq!(said.status, StatusCode::CREATED, "{}", said.text);
    take(&mut socket, &mut received, 1).await;

    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));
    let messages = db.collection::<Document>("messages");
    let mut silent = messages.find_one(doc! {"conversation_id": &conversation, "seq": 1}).await.unwrap().unwrap();
    let key = uuid::Uuid::now_v7().as_bytes().to_vec();
    silent.insert("_id", mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: key });
    silent.insert("id", format!("silent-{}", random_lower(8)));
    silent.insert("seq", 2_i64);
    silent.insert("client_msg_id", "silent");
    silent.insert("text", "m2");
    messages.insert_one(&silent).await.unwrap();
    let conversations = db.collection::<Document>("conversations");
    conversations.update_one(doc! {"_id": &conversation}, doc! {"$max": {"last_seq": 2_i64}}).await.unwrap();

    let repaired = tokio::time::timeout(Duration::from_secs(10), take(&mut socket, &mut received, 2)).await;
    assert!(repaired.is_ok(), "repaired within a few sweeps; got {received:?}");
    let said = app.say(&alice, &conversation, "m3").await;
    assert_eq!(said.status, StatusCode::CREATED, "{}", said.text);
    take(&mut socket, &mut received, 3).await;
    // Two more sweeps find nothing missing: nothing comes twice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let quiet = socket.ping().await;
    assert!(quiet.iter().all(|f| f["type"] != "message.new"), "nothing comes twice: {quiet:?}");
    assert_eq!(received, [1, 2, 3], "every message once, in order");
}

// ---------------------------------------------------------------------------------------------
// 9. Tenants never hear from each other, even with the same user ids.

#[tokio::test]
async fn realtime_sockets_never_hear_from_another_tenant() {
    let app = spawn_app().await;
    wait_for_fan_out(&app).await;
    let a = app.chat_tenant().await;
    let b = app.chat_tenant().await;
    let a_alice = app.user(&a, "alice").await;
    let a_bob = app.user(&a, "bob").await;
    app.user(&a, "carol").await;
    let b_alice = app.user(&b, "alice").await;
    let b_bob = app.user(&b, "bob").await;
    let a_conversation = app.conversation(&a_alice, "group", &["bob"]).await;
    let b_conversation = app.conversation(&b_alice, "group", &["bob"]).await;

    let mut b_bob_socket = Client::open(&app, &b_bob).await;
    let mut b_alice_socket = Client::open(&app, &b_alice).await;
    let online = b_bob_socket.next_of("presence").await;
    assert_eq!((online["user_id"].as_str(), online["online"].as_bool()), (Some("alice"), Some(true)));
    before_marker_on(&app, &b_alice, &b_conversation, &mut [&mut b_bob_socket, &mut b_alice_socket]).await;

    let mut a_alice_socket = Client::open(&app, &a_alice).await;
    let mut a_bob_socket = Client::open(&app, &a_bob).await;
    assert_eq!(a_alice_socket.next_of("presence").await["user_id"], "bob");
    assert_eq!(presence(&app, &b.key, "bob").await["connections"], 1, "presence is counted per tenant");
    a_alice_socket.send(json!({"type": "typing", "conversation_id": a_conversation, "typing": true})).await;
    assert_eq!(a_bob_socket.next_of("typing").await["user_id"], "alice");
    let said = app.say(&a_alice, &a_conversation, "for tenant a only").await;
    let seq = said.body["seq"].as_i64().unwrap();
    assert_eq!(a_bob_socket.next_of("message.new").await["message"]["text"], "for tenant a only");
    let pinned = app.call(Method::PUT, &format!("/v1/conversations/{a_conversation}/pins/{seq}"), &a_alice, None).await;
    assert!(pinned.status.is_success(), "{}", pinned.text);
    a_bob_socket.next_of("message.pinned").await;
    let read = json!({"seq": seq});
    app.call(Method::POST, &format!("/v1/conversations/{a_conversation}/read"), &a_bob, Some(read)).await;
    a_alice_socket.next_of("read").await;
    let added = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{a_conversation}/members"),
            &a_alice,
            Some(json!({"user_ids": ["carol"]})),
        )
        .await;
    assert!(added.status.is_success(), "{}", added.text);
    a_bob_socket.next_of("member.joined").await;
    a_bob_socket.close().await;
    let offline = a_alice_socket.next_of("presence").await;
    assert_eq!((offline["user_id"].as_str(), offline["online"].as_bool()), (Some("bob"), Some(false)));

    let heard = before_marker_on(&app, &b_alice, &b_conversation, &mut [&mut b_bob_socket, &mut b_alice_socket]).await;
    assert!(heard[0].is_empty(), "tenant b's bob heard tenant a: {:?}", heard[0]);
    assert!(heard[1].is_empty(), "tenant b's alice heard tenant a: {:?}", heard[1]);
    assert_eq!(presence(&app, &b.key, "bob").await["online"], true, "b's bob is still online in b");
}

// ---------------------------------------------------------------------------------------------
// 10. Every server frame is described in openapi/asyncapi.yaml, and every described one occurs.

#[tokio::test]
async fn realtime_every_server_frame_is_described_in_asyncapi_and_occurs() {
    let app = spawn_app_with(&settings(&[("gateway.max_replay", "2")])).await;
    wait_for_fan_out(&app).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let carol = app.user(&tenant, "carol").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let path = format!("/v1/conversations/{conversation}");

    let mut bob_socket = Client::open(&app, &bob).await;
    let mut carol_socket = Client::open(&app, &carol).await;
    let mut alice_socket = Client::open(&app, &alice).await;
    bob_socket.next_of("presence").await;

    for n in 1..=3 {
        app.say(&alice, &conversation, &format!("hello {n}")).await;
    }
    bob_socket.next_of("message.new").await;
    app.call(Method::PATCH, &format!("{path}/messages/1"), &alice, Some(json!({"text": "edited"}))).await;
    bob_socket.next_of("message.updated").await;
    app.call(Method::PUT, &format!("{path}/pins/1"), &alice, None).await;
    bob_socket.next_of("message.pinned").await;
    alice_socket.send(json!({"type": "typing", "conversation_id": conversation, "typing": true})).await;
    bob_socket.next_of("typing").await;
    bob_socket.send(json!({"type": "read", "ref": "r", "conversation_id": conversation, "seq": 1})).await;
    assert_eq!(bob_socket.until(|f| f["ref"] == "r").await.0["type"], "ack");
    alice_socket.next_of("read").await;
    bob_socket.send(json!({"type": "delivered", "ref": "d", "conversation_id": conversation, "seq": 3})).await;
    assert_eq!(bob_socket.until(|f| f["ref"] == "d").await.0["type"], "ack");
    bob_socket
        .send(json!({"type": "send", "ref": "s", "conversation_id": conversation,
            "message": {"client_msg_id": "asyncapi-1", "text": "over the socket"}}))
        .await;
    let (sent, _) = bob_socket.until(|f| f["ref"] == "s").await;
    assert_eq!((sent["type"].as_str(), sent["created"].as_bool()), (Some("ack"), Some(true)), "{sent}");

    let members = format!("{path}/members");
    app.call(Method::POST, &members, &alice, Some(json!({"user_ids": ["carol"]}))).await;
    bob_socket.next_of("member.joined").await;
    carol_socket.next_of("conversation.joined").await;
    app.call(Method::PATCH, &format!("{members}/carol"), &alice, Some(json!({"role": "admin"}))).await;
    bob_socket.next_of("member.updated").await;
    app.call(Method::DELETE, &format!("{members}/carol"), &alice, None).await;
    bob_socket.next_of("member.left").await;
    carol_socket.next_of("conversation.left").await;

    bob_socket.send(json!({"type": "resume", "ref": "g", "conversations": {conversation.clone(): 0}})).await;
    let (_, replay) = bob_socket.until(|f| f["ref"] == "g").await;
    let gap = replay.iter().find(|f| f["type"] == "gap").unwrap_or_else(|| panic!("a gap: {replay:?}"));
    assert_eq!(gap["from_seq"], 1, "{gap}");
    bob_socket.ping().await;
    bob_socket.socket.send(Frame::text(json!({"type": "teleport", "ref": "t"}).to_string())).await.unwrap();
    assert_eq!(bob_socket.until(|f| f["ref"] == "t").await.0["type"], "error");

    let session = app.call(Method::POST, "/v1/sessions", &alice, Some(json!({"name": "scratch"}))).await;
    assert_eq!(session.status, StatusCode::CREATED, "{}", session.text);
    let session_id = session.body["id"].as_str().unwrap().to_string();
    let mut coder = Client::open(&app, &alice).await;
    let item = json!({"name": "main.py", "kind": "file"});
    let created = app.call(Method::POST, &format!("/v1/sessions/{session_id}/items"), &alice, Some(item)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let changed = coder.next_of("workspace.changed").await;
    assert_eq!((changed["session_id"].as_str(), changed["by"].as_str()), (Some(session_id.as_str()), Some("alice")));

    let seen: BTreeSet<String> =
        [&bob_socket, &carol_socket, &alice_socket, &coder].iter().flat_map(|c| c.seen.clone()).collect();
    assert_eq!(seen, documented("server"), "every documented server frame was observed, and only those");
    assert_eq!(
        documented("client"),
        ["delivered", "ping", "read", "resume", "send", "typing"].map(String::from).into_iter().collect(),
        "the client frames of docs/realtime.md"
    );
}

/// A node told to stop (SIGTERM) closes its sockets with 1012 `shutting_down`, so clients
/// reconnect to another node at once, and their users go offline for the others right away, not
/// after the stale window.
#[tokio::test]
async fn realtime_a_stopping_node_closes_its_sockets_and_its_users_go_offline() {
    // Idle keep-alive connections hold a stop for up to `server.shutdown_timeout_secs`.
    let stopping = ServeProcess::start(&[("CONFAB__SERVER__KEEP_ALIVE_SECS", "1")]).await;
    let staying = stopping.app.second_node().await;
    wait_for_fan_out(&staying).await;
    let tenant = staying.chat_tenant().await;
    let alice = staying.user(&tenant, "alice").await;
    let bob = staying.user(&tenant, "bob").await;
    staying.conversation(&alice, "group", &["bob"]).await;
    let mut alice_socket = Client::open(&staying, &alice).await;
    let mut bob_socket = Client::open(&stopping.app, &bob).await;
    let online = alice_socket.next_of("presence").await;
    assert_eq!((online["user_id"].as_str(), online["online"].as_bool()), (Some("bob"), Some(true)), "{online}");

    stopping.stop().await;
    let (_, closed) = bob_socket.read_to_close().await;
    let closed = closed.expect("a close frame, not a dropped connection");
    assert_eq!((u16::from(closed.code), closed.reason.as_str()), (1012, "shutting_down"));
    // The default stale window is far longer than this wait.
    let offline = tokio::time::timeout(Duration::from_secs(5), alice_socket.next_of("presence"))
        .await
        .expect("bob is announced offline as his node stops");
    assert_eq!((offline["user_id"].as_str(), offline["online"].as_bool()), (Some("bob"), Some(false)), "{offline}");
    assert_eq!(presence(&staying, &tenant.key, "bob").await["online"], false);
}
