//! The load generator's HTTP/1.1 client: keep-alive connections to the confab nodes, one request
//! at a time on each, and nothing else (no redirects, proxies, TLS or compression).
//!
//! The load generator shares the machine's two cores with the stack it measures, so every
//! microsecond it spends per request is taken from what is measured. A general-purpose client
//! (pool and service layers, header maps, body streams) cost about half of the load generator's
//! CPU at S1's ceiling; writing a request as one buffer and reading the answer's head with
//! `httparse` costs a fraction of that.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An idle connection older than this is closed rather than reused: well before confab's
/// keep-alive (75 s) closes it, so no request is sent into a connection the server is closing.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// Longest a request may take, connecting and reading the whole answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per node.
const IDLE_PER_NODE: usize = 1024;
/// Most header lines read in an answer.
const MAX_HEADERS: usize = 32;
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// A request method.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Method(&'static str);

impl Method {
    pub const GET: Method = Method("GET");
    pub const POST: Method = Method("POST");
    pub const PUT: Method = Method("PUT");
    pub const PATCH: Method = Method("PATCH");
    pub const DELETE: Method = Method("DELETE");
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A whole answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Connection {
    stream: TcpStream,
    /// Bytes read past the last answer (none, unless the server misbehaves) and the read buffer.
    read: Vec<u8>,
}

/// Keep-alive connections by node (`host:port`).
#[derive(Default)]
pub struct Http1 {
    idle: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
}

impl Http1 {
    /// `method base+path` as `token`, with a JSON `body`; the whole answer, whatever its status.
    pub async fn request(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        let authority = base.strip_prefix("http://").ok_or_else(|| format!("not an http:// address: {base}"))?;
        let request = encode(method, authority, path, token, body);
        let exchange = async {
            let mut connection = match self.take_idle(authority) {
                Some(connection) => connection,
                None => connect(authority).await?,
            };
            connection.stream.write_all(&request).await.map_err(|e| format!("sending: {e}"))?;
            let (answer, keep) = read_answer(&mut connection).await?;
            if keep {
                self.put_idle(authority, connection);
            }
            Ok(answer)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {} s", REQUEST_TIMEOUT.as_secs())))
    }

    fn take_idle(&self, authority: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("idle connections lock");
        let connections = idle.get_mut(authority)?;
        while let Some((connection, since)) = connections.pop() {
            if since.elapsed() < IDLE_MAX {
                return Some(connection);
            }
        }
        None
    }

    fn put_idle(&self, authority: &str, connection: Connection) {
        let mut idle = self.idle.lock().expect("idle connections lock");
        let connections = idle.entry(authority.to_string()).or_default();
        if connections.len() < IDLE_PER_NODE {
            connections.push((connection, Instant::now()));
        }
    }
}

async fn connect(authority: &str) -> Result<Connection, String> {
    let stream = TcpStream::connect(authority).await.map_err(|e| format!("connecting to {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("connecting to {authority}: {e}"))?;
    Ok(Connection { stream, read: Vec::with_capacity(READ_CHUNK) })
}

fn encode(method: Method, authority: &str, path: &str, token: &str, body: Option<&[u8]>) -> Vec<u8> {
    let body = body.unwrap_or_default();
    let mut request = Vec::with_capacity(160 + path.len() + token.len() + body.len());
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n");
    request.extend_from_slice(head.as_bytes());
    if !body.is_empty() {
        request.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    if !body.is_empty() || method != Method::GET {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

/// How an answer's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Reads one answer; also says whether the connection may carry another request.
async fn read_answer(connection: &mut Connection) -> Result<(Answer, bool), String> {
    let (status, head_len, framing, mut keep) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&connection.read).map_err(|e| format!("unreadable answer: {e}"))? {
            httparse::Status::Complete(head_len) => {
                let status = response.code.unwrap_or_default();
                let (framing, keep) = framing_of(status, response.headers)?;
                break (status, head_len, framing, keep);
            }
            httparse::Status::Partial => {
                if fill(connection).await? == 0 {
                    return Err("the connection closed before an answer".into());
                }
            }
        }
    };
    let body = match framing {
        Framing::Length(length) => {
            while connection.read.len() < head_len + length {
                if fill(connection).await? == 0 {
                    return Err("the connection closed inside an answer".into());
                }
            }
            connection.read[head_len..head_len + length].to_vec()
        }
        Framing::Chunked => read_chunked(connection, head_len).await?,
        Framing::Close => {
            keep = false;
            while fill(connection).await? > 0 {}
            connection.read[head_len..].to_vec()
        }
    };
    let used = match framing {
        Framing::Length(length) => head_len + length,
        _ => connection.read.len(),
    };
    connection.read.drain(..used);
    Ok((Answer { status, body }, keep && connection.read.is_empty()))
}

fn framing_of(status: u16, headers: &[httparse::Header<'_>]) -> Result<(Framing, bool), String> {
    let mut framing = None;
    let mut keep = true;
    for header in headers {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| format!("unreadable content-length: {value}"))?;
            framing = Some(Framing::Length(length));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Some(Framing::Chunked);
        } else if header.name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep = false;
        }
    }
    // The client never sends HEAD, so only the status says an answer has no body.
    let bodiless = status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if bodiless { Framing::Length(0) } else { framing.unwrap_or(Framing::Close) };
    Ok((framing, keep))
}

/// Reads a chunked body starting at `start` of the read buffer; leaves the buffer holding
/// everything up to the end of the body (the caller drains it).
async fn read_chunked(connection: &mut Connection, start: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut at = start;
    loop {
        let line_end = loop {
            if let Some(end) = connection.read[at..].windows(2).position(|w| w == b"\r\n") {
                break at + end;
            }
            if fill(connection).await? == 0 {
                return Err("the connection closed inside a chunked answer".into());
            }
        };
        let size_text = std::str::from_utf8(&connection.read[at..line_end]).unwrap_or_default();
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("unreadable chunk size: {size_text}"))?;
        let data = line_end + 2;
        // The chunk's data and its CRLF (after the last chunk: the empty trailer's CRLF).
        while connection.read.len() < data + size + 2 {
            if fill(connection).await? == 0 {
                return Err("the connection closed inside a chunked answer".into());
            }
        }
        if size == 0 {
            connection.read.truncate(data + 2);
            return Ok(body);
        }
        body.extend_from_slice(&connection.read[data..data + size]);
        at = data + size + 2;
    }
}

/// Reads what the socket has into the read buffer; 0 when the server closed the connection.
async fn fill(connection: &mut Connection) -> Result<usize, String> {
    connection.read.reserve(READ_CHUNK);
    connection.stream.read_buf(&mut connection.read).await.map_err(|e| format!("reading: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next of `answers`.
    async fn serve(answers: Vec<&'static str>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap();
                    request.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                seen.push(String::from_utf8(request).unwrap());
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        (base, server)
    }

    #[tokio::test]
    async fn answers_of_each_framing_are_read_whole_on_one_kept_connection() {
        let (base, server) = serve(vec![
            "HTTP/1.1 201 Created\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{\"seq\": 17}",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n[1, \r\n3\r\n2, \r\n2\r\n3]\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n{\"e\": 1}\n",
        ])
        .await;
        let http = Http1::default();
        let created = http.request(&base, Method::POST, "/v1/x", "tok", Some(b"{\"a\":1}")).await.unwrap();
        assert_eq!((created.status, created.body.as_slice()), (201, b"{\"seq\": 17}".as_slice()));
        assert!(created.is_success());
        let listed = http.request(&base, Method::GET, "/v1/x?limit=3", "tok", None).await.unwrap();
        assert_eq!((listed.status, listed.body.as_slice()), (200, b"[1, 2, 3]".as_slice()));
        let deleted = http.request(&base, Method::DELETE, "/v1/x/1", "tok", None).await.unwrap();
        assert_eq!((deleted.status, deleted.body.len()), (204, 0));
        let missing = http.request(&base, Method::GET, "/v1/y", "tok", None).await.unwrap();
        assert_eq!(missing.status, 404);
        assert!(!missing.is_success());
        // All four went over the one connection the server accepted.
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 4);
        assert!(seen[0].starts_with("POST /v1/x HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].contains("Authorization: Bearer tok\r\n"));
        assert!(seen[0].contains("Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"));
        assert!(!seen[1].contains("Content-Length"), "a GET without a body says no length: {}", seen[1]);
        assert!(seen[2].contains("Content-Length: 0\r\n"), "a DELETE says its body is empty: {}", seen[2]);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_reused() {
        let (base, server) = serve(vec!["HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"]).await;
        let http = Http1::default();
        let answer = http.request(&base, Method::GET, "/", "tok", None).await.unwrap();
        assert_eq!(answer.body, b"ok");
        server.await.unwrap();
        assert!(http.take_idle(base.trim_start_matches("http://")).is_none());
        // The server is gone: the next request fails with a clear error instead of hanging.
        let err = http.request(&base, Method::GET, "/", "tok", None).await.err().unwrap();
        assert!(err.contains("connecting to"), "{err}");
    }
}
