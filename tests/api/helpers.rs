//! Starting confab for a test, and talking to it like a client would.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab::app::Application;
use confab::config::Settings;
use rand::distr::{Alphanumeric, SampleString};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub fn mongo_uri() -> String {
    std::env::var("CONFAB_TEST_MONGODB_URI")
        .expect("CONFAB_TEST_MONGODB_URI is not set: run the suite with ./scripts/test, which starts secantusd-rs")
}

pub fn redis_url() -> String {
    std::env::var("CONFAB_TEST_REDIS_URL")
        .expect("CONFAB_TEST_REDIS_URL is not set: run the suite with ./scripts/test, which starts redis-server")
}

pub fn random_lower(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len).to_lowercase()
}

/// A running node's address and what its tests need to talk to it (a clone outlives a
/// `ServeProcess` that is stopped).
#[derive(Clone)]
pub struct TestApp {
    pub address: String,
    pub operator_token: String,
    pub db_prefix: String,
    pub redis_prefix: String,
    pub settings: Settings,
    pub client: reqwest::Client,
}

/// The settings a test app runs with: a fresh database prefix and Redis prefix.
pub fn test_overrides() -> Vec<(&'static str, String)> {
    let db_prefix = format!("t{}_", random_lower(10));
    vec![
        ("server.port", "0".into()),
        ("server.workers", "1".into()),
        ("mongodb.uri", mongo_uri()),
        ("mongodb.db_prefix", db_prefix.clone()),
        ("redis.url", redis_url()),
        ("redis.key_prefix", format!("{db_prefix}:")),
        ("auth.operator_token", format!("cfo_{}", random_lower(40))),
        ("log.level", "warn".into()),
    ]
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts confab with extra `("section.key", value)` settings on top of `test_overrides`.
pub async fn spawn_app_with(extra: &[(&'static str, String)]) -> TestApp {
    let mut overrides = test_overrides();
    overrides.extend(extra.iter().cloned());
    let settings = Settings::load_with_overrides(None, &overrides).expect("test settings load");
    let app = Application::build(settings.clone()).await.expect("confab starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        operator_token: settings.auth.operator_token.expose().to_string(),
        db_prefix: settings.mongodb.db_prefix.clone(),
        redis_prefix: settings.redis.key_prefix.clone(),
        settings,
        client: reqwest::Client::new(),
    }
}

/// A response reduced to what tests look at.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The stable error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    /// The first field named in a `validation_failed` body.
    pub fn invalid_field(&self) -> &str {
        self.body["error"]["details"]["fields"][0]["field"].as_str().unwrap_or("<no field>")
    }
}

pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
}

/// A 422 `validation_failed` naming `field` first.
pub fn assert_invalid(reply: &Reply, field: &str) {
    assert_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(reply.invalid_field(), field, "{}", reply.text);
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.address))
    }

    pub async fn send(&self, builder: RequestBuilder) -> Reply {
        let response = builder.send().await.expect("request reaches confab");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body reads");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    /// `method path` with a bearer token and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        let mut builder = self.request(method, path).bearer_auth(token);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        self.send(builder).await
    }

    /// GETs `path` until `done` holds or five seconds pass, and returns the last reply: for what
    /// confab writes behind its answers (a conversation's `last_message` and `last_activity_at`,
    /// within `chat.record_interval_ms`).
    pub async fn get_until(&self, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Reply {
        let started = std::time::Instant::now();
        loop {
            let reply = self.call(Method::GET, path, token, None).await;
            if done(&reply.body) || started.elapsed() > std::time::Duration::from_secs(5) {
                return reply;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, &self.operator_token.clone(), body).await
    }

    /// Creates a tenant with a random id and returns the id.
    pub async fn create_tenant(&self) -> String {
        self.create_tenant_with(json!({})).await
    }

    /// Creates a tenant with a random id; `extra` fields are merged into the request.
    pub async fn create_tenant_with(&self, extra: Value) -> String {
        let id = format!("t-{}", random_lower(8));
        let mut body = json!({ "id": id, "name": format!("Tenant {id}") });
        if let (Some(map), Some(more)) = (body.as_object_mut(), extra.as_object()) {
            map.extend(more.clone());
        }
        let reply = self.admin(Method::POST, "/admin/v1/tenants", Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        id
    }

    /// Issues an API key through the operator API; `None` scopes means all.
    pub async fn issue_key(&self, tenant: &str, scopes: Option<&[&str]>) -> (String, Value) {
        let mut body = json!({ "name": "test key" });
        if let Some(scopes) = scopes {
            body["scopes"] = json!(scopes);
        }
        let reply = self.admin(Method::POST, &format!("/admin/v1/tenants/{tenant}/api-keys"), Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        (reply.body["key"].as_str().unwrap().to_string(), reply.body["api_key"].clone())
    }

    /// Follows `next_cursor` from `path` (which has a `?`), passing it as `cursor_param`, and
    /// returns every item in the order served. Asserts no page is larger than `limit`.
    pub async fn collect_pages(&self, path: &str, token: &str, cursor_param: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut next = path.to_string();
        loop {
            let page = self.call(Method::GET, &next, token, None).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            let batch = page.body["items"].as_array().expect("items").clone();
            assert!(batch.len() <= limit, "page larger than {limit}");
            items.extend(batch);
            match page.body["next_cursor"].as_str() {
                Some(cursor) => next = format!("{path}&{cursor_param}={cursor}"),
                None => return items,
            }
        }
    }

    /// Another confab node sharing this one's MongoDB databases, Redis keys and operator token.
    pub async fn second_node(&self) -> TestApp {
        self.second_node_with(&[]).await
    }

    /// `second_node` with extra settings.
    pub async fn second_node_with(&self, extra: &[(&'static str, String)]) -> TestApp {
        let mut settings = vec![
            ("mongodb.db_prefix", self.db_prefix.clone()),
            ("redis.key_prefix", self.redis_prefix.clone()),
            ("auth.operator_token", self.operator_token.clone()),
        ];
        settings.extend(extra.iter().cloned());
        spawn_app_with(&settings).await
    }

    pub async fn mongo(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(mongo_uri()).await.expect("mongo client")
    }

    pub fn platform_db_name(&self) -> String {
        format!("{}platform", self.db_prefix)
    }

    pub fn tenant_db_name(&self, tenant: &str) -> String {
        format!("{}t_{tenant}", self.db_prefix)
    }
}

/// A TCP relay in front of a real server (Redis, MongoDB) that a test can cut (every relayed connection dropped, new ones
/// refused) and later restore.
pub struct Relay {
    pub address: String,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Relay {
    pub async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (refusing, relayed) = (cut.clone(), live.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Checked and registered under the lock `cut` takes, so no connection slips past it.
                let mut relayed = relayed.lock().unwrap();
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                relayed.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self { address, cut, live, acceptor }
    }

    /// A relay in front of the suite's redis-server; returns it and the URL to give a node.
    pub async fn redis() -> (Self, String) {
        let url = redis_url();
        let target = url.trim_start_matches("redis://").trim_end_matches('/').to_string();
        let relay = Self::to(target).await;
        let relayed_url = format!("redis://{}", relay.address);
        (relay, relayed_url)
    }

    pub fn cut(&self) {
        let mut live = self.live.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for task in live.drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// A tenant with a server key holding every scope, for chat tests.
pub struct ChatTenant {
    pub id: String,
    pub key: String,
}

impl TestApp {
    pub async fn chat_tenant(&self) -> ChatTenant {
        let id = self.create_tenant().await;
        let (key, _) = self.issue_key(&id, None).await;
        ChatTenant { id, key }
    }

    /// A chat tenant whose request rate limit stays out of the way of a test that sends in a
    /// burst (the default, 1000 a second, is reached in well under a second here).
    pub async fn burst_chat_tenant(&self) -> ChatTenant {
        let id = self.create_tenant_with(json!({"limits": {"requests_per_second": 100_000}})).await;
        let (key, _) = self.issue_key(&id, None).await;
        ChatTenant { id, key }
    }

    /// Creates (or replaces) user `id` and returns a fresh token for them.
    pub async fn user(&self, tenant: &ChatTenant, id: &str) -> String {
        let put =
            self.call(Method::PUT, &format!("/v1/users/{id}"), &tenant.key, Some(json!({"display_name": id}))).await;
        assert!(put.status.is_success(), "{}", put.text);
        let token = self.call(Method::POST, &format!("/v1/users/{id}/tokens"), &tenant.key, None).await;
        assert_eq!(token.status, StatusCode::CREATED, "{}", token.text);
        token.body["token"].as_str().unwrap().to_string()
    }

    /// Creates a conversation as the holder of `token` and returns its id.
    pub async fn conversation(&self, token: &str, kind: &str, members: &[&str]) -> String {
        let body = json!({"type": kind, "members": members, "name": format!("{kind} chat")});
        let reply = self.call(Method::POST, "/v1/conversations", token, Some(body)).await;
        assert!(reply.status.is_success(), "{}", reply.text);
        reply.body["id"].as_str().unwrap().to_string()
    }

    /// Sends a text message and returns the reply.
    pub async fn say(&self, token: &str, conversation: &str, text: &str) -> Reply {
        let body = json!({"client_msg_id": format!("c-{}", random_lower(12)), "text": text});
        self.call(Method::POST, &format!("/v1/conversations/{conversation}/messages"), token, Some(body)).await
    }

    /// `say`, then waits until the conversation has recorded the message as its newest (records
    /// are written behind the answers): for tests of what follows from the record, such as
    /// previews and the order of conversations by activity.
    pub async fn say_recorded(&self, token: &str, conversation: &str, text: &str) -> Reply {
        let sent = self.say(token, conversation, text).await;
        if let Some(seq) = sent.body["seq"].as_i64() {
            let path = format!("/v1/conversations/{conversation}");
            let recorded = self.get_until(&path, token, |v| v["last_message"]["seq"].as_i64() >= Some(seq)).await;
            assert!(recorded.body["last_message"]["seq"].as_i64() >= Some(seq), "never recorded: {}", recorded.text);
        }
        sent
    }
}

/// `confab serve` as its own process (its memory can be measured, it can be stopped with a
/// signal); killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub app: TestApp,
}

impl ServeProcess {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let settings = Settings::load_with_overrides(None, &test_overrides()).expect("test settings load");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("serve")
            .env("CONFAB__MONGODB__URI", &settings.mongodb.uri)
            .env("CONFAB__MONGODB__DB_PREFIX", &settings.mongodb.db_prefix)
            .env("CONFAB__REDIS__URL", &settings.redis.url)
            .env("CONFAB__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
            .env("CONFAB__AUTH__OPERATOR_TOKEN", settings.auth.operator_token.expose())
            .env("CONFAB__SERVER__PORT", port.to_string())
            .env("CONFAB__LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            operator_token: settings.auth.operator_token.expose().to_string(),
            db_prefix: settings.mongodb.db_prefix.clone(),
            redis_prefix: settings.redis.key_prefix.clone(),
            settings,
            client: reqwest::Client::new(),
        };
        let mut process = Self { child, app };
        let url = format!("{}/health/ready", process.app.address);
        for _ in 0..150 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == StatusCode::OK
            {
                return process;
            }
            assert!(process.child.try_wait().unwrap().is_none(), "confab serve exited early");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("confab serve did not become ready in 15 s");
    }

    /// The process's peak resident set size (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("confab serve did not stop within 15 s of SIGTERM");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
