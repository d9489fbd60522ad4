//! The WebSocket gateway: authentication on the upgrade, live delivery across nodes, resume.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open_socket(app: &TestApp, token: &str) -> Result<Socket, WsError> {
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket)
}

/// The next JSON text frame, skipping pings; fails after 5 s.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Frame::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}

/// The close frame the server sends next (other frames are skipped); fails after 5 s.
async fn close_frame(socket: &mut Socket) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = socket.next().await {
            if let Ok(Frame::Close(reason)) = frame {
                return reason;
            }
        }
        None
    })
    .await
    .expect("closed within 5 s")
    .expect("a close frame")
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Frame::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn upgrades_need_a_valid_user_token() {
    let app = spawn_app().await;
    match open_socket(&app, "not-a-token").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
    }
}

/// Writes `request` on a new connection and reads until the server closes it, or `until` shows
/// up in what was read; fails after 5 s.
async fn raw_exchange(app: &TestApp, request: &[u8], until: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no end within 5 s; read so far: {}", String::from_utf8_lossy(&seen)))
            .unwrap();
        seen.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if n == 0 || until.is_some_and(|u| text.contains(u)) {
            return text;
        }
    }
}

fn upgrade_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: confab\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A client's text frame (masked, as clients must).
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Upgrades leave HTTP for the socket's own codec: a refused upgrade is answered like any request
/// and closed, an upgrade request to a plain route gets that route's answer, and a frame the
/// client sent right behind the handshake (before it saw the 101) is not lost.
#[tokio::test]
async fn upgrades_switch_protocols_cleanly() {
    let app = spawn_app().await;
    let refused = raw_exchange(&app, upgrade_head("/v1/ws", "Authorization: Bearer nope\r\n").as_bytes(), None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("\"code\":\"unauthorized\""), "{refused}");

    let plain = raw_exchange(&app, upgrade_head("/health/live", "").as_bytes(), None).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");

    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut request = upgrade_head("/v1/ws", &format!("Authorization: Bearer {alice}\r\n")).into_bytes();
    request.extend(masked_text(r#"{"type":"ping","ref":"early"}"#));
    let answered = raw_exchange(&app, &request, Some(r#""ref":"early""#)).await;
    let other_protocol =
        upgrade_head("/v1/ws", &format!("Authorization: Bearer {alice}\r\n")).replace("websocket", "h2c");
    let refused = raw_exchange(&app, other_protocol.as_bytes(), Some("not a WebSocket upgrade")).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "only a WebSocket upgrade is accepted: {refused}");
    assert!(answered.starts_with("HTTP/1.1 101"), "{answered}");
    assert!(answered.to_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{answered}");
    let ready = answered.find(r#""type":"ready""#).expect("the ready frame");
    let pong = answered.find(r#""type":"pong""#).expect("the pong");
    assert!(ready < pong, "{answered}");
}

#[tokio::test]
async fn a_message_sent_on_one_node_reaches_a_socket_on_another() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let tenant = first.chat_tenant().await;
    let alice = first.user(&tenant, "alice").await;
    let bob = first.user(&tenant, "bob").await;
    let conversation = first.conversation(&alice, "group", &["bob"]).await;
    let mut socket = open_socket(&second, &bob).await.expect("bob connects to the second node");
    let ready = next_frame(&mut socket).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user_id"], "bob");
    tokio::time::sleep(Duration::from_millis(200)).await;

    for n in 1..=3 {
        let sent = first.say(&alice, &conversation, &format!("live {n}")).await;
        assert_eq!(sent.status, StatusCode::CREATED);
    }
    for n in 1..=3 {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["type"], "message.new", "{frame}");
        assert_eq!(frame["conversation_id"], conversation.as_str());
        assert_eq!(frame["message"]["seq"], n);
        assert_eq!(frame["message"]["text"], format!("live {n}"));
    }
}

#[tokio::test]
async fn resume_replays_what_was_missed_in_order_and_once() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=4 {
        app.say(&alice, &conversation, &format!("offline {n}")).await;
    }
    let mut socket = open_socket(&app, &bob).await.unwrap();
    let ready = next_frame(&mut socket).await;
    assert_eq!(ready["conversations"][0]["last_seq"], 4);
    send(&mut socket, json!({"type": "resume", "ref": "r1", "conversations": {conversation.clone(): 1}})).await;
    for n in 2..=4 {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["message"]["seq"], n, "{frame}");
    }
    assert_eq!(next_frame(&mut socket).await, json!({"type": "ack", "ref": "r1"}));

    app.say(&alice, &conversation, "live 5").await;
    let live = next_frame(&mut socket).await;
    assert_eq!(live["message"]["seq"], 5, "no duplicate of 1..4 before the live message");
    send(&mut socket, json!({"type": "resume", "ref": "r2", "conversations": {conversation.clone(): 5}})).await;
    assert_eq!(next_frame(&mut socket).await, json!({"type": "ack", "ref": "r2"}), "nothing is replayed twice");
}

#[tokio::test]
async fn a_replay_too_large_starts_with_a_gap_to_fetch_over_rest() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    for n in 1..=510 {
        let body = json!({"client_msg_id": format!("m{n}"), "text": "x"});
        app.call(Method::POST, &format!("/v1/conversations/{conversation}/messages"), &alice, Some(body)).await;
    }
    let mut socket = open_socket(&app, &bob).await.unwrap();
    next_frame(&mut socket).await;
    send(&mut socket, json!({"type": "resume", "ref": "r", "conversations": {conversation.clone(): 0}})).await;
    let gap = next_frame(&mut socket).await;
    assert_eq!(gap, json!({"type": "gap", "conversation_id": conversation, "from_seq": 1, "to_seq": 10}));
    for n in 11..=510 {
        assert_eq!(next_frame(&mut socket).await["message"]["seq"], n);
    }
    assert_eq!(next_frame(&mut socket).await["type"], "ack");
}

#[tokio::test]
async fn client_frames_are_answered_with_their_ref() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut socket = open_socket(&app, &alice).await.unwrap();
    next_frame(&mut socket).await;
    send(&mut socket, json!({"type": "ping", "ref": "p1"})).await;
    assert_eq!(next_frame(&mut socket).await, json!({"type": "pong", "ref": "p1"}));
    send(&mut socket, json!({"type": "teleport", "ref": "t1"})).await;
    let error = next_frame(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["ref"], "t1");
    assert_eq!(error["error"]["code"], "invalid_request");
}

/// Frames until one with `ref` == `reference` arrives; returns it and the frames before it.
async fn until_ref(socket: &mut Socket, reference: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        if frame["ref"] == reference {
            return (frame, before);
        }
        before.push(frame);
    }
}

#[tokio::test]
async fn messages_and_read_marks_can_be_sent_over_the_socket() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let mut socket = open_socket(&app, &alice).await.unwrap();
    next_frame(&mut socket).await;

    let send_frame = json!({"type": "send", "ref": "s1", "conversation_id": conversation,
        "message": {"client_msg_id": "ws-1", "text": "over the socket"}});
    send(&mut socket, send_frame.clone()).await;
    let (ack, _) = until_ref(&mut socket, "s1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!((ack["created"].as_bool(), ack["message"]["seq"].as_i64()), (Some(true), Some(1)));
    let history = app.call(Method::GET, &format!("/v1/conversations/{conversation}/messages"), &bob, None).await;
    assert_eq!(history.body["items"][0]["text"], "over the socket");

    let mut retry = send_frame;
    retry["ref"] = json!("s2");
    send(&mut socket, retry).await;
    let (again, _) = until_ref(&mut socket, "s2").await;
    assert_eq!((again["created"].as_bool(), again["message"]["seq"].as_i64()), (Some(false), Some(1)), "idempotent");

    let stranger = app.user(&tenant, "carol").await;
    let elsewhere = app.conversation(&stranger, "group", &[]).await;
    send(
        &mut socket,
        json!({"type": "send", "ref": "s3", "conversation_id": elsewhere,
        "message": {"client_msg_id": "ws-2", "text": "hi"}}),
    )
    .await;
    let (refused, _) = until_ref(&mut socket, "s3").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["error"]["code"], "not_found");
    send(
        &mut socket,
        json!({"type": "send", "ref": "s4", "conversation_id": conversation, "message": {"text": "no id"}}),
    )
    .await;
    let (invalid, _) = until_ref(&mut socket, "s4").await;
    assert_eq!(invalid["error"]["code"], "invalid_request");

    let mut bob_socket = open_socket(&app, &bob).await.unwrap();
    next_frame(&mut bob_socket).await;
    send(&mut bob_socket, json!({"type": "read", "ref": "r1", "conversation_id": conversation, "seq": 1})).await;
    let (marked, _) = until_ref(&mut bob_socket, "r1").await;
    assert_eq!((marked["last_read_seq"].as_i64(), marked["unread_count"].as_i64()), (Some(1), Some(0)), "{marked}");
    send(&mut bob_socket, json!({"type": "delivered", "ref": "d1", "conversation_id": conversation, "seq": 0})).await;
    let (delivered, _) = until_ref(&mut bob_socket, "d1").await;
    assert_eq!(delivered["last_delivered_seq"], 1, "marks never move back");
}

/// The next frame of `kind`, skipping others.
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

#[tokio::test]
async fn typing_receipts_edits_and_reactions_reach_the_other_members() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    app.say(&alice, &conversation, "first draft").await;
    let mut alice_socket = open_socket(&app, &alice).await.unwrap();
    let mut bob_socket = open_socket(&app, &bob).await.unwrap();
    next_frame(&mut alice_socket).await;
    next_frame(&mut bob_socket).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    send(&mut alice_socket, json!({"type": "typing", "conversation_id": conversation, "typing": true})).await;
    let typing = next_of(&mut bob_socket, "typing").await;
    assert_eq!((typing["user_id"].as_str(), typing["typing"].as_bool()), (Some("alice"), Some(true)));
    assert!(typing["expires_in_ms"].as_u64().unwrap() > 0);

    let read =
        app.call(Method::POST, &format!("/v1/conversations/{conversation}/read"), &bob, Some(json!({"seq": 1}))).await;
    assert_eq!(read.status, StatusCode::OK);
    let receipt = next_of(&mut alice_socket, "read").await;
    assert_eq!((receipt["user_id"].as_str(), receipt["last_read_seq"].as_i64()), (Some("bob"), Some(1)));

    let path = format!("/v1/conversations/{conversation}/messages/1");
    app.call(Method::PATCH, &path, &alice, Some(json!({"text": "final"}))).await;
    let edited = next_of(&mut bob_socket, "message.updated").await;
    assert_eq!(edited["message"]["text"], "final");
    app.call(Method::PUT, &format!("{path}/reactions/👍"), &bob, None).await;
    let edited_too = next_of(&mut alice_socket, "message.updated").await;
    assert_eq!(edited_too["message"]["text"], "final", "the author's socket hears of the edit as well");
    let reacted = next_of(&mut alice_socket, "message.updated").await;
    assert_eq!(reacted["message"]["reactions"][0]["count"], 1, "{reacted}");
    app.call(Method::DELETE, &path, &alice, None).await;
    let reacted_too = next_of(&mut bob_socket, "message.updated").await;
    assert_eq!(reacted_too["message"]["reactions"][0]["count"], 1, "the reactor's socket hears of it as well");
    let deleted = next_of(&mut bob_socket, "message.updated").await;
    assert_eq!(deleted["message"]["deleted"], true, "{deleted}");
}

#[tokio::test]
async fn sockets_follow_conversations_joined_and_drop_those_left() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let mut bob_socket = open_socket(&app, &bob).await.unwrap();
    let ready = next_frame(&mut bob_socket).await;
    assert_eq!(ready["conversations"], json!([]));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let joined = next_of(&mut bob_socket, "conversation.joined").await;
    assert_eq!(joined["conversation_id"], conversation.as_str());
    app.say(&alice, &conversation, "welcome").await;
    let welcome = next_of(&mut bob_socket, "message.new").await;
    assert_eq!(welcome["message"]["text"], "welcome");

    let removed =
        app.call(Method::DELETE, &format!("/v1/conversations/{conversation}/members/bob"), &alice, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    next_of(&mut bob_socket, "conversation.left").await;
    app.say(&alice, &conversation, "after bob left").await;
    send(&mut bob_socket, json!({"type": "ping", "ref": "after"})).await;
    let (pong, before) = until_ref(&mut bob_socket, "after").await;
    assert_eq!(pong["type"], "pong");
    assert!(
        before.iter().all(|f| f["type"] != "message.new"),
        "a removed member's socket hears nothing more: {before:?}"
    );
}

#[tokio::test]
async fn a_deactivated_users_socket_is_closed_within_a_heartbeat() {
    let app = spawn_app_with(&[("gateway.heartbeat_secs", "1".into())]).await;
    let tenant = app.chat_tenant().await;
    let bob = app.user(&tenant, "bob").await;
    let mut socket = open_socket(&app, &bob).await.unwrap();
    next_frame(&mut socket).await;
    let deactivated = app.call(Method::DELETE, "/v1/users/bob", &tenant.key, None).await;
    assert_eq!(deactivated.status, StatusCode::OK);
    let closed = close_frame(&mut socket).await;
    assert_eq!(u16::from(closed.code), 1008);
    assert_eq!(closed.reason.as_str(), "user_deactivated");
    assert!(open_socket(&app, &bob).await.is_err(), "and cannot reconnect");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_socket_with_1009() {
    let app = spawn_app_with(&[("gateway.max_frame_bytes", "1024".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut socket = open_socket(&app, &alice).await.unwrap();
    next_frame(&mut socket).await;
    send(&mut socket, json!({"type": "ping", "ref": "x".repeat(900)})).await;
    assert_eq!(next_frame(&mut socket).await["type"], "pong", "a frame under the limit is answered");
    send(&mut socket, json!({"type": "ping", "ref": "x".repeat(2000)})).await;
    let closed = close_frame(&mut socket).await;
    assert_eq!((u16::from(closed.code), closed.reason.as_str()), (1009, "frame_too_large"));
}

#[tokio::test]
async fn frames_beyond_the_per_second_budget_are_refused() {
    let app = spawn_app_with(&[("gateway.max_frames_per_sec", "3".into())]).await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let mut socket = open_socket(&app, &alice).await.unwrap();
    next_frame(&mut socket).await;
    for n in 0..6 {
        send(&mut socket, json!({"type": "ping", "ref": format!("p{n}")})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..6 {
        let frame = next_frame(&mut socket).await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if frame["error"]["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(pongs >= 3 && limited >= 1, "pongs {pongs}, limited {limited}");
}

#[tokio::test]
async fn browser_origins_are_checked_against_the_tenants_allow_list() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let patch = json!({"allowed_origins": ["https://app.example.com"]});
    let updated = app.admin(Method::PATCH, &format!("/admin/v1/tenants/{}", tenant.id), Some(patch)).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    let bad = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{}", tenant.id),
            Some(json!({"allowed_origins": ["app.example.com/x"]})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    let with_origin = |origin: &'static str| {
        let url = app.address.replace("http://", "ws://") + "/v1/ws";
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {alice}").parse().unwrap());
        request.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    match with_origin("https://evil.example.net").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert!(with_origin("https://app.example.com").await.is_ok());
    assert!(open_socket(&app, &alice).await.is_ok(), "clients without an Origin header are allowed");
}
