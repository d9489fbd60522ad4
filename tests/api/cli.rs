//! The `confab` binary itself: `tenants apply` manifests and `serve` with graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
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
