//! Tenant B's credentials never reach tenant A's data: ids answer 404, lists show nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn another_tenants_key_ids_answer_404_and_change_nothing() {
    let app = spawn_app().await;
    let a = app.create_tenant().await;
    let b = app.create_tenant().await;
    let (a_key, a_meta) = app.issue_key(&a, None).await;
    let (b_key, _) = app.issue_key(&b, None).await;
    let a_id = a_meta["id"].as_str().unwrap();

    let rotate = app.call(Method::POST, &format!("/v1/api-keys/{a_id}/rotate"), &b_key, None).await;
    assert_eq!(rotate.status, StatusCode::NOT_FOUND, "{}", rotate.text);
    assert_eq!(rotate.code(), "not_found");
    let revoke = app.call(Method::DELETE, &format!("/v1/api-keys/{a_id}"), &b_key, None).await;
    assert_eq!(revoke.status, StatusCode::NOT_FOUND);

    let a_list = app.call(Method::GET, "/v1/api-keys", &a_key, None).await;
    assert_eq!(a_list.status, StatusCode::OK, "A's key still works");
    let a_entry = &a_list.body["items"][0];
    assert_eq!(a_entry["revoked"], false);
    assert!(a_entry["rotated_at"].is_null());

    let b_list = app.call(Method::GET, "/v1/api-keys", &b_key, None).await;
    let b_ids: Vec<&str> = b_list.body["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert!(!b_ids.contains(&a_id));
    assert_eq!(b_ids.len(), 1);

    let b_log = app.call(Method::GET, "/v1/audit-log", &b_key, None).await;
    for entry in b_log.body["items"].as_array().unwrap() {
        assert_ne!(entry["target"]["id"], a_id);
        assert_ne!(entry["target"]["id"], a.as_str());
    }
    let a_log = app.call(Method::GET, "/v1/audit-log", &a_key, None).await;
    assert_eq!(a_log.body["items"].as_array().unwrap().len(), 2, "tenant.create and api_key.create only");
}

#[tokio::test]
async fn cursors_from_another_tenant_reveal_nothing() {
    let app = spawn_app().await;
    let a = app.create_tenant().await;
    let b = app.create_tenant().await;
    let (a_key, _) = app.issue_key(&a, None).await;
    for n in 0..3 {
        app.call(Method::POST, "/v1/api-keys", &a_key, Some(json!({"name": format!("a{n}")}))).await;
    }
    let (b_key, _) = app.issue_key(&b, None).await;
    let b_page = app.call(Method::GET, "/v1/api-keys?after=0", &b_key, None).await;
    assert_eq!(b_page.body["items"].as_array().unwrap().len(), 1);
    let b_audit = app.call(Method::GET, "/v1/audit-log?before=1000", &b_key, None).await;
    assert_eq!(b_audit.body["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tenants_get_separate_databases() {
    let app = spawn_app().await;
    let a = app.create_tenant().await;
    let b = app.create_tenant().await;
    let databases = app.mongo().await.list_database_names().await.unwrap();
    assert!(databases.contains(&app.tenant_db_name(&a)));
    assert!(databases.contains(&app.tenant_db_name(&b)));
    app.admin(Method::DELETE, &format!("/admin/v1/tenants/{a}"), None).await;
    let databases = app.mongo().await.list_database_names().await.unwrap();
    assert!(!databases.contains(&app.tenant_db_name(&a)));
    assert!(databases.contains(&app.tenant_db_name(&b)), "deleting A leaves B alone");
}
