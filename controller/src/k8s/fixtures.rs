//! Test fixtures: a Kubernetes API server played by kube-rs's mock service
//! (tower-test). No API server can run on the machines the tests run on, so
//! each test lists the exchanges it expects, in order; the mock asserts
//! every request's method, path, query and body and answers as told.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the client must make, and the answer it gets.
pub struct Exchange {
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// `key=value` pairs the query must contain.
    pub query: Vec<&'static str>,
    /// The exact JSON body expected (`None`: no body checked).
    pub body: Option<Value>,
    /// Content type the request must carry, when given.
    pub content_type: Option<&'static str>,
    pub status: u16,
    pub response: Value,
}

impl Exchange {
    pub fn get(path: impl Into<String>, status: u16, response: Value) -> Exchange {
        Exchange {
            method: Method::GET,
            path: path.into(),
            query: vec![],
            body: None,
            content_type: None,
            status,
            response,
        }
    }

    pub fn patch(
        path: impl Into<String>,
        content_type: &'static str,
        body: Value,
        status: u16,
        response: Value,
    ) -> Exchange {
        Exchange {
            method: Method::PATCH,
            path: path.into(),
            query: vec!["fieldManager=canary-controller"],
            body: Some(body),
            content_type: Some(content_type),
            status,
            response,
        }
    }
}

/// What a request carried (for checks beyond the exact body).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// A client talking to the mock, and the mock's handle.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Plays the API server for `exchanges`, in order; returns what was seen.
/// Panics (failing the test) on any unexpected request.
pub fn serve(mut handle: Handle, exchanges: Vec<Exchange>) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, want) in exchanges.into_iter().enumerate() {
            let (request, send) =
                match tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request()).await {
                    Ok(Some(r)) => r,
                    _ => panic!("exchange {i}: expected {} {} but no request came", want.method, want.path),
                };
            let content_type =
                request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let Seen { method, path, query, body } = read(request).await;
            assert_eq!((&method, &path), (&want.method, &want.path), "exchange {i}: request");
            for q in &want.query {
                assert!(query.split('&').any(|p| p == *q), "exchange {i}: query `{query}` lacks {q}");
            }
            if let Some(ct) = want.content_type {
                assert_eq!(content_type.as_deref(), Some(ct), "exchange {i}: content type");
            }
            if let Some(b) = &want.body {
                assert_eq!(&body, b, "exchange {i}: body of {method} {path}");
            }
            seen.push(Seen { method, path, query, body });
            send.send_response(json_response(want.status, &want.response));
        }
        seen
    })
}

async fn read(request: Request<Body>) -> Seen {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    Seen { method, path, query, body }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// How [`respond`] answers one request.
pub enum Reply {
    Json(u16, Value),
    /// A watch: these events, one JSON line each, then the stream ends.
    Events(Vec<Value>),
    /// Never answered (a watch left open until the test ends).
    Hold,
}

/// Plays the API server for clients that send requests concurrently and in
/// no fixed order (the controller runtime): `answer` replies to each; every
/// request is also sent on the returned channel, for the test to wait on.
pub fn respond(
    mut handle: Handle,
    mut answer: impl FnMut(&Seen) -> Reply + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let seen = read(request).await;
            match answer(&seen) {
                Reply::Json(status, body) => send.send_response(json_response(status, &body)),
                Reply::Events(events) => {
                    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
                    send.send_response(Response::builder().status(200).body(Body::from(lines.into_bytes())).unwrap())
                }
                Reply::Hold => held.push(send),
            }
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    rx
}

/// A Kubernetes `Status` error body, as the API server sends it.
pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    })
}
