//! The `confab` binary itself: `tenants apply` manifests and `serve` with graceful shutdown.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use mongodb::IndexModel;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, spawn_app};

/// Runs the confab binary with the test app's settings as `CONFAB__*` variables.
fn confab(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command.args(args);
    let overrides = [
        ("CONFAB__MONGODB__URI", crate::helpers::mongo_uri()),
        ("CONFAB__MONGODB__DB_PREFIX", app.db_prefix.clone()),
        ("CONFAB__REDIS__URL", crate::helpers::redis_url()),
        ("CONFAB__REDIS__KEY_PREFIX", app.redis_prefix.clone()),
        ("CONFAB__AUTH__OPERATOR_TOKEN", app.operator_token.clone()),
    ];
    command.envs(overrides);
    command
}

fn write_manifest(dir: &std::path::Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

#[tokio::test]
async fn manifests_apply_idempotently() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("confab-manifests-{}", app.db_prefix));
    std::fs::create_dir_all(&dir).unwrap();
    write_manifest(
        &dir,
        "globex.toml",
        "id = \"globex\"\nname = \"Globex\"\nplan = \"pro\"\n[limits]\nmax_users = 42\n",
    );
    write_manifest(&dir, "initech.toml", "id = \"initech\"\nname = \"Initech\"\n");
    write_manifest(&dir, "README.md", "not a manifest");

    let first = confab(&app, &["tenants", "apply", dir.to_str().unwrap()]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(out.contains("tenant globex: created") && out.contains("tenant initech: created"), "{out}");
    let globex = app.admin(Method::GET, "/admin/v1/tenants/globex", None).await;
    assert_eq!(globex.body["plan"], "pro");
    assert_eq!(globex.body["limits"]["max_users"], 42);

    // As if globex came from an earlier version: an index since retired, one since added missing.
    let db = app.mongo().await.database(&app.tenant_db_name("globex"));
    let (messages, blocks) = (db.collection::<Document>("messages"), db.collection::<Document>("search_blocks"));
    let retired = IndexModel::builder()
        .keys(doc! { "terms": 1, "conversation_id": 1, "seq": -1 })
        .options(IndexOptions::builder().name("terms_1_conversation_id_1_seq_-1".to_string()).build())
        .build();
    messages.create_index(retired).await.unwrap();
    let every_reply_to = IndexModel::builder()
        .keys(doc! { "conversation_id": 1, "reply_to": 1, "seq": 1 })
        .options(IndexOptions::builder().name("conversation_id_1_reply_to_1_seq_1".to_string()).build())
        .build();
    messages.drop_index("replies_1").await.unwrap();
    messages.create_index(every_reply_to).await.unwrap();
    blocks.drop_index("terms_1_conversation_id_1").await.unwrap();

    let second = confab(&app, &["tenants", "apply", dir.to_str().unwrap()]).output().unwrap();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("tenant globex: unchanged") && out.contains("tenant initech: unchanged"), "{out}");
    let names = messages.list_index_names().await.unwrap();
    assert!(!names.iter().any(|n| n == "terms_1_conversation_id_1_seq_-1"), "the retired index is dropped: {names:?}");
    assert!(!names.iter().any(|n| n == "conversation_id_1_reply_to_1_seq_1"), "retired: {names:?}");
    assert!(names.iter().any(|n| n == "replies_1"), "its successor is made: {names:?}");
    let names = blocks.list_index_names().await.unwrap();
    assert!(names.iter().any(|n| n == "terms_1_conversation_id_1"), "the missing index is made: {names:?}");

    write_manifest(
        &dir,
        "globex.toml",
        "id = \"globex\"\nname = \"Globex Corp\"\nplan = \"pro\"\n[limits]\nmax_users = 42\n",
    );
    let third = confab(&app, &["tenants", "apply", dir.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&third.stdout).contains("tenant globex: updated"));
    assert_eq!(app.admin(Method::GET, "/admin/v1/tenants/globex", None).await.body["name"], "Globex Corp");
    let log = app.admin(Method::GET, "/admin/v1/tenants/globex/audit-log/verify", None).await;
    assert_eq!(log.body["head_seq"], 2, "create + one update; the unchanged run wrote nothing");

    write_manifest(&dir, "broken.toml", "id = \"Bad Id\"\nname = \"x\"\n");
    let broken = confab(&app, &["tenants", "apply", dir.to_str().unwrap()]).output().unwrap();
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("broken.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Messages stored before `_id` became the idempotency key (`_id` their public id, a unique index
/// on the key's fields) are read and their repeats answered as before; `tenants apply` re-keys
/// them, keeping their ids, and only then retires that index.
#[tokio::test]
async fn messages_stored_before_keys_are_served_then_rekeyed_by_apply() {
    use futures_util::TryStreamExt;
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let mut ids = Vec::new();
    for (token, client_msg_id) in [(&alice, "old-1"), (&bob, "old-1"), (&alice, "old-2"), (&alice, "old-3")] {
        let sent = send_as(&app, &conversation, token, client_msg_id).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        ids.push(sent.body["id"].as_str().unwrap().to_string());
    }

    // Into the earlier shape, with the earlier index.
    let db = app.mongo().await.database(&app.tenant_db_name(&tenant.id));
    let messages = db.collection::<Document>("messages");
    let keyed: Vec<Document> = messages.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(keyed.len(), 4);
    let mut template = Document::new();
    for mut message in keyed {
        let key = message.remove("_id").unwrap();
        let id = message.remove("id").unwrap();
        assert!(matches!(&key, Bson::Binary(k) if k.subtype == BinarySubtype::Uuid), "keyed: {key}");
        messages.delete_one(doc! { "_id": key }).await.unwrap();
        let mut legacy = doc! { "_id": id };
        legacy.extend(message);
        messages.insert_one(&legacy).await.unwrap();
        template = legacy;
    }
    // Enough more, in another conversation, that re-keying takes several batches.
    let elsewhere = uuid::Uuid::now_v7().to_string();
    let more: Vec<Document> = (1..=450_i64)
        .map(|seq| {
            let mut copy = template.clone();
            copy.extend(doc! {
                "_id": uuid::Uuid::now_v7().to_string(), "conversation_id": &elsewhere, "seq": seq,
                "client_msg_id": format!("more-{seq}"),
            });
            copy
        })
        .collect();
    messages.insert_many(&more).await.unwrap();
    let legacy_index = "conversation_id_1_sender_id_1_client_msg_id_1";
    let model = IndexModel::builder()
        .keys(doc! { "conversation_id": 1, "sender_id": 1, "client_msg_id": 1 })
        .options(IndexOptions::builder().name(legacy_index.to_string()).unique(true).build())
        .build();
    messages.create_index(model).await.unwrap();

    let expected: Vec<(i64, String)> = (1..=4).zip(ids.iter().cloned()).collect();
    assert_eq!(seqs_and_ids(&app, &conversation, &alice).await, expected, "read in the earlier shape");
    sends_as(&app, &conversation, &alice, "old-2", 3, Some(ids[2].clone())).await;
    sends_as(&app, &conversation, &bob, "old-1", 2, Some(ids[1].clone())).await;
    // New messages beside them: keyed, and still under the earlier index until it goes.
    sends_as(&app, &conversation, &alice, "new-1", 5, None).await;
    sends_as(&app, &conversation, &alice, "new-2", 6, None).await;
    let new_1 = messages.find_one(doc! { "conversation_id": &conversation, "seq": 5_i64 }).await.unwrap().unwrap();
    sends_as(&app, &conversation, &alice, "new-1", 5, Some(new_1.get_str("id").unwrap().to_string())).await;

    let dir = std::env::temp_dir().join(format!("confab-rekey-{}", app.db_prefix));
    std::fs::create_dir_all(&dir).unwrap();
    write_manifest(&dir, "tenant.toml", &format!("id = \"{}\"\nname = \"Rekeyed\"\n", tenant.id));
    let applied = confab(&app, &["tenants", "apply", dir.to_str().unwrap()]).output().unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    std::fs::remove_dir_all(&dir).unwrap();

    let stored: Vec<Document> = messages.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(stored.len(), 456, "nothing lost, nothing doubled");
    let moved: Vec<i64> = stored
        .iter()
        .filter(|m| m.get_str("conversation_id") == Ok(&elsewhere))
        .map(|m| m.get_i64("seq").unwrap())
        .collect();
    assert_eq!(BTreeSet::from_iter(moved), BTreeSet::from_iter(1..=450));
    let keys: BTreeSet<Vec<u8>> = stored
        .iter()
        .map(|m| match m.get("_id") {
            Some(Bson::Binary(key)) if key.subtype == BinarySubtype::Uuid => key.bytes.clone(),
            _ => panic!("re-keyed: {m}"),
        })
        .collect();
    assert_eq!(keys.len(), stored.len());
    let names = messages.list_index_names().await.unwrap();
    assert!(!names.iter().any(|n| n == legacy_index), "retired once re-keyed: {names:?}");
    let mut expected = expected;
    expected.push((5, new_1.get_str("id").unwrap().to_string()));
    let new_2 = stored.iter().find(|m| m.get_str("client_msg_id") == Ok("new-2")).unwrap();
    expected.push((6, new_2.get_str("id").unwrap().to_string()));
    assert_eq!(seqs_and_ids(&app, &conversation, &bob).await, expected, "the same ids at the same seqs");
    sends_as(&app, &conversation, &alice, "old-3", 4, Some(ids[3].clone())).await;
    sends_as(&app, &conversation, &alice, "new-3", 7, None).await;
}

async fn send_as(app: &TestApp, conversation: &str, token: &str, client_msg_id: &str) -> crate::helpers::Reply {
    let body = serde_json::json!({"client_msg_id": client_msg_id, "text": format!("text of {client_msg_id}")});
    app.call(Method::POST, &format!("/v1/conversations/{conversation}/messages"), token, Some(body)).await
}

/// Sends `client_msg_id`, which gets `seq`: a repeat of the message `original` when given.
async fn sends_as(
    app: &TestApp,
    conversation: &str,
    token: &str,
    client_msg_id: &str,
    seq: i64,
    original: Option<String>,
) {
    let sent = send_as(app, conversation, token, client_msg_id).await;
    let status = if original.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    assert_eq!((sent.status, sent.body["seq"].as_i64()), (status, Some(seq)), "{client_msg_id}: {}", sent.text);
    if let Some(id) = original {
        assert_eq!(sent.body["id"], id.as_str());
    }
}

async fn seqs_and_ids(app: &TestApp, conversation: &str, token: &str) -> Vec<(i64, String)> {
    let path = format!("/v1/conversations/{conversation}/messages?after_seq=0&limit=50");
    let page = app.call(Method::GET, &path, token, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let items = page.body["items"].as_array().unwrap();
    items.iter().map(|m| (m["seq"].as_i64().unwrap(), m["id"].as_str().unwrap().to_string())).collect()
}

#[tokio::test]
async fn the_shipped_demo_manifest_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tenants");
    let loaded = confab::platform::manifests::load_dir(std::path::Path::new(dir)).expect("tenants/ parses");
    assert!(loaded.iter().any(|(_, m)| m.id.as_str() == "demo"));
}

#[tokio::test]
async fn serve_answers_and_stops_gracefully_on_sigterm() {
    let app = spawn_app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = confab(&app, &["serve"])
        .env("CONFAB__SERVER__PORT", port.to_string())
        .env("CONFAB__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == StatusCode::OK
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "confab serve became ready");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("confab did not stop within 10 s of SIGTERM");
    });
    assert!(status.success(), "{status:?}");
}
