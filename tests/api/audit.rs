use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn key_and_operator_actions_are_audited_with_their_request_ids() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, meta) = app.issue_key(&tenant, None).await;
    let id = meta["id"].as_str().unwrap();
    let created = app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": "second"}))).await;
    let second = created.body["api_key"]["id"].as_str().unwrap().to_string();
    let rotated = app
        .send(
            app.request(Method::POST, &format!("/v1/api-keys/{id}/rotate"))
                .bearer_auth(&key)
                .header("x-request-id", "rotate-1"),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    app.call(Method::DELETE, &format!("/v1/api-keys/{second}"), &key, None).await;
    app.admin(Method::PATCH, &format!("/admin/v1/tenants/{tenant}"), Some(json!({"plan": "pro"}))).await;

    let log = app.call(Method::GET, "/v1/audit-log", &key, None).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let items = log.body["items"].as_array().unwrap();
    let actions: Vec<&str> = items.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["tenant.update", "api_key.revoke", "api_key.rotate", "api_key.create", "api_key.create", "tenant.create"]
    );
    let seqs: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [6, 5, 4, 3, 2, 1]);
    let rotate = &items[2];
    assert_eq!(rotate["request_id"], "rotate-1");
    assert_eq!(rotate["actor"], json!({"kind": "api_key", "id": id}));
    assert_eq!(rotate["target"], json!({"kind": "api_key", "id": id}));
    assert_eq!(items[0]["actor"]["kind"], "operator");
    for pair in items.windows(2) {
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }
}

#[tokio::test]
async fn the_audit_log_pages_newest_first() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, _) = app.issue_key(&tenant, None).await;
    for n in 0..5 {
        app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": format!("k{n}")}))).await;
    }
    let seqs: Vec<i64> = app
        .collect_pages("/v1/audit-log?limit=3", &key, "before", 3)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [7, 6, 5, 4, 3, 2, 1]);
}

#[tokio::test]
async fn verification_detects_a_tampered_entry() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let (key, _) = app.issue_key(&tenant, None).await;
    for n in 0..3 {
        app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": format!("k{n}")}))).await;
    }
    let verify_path = format!("/admin/v1/tenants/{tenant}/audit-log/verify");
    let intact = app.admin(Method::GET, &verify_path, None).await;
    assert_eq!(intact.status, StatusCode::OK, "{}", intact.text);
    assert_eq!(intact.body["valid"], true);
    assert_eq!(intact.body["entries_checked"], 5);
    let by_tenant = app.call(Method::GET, "/v1/audit-log/verify", &key, None).await;
    assert_eq!(by_tenant.body["valid"], true);

    let log = app.mongo().await.database(&app.platform_db_name()).collection::<Document>("audit_log");
    log.update_one(doc! {"tenant_id": &tenant, "seq": 3}, doc! {"$set": {"details.name": "innocent"}}).await.unwrap();
    let tampered = app.admin(Method::GET, &verify_path, None).await;
    assert_eq!(tampered.body["valid"], false);
    assert_eq!(tampered.body["first_invalid_seq"], 3);

    log.update_one(doc! {"tenant_id": &tenant, "seq": 3}, doc! {"$set": {"details.name": "k0"}}).await.unwrap();
    assert_eq!(app.admin(Method::GET, &verify_path, None).await.body["valid"], true, "restored entry verifies again");
    log.delete_one(doc! {"tenant_id": &tenant, "seq": 5}).await.unwrap();
    let truncated = app.admin(Method::GET, &verify_path, None).await;
    assert_eq!(truncated.body["valid"], false, "a removed newest entry is detected: {}", truncated.text);
}

#[tokio::test]
async fn concurrent_appends_keep_the_chain_gapless_and_valid() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(json!({"limits": {"max_api_keys": 100}})).await;
    let (key, _) = app.issue_key(&tenant, None).await;
    let creations =
        (0..16).map(|n| app.call(Method::POST, "/v1/api-keys", &key, Some(json!({"name": format!("p{n}")}))));
    for reply in futures_util::future::join_all(creations).await {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let verified = app.admin(Method::GET, &format!("/admin/v1/tenants/{tenant}/audit-log/verify"), None).await;
    assert_eq!(verified.body["valid"], true, "{}", verified.text);
    assert_eq!(verified.body["entries_checked"], 18);
    assert_eq!(verified.body["head_seq"], 18);
}
