//! HTTP connection handling below the routes: idle connections, slow request heads, keep-alive.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with};

/// confab with a keep-alive of `keep_alive_secs` and a 300 ms request-head timeout.
async fn app_with_keep_alive(keep_alive_secs: u64) -> TestApp {
    let timeouts = [
        ("server.keep_alive_secs", keep_alive_secs.to_string()),
        ("server.request_head_timeout_ms", "300".to_string()),
    ];
    spawn_app_with(&timeouts).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://")).await.expect("connects")
}

/// Everything the server sends until it closes the connection (or 10 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was not closed within 10 s");
    String::from_utf8_lossy(&received).into_owned()
}

/// One request on an open connection; returns the response's head.
async fn exchange(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /health/live HTTP/1.1\r\nhost: confab\r\n\r\n").await.expect("request written");
    let mut buffer = vec![0u8; 4096];
    let mut received = String::new();
    while !received.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(n > 0, "closed before answering; got {received:?}");
        received.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    received
}

/// A pooling client may open a connection before it has a request for it; answering that
/// connection with 408 would be read as the answer to the request it sends in just then.
#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_without_an_answer() {
    let app = app_with_keep_alive(2).await;
    let mut stream = connect(&app).await;
    let opened = Instant::now();

    let received = read_until_closed(&mut stream).await;

    assert_eq!(received, "", "a silent connection got an answer");
    assert!(
        opened.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, before keep_alive_secs",
        opened.elapsed()
    );
}

#[tokio::test]
async fn a_connection_quiet_for_less_than_the_keep_alive_serves_its_first_request() {
    let app = app_with_keep_alive(3).await;
    let mut stream = connect(&app).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let head = exchange(&mut stream).await;

    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_request_head_left_unfinished_gets_408() {
    let app = app_with_keep_alive(2).await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health/live HTTP/1.1\r\nhost: con").await.unwrap();

    let received = read_until_closed(&mut stream).await;

    assert!(received.starts_with("HTTP/1.1 408"), "{received:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_serves_again_and_is_closed_quietly_once_idle() {
    let app = app_with_keep_alive(2).await;
    let mut stream = connect(&app).await;
    assert!(exchange(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(exchange(&mut stream).await.starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();

    let received = read_until_closed(&mut stream).await;

    assert!(received.is_empty(), "an idle kept-alive connection got {received:?}");
    // actix reckons the keep-alive from a clock it refreshes every 500 ms.
    assert!(idle_from.elapsed() >= Duration::from_millis(1400), "closed after {:?}", idle_from.elapsed());
}
