//! Live collaborative editing with a real Yjs peer: `tests/yjs/client.mjs` runs the published
//! `yjs` + `y-websocket` packages in Node, driven line by line from these tests.

use std::process::Stdio;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::helpers::{ChatTenant, ServeProcess, TestApp, spawn_app, spawn_app_with};

/// One Node process holding one Y.Doc connected to one file.
struct YjsPeer {
    child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
}

impl YjsPeer {
    async fn connect(app: &TestApp, session: &str, item: &str, token: &str, name: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/yjs/client.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/test installs the client's packages)");
        let stdin = child.stdin.take().unwrap();
        let replies = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = Self { child, stdin, replies };
        let url = format!("{}/v1/sessions/{session}/files/{item}/yjs", app.address.replace("http://", "ws://"));
        peer.ok(json!({"cmd": "connect", "url": url, "token": token, "client_name": name})).await;
        peer
    }

    async fn ask(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(30), self.replies.next_line())
            .await
            .expect("the client answers")
            .unwrap()
            .expect("a reply line");
        serde_json::from_str(&reply).unwrap()
    }

    async fn ok(&mut self, command: Value) -> Value {
        let reply = self.ask(command.clone()).await;
        assert_eq!(reply["ok"], true, "{command} -> {reply}");
        reply
    }

    async fn text(&mut self) -> String {
        self.ok(json!({"cmd": "text"})).await["text"].as_str().unwrap().to_string()
    }

    async fn wait_text(&mut self, expected: &str) {
        self.ok(json!({"cmd": "wait_text", "equals": expected, "timeout_ms": 15000})).await;
    }
}

struct Workspace {
    tenant: ChatTenant,
    session: String,
    file: String,
    owner: String,
}

/// A session owned by alice with one file, `main.py`.
async fn workspace(app: &TestApp) -> Workspace {
    let tenant = app.chat_tenant().await;
    let owner = app.user(&tenant, "alice").await;
    let created = app.call(Method::POST, "/v1/sessions", &owner, Some(json!({"name": "demo"}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let session = created.body["id"].as_str().unwrap().to_string();
    let body = json!({"name": "main.py", "kind": "file", "content": "print('hi')\n"});
    let file = app.call(Method::POST, &format!("/v1/sessions/{session}/items"), &owner, Some(body)).await;
    assert_eq!(file.status, StatusCode::CREATED, "{}", file.text);
    Workspace { tenant, session, file: file.body["id"].as_str().unwrap().to_string(), owner }
}

/// Adds `user` to the session with `role` and returns their token.
async fn member(app: &TestApp, ws: &Workspace, user: &str, role: &str) -> String {
    let token = app.user(&ws.tenant, user).await;
    let path = format!("/v1/sessions/{}/members/{user}", ws.session);
    let added = app.call(Method::PUT, &path, &ws.owner, Some(json!({"role": role}))).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text);
    token
}

/// Alice's workspace with bob as an editor, and both connected: alice on `first`, bob on `bobs`.
async fn editing_pair(first: &TestApp, bobs: &TestApp) -> (Workspace, YjsPeer, YjsPeer) {
    let ws = workspace(first).await;
    let bob = member(first, &ws, "bob", "editor").await;
    let alice_peer = YjsPeer::connect(first, &ws.session, &ws.file, &ws.owner, "alice").await;
    let bob_peer = YjsPeer::connect(bobs, &ws.session, &ws.file, &bob, "bob").await;
    (ws, alice_peer, bob_peer)
}

async fn stored_text(app: &TestApp, ws: &Workspace, token: &str) -> String {
    let path = format!("/v1/sessions/{}/files/{}/content", ws.session, ws.file);
    let reply = app.call(Method::GET, &path, token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.text
}

#[tokio::test]
async fn editors_on_two_nodes_converge_and_a_fresh_node_loads_the_same_text() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let (ws, mut alice_peer, mut bob_peer) = editing_pair(&first, &second).await;
    assert_eq!(bob_peer.text().await, "print('hi')\n", "a new client receives the stored text");
    let typing_a = json!({"cmd": "type", "text": "a".repeat(60), "delay_ms": 2});
    let typing_b = json!({"cmd": "type", "text": "b".repeat(60), "delay_ms": 2});
    let (a, b) = tokio::join!(alice_peer.ask(typing_a), bob_peer.ask(typing_b));
    assert_eq!((a["ok"].as_bool(), b["ok"].as_bool()), (Some(true), Some(true)));
    let expected_len = "print('hi')\n".len() + 120;
    for peer in [&mut alice_peer, &mut bob_peer] {
        peer.ok(json!({"cmd": "wait_text", "length": expected_len, "timeout_ms": 15000})).await;
    }
    let converged = alice_peer.text().await;
    assert_eq!(bob_peer.text().await, converged, "both editors see the same text");
    assert_eq!(converged.matches('a').count(), 60);
    assert_eq!(converged.matches('b').count(), 60);
    // A node that never held the document loads it from MongoDB alone, like after a restart.
    let third = first.second_node().await;
    assert_eq!(stored_text(&third, &ws, &ws.owner).await, converged);
    let carol = member(&first, &ws, "carol", "viewer").await;
    let mut carol_peer = YjsPeer::connect(&third, &ws.session, &ws.file, &carol, "carol").await;
    assert_eq!(carol_peer.text().await, converged);
}

#[tokio::test]
async fn a_viewers_edits_never_reach_anyone() {
    let app = spawn_app().await;
    let ws = workspace(&app).await;
    let viewer = member(&app, &ws, "vic", "viewer").await;
    let mut editor_peer = YjsPeer::connect(&app, &ws.session, &ws.file, &ws.owner, "alice").await;
    let mut viewer_peer = YjsPeer::connect(&app, &ws.session, &ws.file, &viewer, "vic").await;
    viewer_peer.ok(json!({"cmd": "insert", "index": 0, "text": "VIEWER"})).await;
    editor_peer.ok(json!({"cmd": "insert", "index": 0, "text": "# ok\n"})).await;
    // The viewer still receives edits: once it has the editor's, its own went out before them.
    viewer_peer.ok(json!({"cmd": "wait_text", "contains": "# ok", "timeout_ms": 15000})).await;
    editor_peer.wait_text("# ok\nprint('hi')\n").await;
    assert_eq!(stored_text(&app, &ws, &ws.owner).await, "# ok\nprint('hi')\n");
    let put = app
        .request(Method::PUT, &format!("/v1/sessions/{}/files/{}/content", ws.session, ws.file))
        .bearer_auth(&viewer)
        .body("nope");
    let refused = app.send(put).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
}

#[tokio::test]
async fn awareness_reaches_others_across_nodes_and_is_cleared_when_a_client_vanishes() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let ws = workspace(&first).await;
    let bob = member(&first, &ws, "bob", "editor").await;
    let mut bob_peer = YjsPeer::connect(&second, &ws.session, &ws.file, &bob, "bob").await;
    let mut alice_peer = YjsPeer::connect(&first, &ws.session, &ws.file, &ws.owner, "alice").await;
    let cursor = json!({"user": {"name": "alice", "color": "#f00"}, "cursor": {"anchor": 1, "head": 3}});
    alice_peer.ok(json!({"cmd": "awareness_set", "state": cursor})).await;
    bob_peer.ok(json!({"cmd": "wait_awareness", "count": 1, "timeout_ms": 15000})).await;
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = bob_peer.ok(json!({"cmd": "awareness"})).await;
        if seen["states"][0]["state"]["cursor"]["head"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen["states"][0]["state"]["user"]["name"], "alice", "{seen}");
    assert_eq!(seen["states"][0]["state"]["cursor"]["head"], 3, "{seen}");
    // Killed without a goodbye: the server clears what the socket spoke for.
    alice_peer.child.kill().await.unwrap();
    bob_peer.ok(json!({"cmd": "wait_awareness", "count": 0, "timeout_ms": 15000})).await;
}

/// An editor whose socket stops reading is dropped once its outbox is full; the cursor it spoke
/// for must not stay on everyone else's screen.
#[tokio::test]
async fn the_cursor_of_an_editor_dropped_for_falling_behind_is_cleared_for_the_others() {
    let app = spawn_app().await;
    let (_ws, mut alice_peer, mut bob_peer) = editing_pair(&app, &app).await;
    let cursor = json!({"user": {"name": "alice", "color": "#f00"}, "cursor": {"anchor": 0, "head": 0}});
    alice_peer.ok(json!({"cmd": "awareness_set", "state": cursor})).await;
    bob_peer.ok(json!({"cmd": "wait_awareness", "count": 1, "timeout_ms": 15000})).await;
    let alice_pid = alice_peer.child.id().expect("alice runs").to_string();
    let paused = Command::new("kill").args(["-STOP", &alice_pid]).status().await.unwrap();
    assert!(paused.success());

    // Far more than alice's socket buffers and outbox hold (512 frames).
    bob_peer.ok(json!({"cmd": "churn", "count": 1500, "size": 16384})).await;
    // Well before Yjs clients give up on a state that is not renewed (30 s).
    let cleared = bob_peer.ask(json!({"cmd": "wait_awareness", "count": 0, "timeout_ms": 12000})).await;

    Command::new("kill").args(["-CONT", &alice_pid]).status().await.unwrap();
    assert_eq!(cleared["ok"], true, "alice's cursor stayed after she was dropped: {cleared}");
}

#[tokio::test]
async fn replacing_content_over_rest_reaches_connected_editors_as_an_edit() {
    let app = spawn_app().await;
    let ws = workspace(&app).await;
    let mut peer = YjsPeer::connect(&app, &ws.session, &ws.file, &ws.owner, "alice").await;
    let put = app
        .request(Method::PUT, &format!("/v1/sessions/{}/files/{}/content", ws.session, ws.file))
        .bearer_auth(&ws.owner)
        .body("print('replaced')\n");
    let replaced = app.send(put).await;
    assert_eq!(replaced.status, StatusCode::NO_CONTENT, "{}", replaced.text);
    peer.wait_text("print('replaced')\n").await;
    peer.ok(json!({"cmd": "insert", "index": 0, "text": "# edited\n"})).await;
    let expected = "# edited\nprint('replaced')\n";
    for _ in 0..50 {
        if stored_text(&app, &ws, &ws.owner).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the editor's change after the replacement was not stored");
}

/// Polls the peer until the server has closed one of its sockets with 1012 `access_changed`.
async fn wait_access_changed(peer: &mut YjsPeer) -> Value {
    let mut status = Value::Null;
    for _ in 0..150 {
        status = peer.ok(json!({"cmd": "status"})).await;
        let closes = status["close_events"].as_array().cloned().unwrap_or_default();
        if closes.iter().any(|c| c["code"] == 1012 && c["reason"] == "access_changed" && c["local"] == false) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the server never closed the socket for the access change: {status}");
}

/// What `editor` types after losing the right to edit must reach neither the file nor anyone:
/// the owner's later edit is stored alone.
async fn assert_edits_refused(app: &TestApp, ws: &Workspace, owner: &mut YjsPeer, editor: &mut YjsPeer) {
    editor.ok(json!({"cmd": "insert", "index": 0, "text": "EVIL"})).await;
    owner.ok(json!({"cmd": "insert", "index": 0, "text": "# ok\n"})).await;
    for _ in 0..100 {
        if stored_text(app, ws, &ws.owner).await.starts_with("# ok") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A relayed edit reaches the owner before it is stored; give one the time to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(stored_text(app, ws, &ws.owner).await, "# ok\nprint('hi')\n");
    assert_eq!(owner.text().await, "# ok\nprint('hi')\n");
}

#[tokio::test]
async fn an_editor_removed_from_the_session_is_cut_off_on_every_node() {
    let first = spawn_app().await;
    let second = first.second_node().await;
    let (ws, mut alice_peer, mut bob_peer) = editing_pair(&first, &second).await;
    let removed =
        first.call(Method::DELETE, &format!("/v1/sessions/{}/members/bob", ws.session), &ws.owner, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);

    // Bob's socket on the other node is closed, and his provider's reconnects are refused.
    wait_access_changed(&mut bob_peer).await;
    let mut status = Value::Null;
    for _ in 0..100 {
        status = bob_peer.ok(json!({"cmd": "status"})).await;
        if !status["errors"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status["connected"], false, "{status}");
    assert!(!status["errors"].as_array().unwrap().is_empty(), "the reconnect was not refused: {status}");
    assert_edits_refused(&first, &ws, &mut alice_peer, &mut bob_peer).await;
}

#[tokio::test]
async fn an_editor_made_viewer_reconnects_as_a_viewer() {
    let app = spawn_app().await;
    let (ws, mut alice_peer, mut bob_peer) = editing_pair(&app, &app).await;
    member(&app, &ws, "bob", "viewer").await;

    let closed = wait_access_changed(&mut bob_peer).await;
    assert_eq!(closed["errors"], json!([]), "a viewer may still connect: {closed}");
    let mut status = Value::Null;
    for _ in 0..150 {
        status = bob_peer.ok(json!({"cmd": "status"})).await;
        if status["sockets_opened"].as_u64() >= Some(2) && status["synced"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((status["connected"].as_bool(), status["synced"].as_bool()), (Some(true), Some(true)), "{status}");
    assert_edits_refused(&app, &ws, &mut alice_peer, &mut bob_peer).await;
    // Bob's own copy keeps what he typed, next to the owner's edit he received.
    assert_eq!(bob_peer.text().await.replace("EVIL", ""), "# ok\nprint('hi')\n", "bob still receives edits");
}

#[tokio::test]
async fn making_a_session_private_cuts_off_those_who_could_only_view_it_as_tenant_users() {
    let app = spawn_app().await;
    let ws = workspace(&app).await;
    let path = format!("/v1/sessions/{}", ws.session);
    let opened = app.call(Method::PATCH, &path, &ws.owner, Some(json!({"visibility": "tenant"}))).await;
    assert_eq!(opened.status, StatusCode::OK, "{}", opened.text);
    let eve = app.user(&ws.tenant, "eve").await;
    let mut eve_peer = YjsPeer::connect(&app, &ws.session, &ws.file, &eve, "eve").await;
    assert_eq!(eve_peer.text().await, "print('hi')\n");

    let closed = app.call(Method::PATCH, &path, &ws.owner, Some(json!({"visibility": "private"}))).await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text);
    wait_access_changed(&mut eve_peer).await;
    let mut alice_peer = YjsPeer::connect(&app, &ws.session, &ws.file, &ws.owner, "alice").await;
    alice_peer.ok(json!({"cmd": "insert", "index": 0, "text": "# secret\n"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(eve_peer.text().await, "print('hi')\n", "eve no longer receives edits");
    let status = eve_peer.ok(json!({"cmd": "status"})).await;
    assert_eq!(status["connected"], false, "{status}");
}

/// A node that never hears the notice (here: its own Redis keys and channels) still cuts a
/// removed editor off, when it next re-reads its editors' roles.
#[tokio::test]
async fn a_node_that_missed_the_notice_cuts_a_removed_editor_off_at_its_next_recheck() {
    let recheck = ("collab.access_recheck_secs", "1".to_string());
    let first = crate::helpers::spawn_app_with(std::slice::from_ref(&recheck)).await;
    let deaf_prefix = ("redis.key_prefix", format!("{}deaf:", first.redis_prefix));
    let deaf = first.second_node_with(&[deaf_prefix, recheck]).await;
    let (ws, mut alice_peer, mut bob_peer) = editing_pair(&first, &deaf).await;
    let removed =
        first.call(Method::DELETE, &format!("/v1/sessions/{}/members/bob", ws.session), &ws.owner, None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);

    wait_access_changed(&mut bob_peer).await;
    assert_edits_refused(&first, &ws, &mut alice_peer, &mut bob_peer).await;
}

/// A node told to stop (SIGTERM) stores what its open files hold, snapshots them, and closes
/// their editors with 1012 `shutting_down`, so they reconnect to another node at once.
#[tokio::test]
async fn a_stopping_node_stores_its_open_files_and_sends_their_editors_elsewhere() {
    // Snapshots only at unload: the one found below was taken by the shutdown. Idle keep-alive
    // connections hold a stop for up to `server.shutdown_timeout_secs`: the test's go in 1 s.
    let settings = [("CONFAB__COLLAB__SNAPSHOT_EVERY", "100000"), ("CONFAB__SERVER__KEEP_ALIVE_SECS", "1")];
    let node = ServeProcess::start(&settings).await;
    let ws = workspace(&node.app).await;
    let mut alice = YjsPeer::connect(&node.app, &ws.session, &ws.file, &ws.owner, "alice").await;
    alice.ok(json!({"cmd": "type", "text": "x = 1\n", "at": "end", "delay_ms": 0})).await;
    let typed = "print('hi')\nx = 1\n";
    alice.wait_text(typed).await;
    // The node's copy has every edit (reads go through the open file).
    for _ in 0..100 {
        if stored_text(&node.app, &ws, &ws.owner).await == typed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stored_text(&node.app, &ws, &ws.owner).await, typed);
    let app = node.app.clone();
    node.stop().await;

    let status = alice.ok(json!({"cmd": "status"})).await;
    let closes = status["close_events"].as_array().cloned().unwrap_or_default();
    assert!(
        closes.iter().any(|c| c["code"] == 1012 && c["reason"] == "shutting_down" && c["local"] == false),
        "the server closed the editor's socket for its shutdown: {status}"
    );
    assert!(compacted(&app, &ws).await, "a snapshot taken at shutdown covers every stored edit");
    // Another node loads the same text from the snapshot.
    let other = app.second_node().await;
    assert_eq!(stored_text(&other, &ws, &ws.owner).await, typed);
}

/// Whether the file's newest snapshot covers every update ever stored for it (its seq counter),
/// with the updates it covers compacted away.
async fn compacted(app: &TestApp, ws: &Workspace) -> bool {
    use mongodb::bson::{Document, doc};
    let db = app.mongo().await.database(&app.tenant_db_name(&ws.tenant.id));
    let counter = db.collection::<Document>("collab_counters").find_one(doc! { "_id": &ws.file }).await.unwrap();
    let stored = counter.expect("the file's seq counter").get_i64("seq").unwrap();
    let filter = doc! { "doc_id": &ws.file };
    let snapshots = db.collection::<Document>("collab_snapshots");
    let newest = snapshots.find_one(filter.clone()).sort(doc! { "upto_seq": -1 }).await.unwrap();
    let covered = newest.map(|snapshot| snapshot.get_i64("upto_seq").unwrap());
    let left = db.collection::<Document>("collab_updates").count_documents(filter).await.unwrap();
    covered == Some(stored) && left == 0
}

/// A file nobody has open for `collab.idle_unload_secs` is stored with a snapshot and unloaded;
/// the next editor loads it back from that snapshot.
#[tokio::test]
async fn an_idle_file_is_snapshotted_unloaded_and_loads_back() {
    let settings = [("collab.idle_unload_secs", "1".to_string()), ("collab.snapshot_every", "100000".to_string())];
    let app = spawn_app_with(&settings).await;
    let ws = workspace(&app).await;
    let mut alice = YjsPeer::connect(&app, &ws.session, &ws.file, &ws.owner, "alice").await;
    alice.ok(json!({"cmd": "type", "text": "y = 2\n", "at": "end", "delay_ms": 0})).await;
    let typed = "print('hi')\ny = 2\n";
    alice.wait_text(typed).await;
    assert!(!compacted(&app, &ws).await, "no snapshot while the file is open and young");
    alice.ok(json!({"cmd": "close"})).await;
    let mut unloaded = false;
    for _ in 0..100 {
        if compacted(&app, &ws).await {
            unloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(unloaded, "the idle file was snapshotted as it unloaded");
    let mut bob = YjsPeer::connect(&app, &ws.session, &ws.file, &ws.owner, "bob").await;
    bob.wait_text(typed).await;
    assert_eq!(stored_text(&app, &ws, &ws.owner).await, typed);
}
