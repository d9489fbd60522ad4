use reqwest::{Method, StatusCode};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_message_round_trip_between_two_users() {
    let app = spawn_app().await;
    let tenant = app.chat_tenant().await;
    let alice = app.user(&tenant, "alice").await;
    let bob = app.user(&tenant, "bob").await;
    let conversation = app.conversation(&alice, "group", &["bob"]).await;
    let sent = app.say(&alice, &conversation, "Hello Bob").await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["seq"], 1);
    let history = app.call(Method::GET, &format!("/v1/conversations/{conversation}/messages"), &bob, None).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.body["items"][0]["text"], "Hello Bob");
    let unread = app.call(Method::GET, "/v1/me/unread", &bob, None).await;
    assert_eq!(unread.body["total_unread_count"], 1, "{}", unread.text);
    let mine = app.call(Method::GET, "/v1/me/conversations", &bob, None).await;
    assert_eq!(mine.body["items"][0]["membership"]["unread_count"], 1, "{}", mine.text);
    let found = app.call(Method::GET, "/v1/search/messages?q=hello", &bob, None).await;
    assert_eq!(found.body["items"].as_array().unwrap().len(), 1, "{}", found.text);
}
