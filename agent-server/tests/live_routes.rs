//! The desktop and Jupyter routes over real sockets: the live router on 127.0.0.1, its services
//! on local TCP servers (a VNC-like greeter that echoes, an HTTP + WebSocket app standing in for
//! Jupyter), a real WebSocket client and a real HTTP client. (The same routes on the real engine,
//! with the real VNC server and Jupyter inside a sandbox, are in `desktop_e2e`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_core::JobId;
use agent_server::access::{AccessService, AccessSigner, KEY_BYTES};
use agent_server::live::{self, BoxServiceStream, JobServices, LiveState, ServiceError};
use agent_server::SecretString;
use async_trait::async_trait;
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const API_TOKEN: &str = "the-api-token";
const JUPYTER_SECRET: &str = "jupyter-secret-123";

struct LocalServices {
    job: JobId,
    vnc: SocketAddr,
    vnc_view: SocketAddr,
    jupyter: SocketAddr,
}

#[async_trait]
impl JobServices for LocalServices {
    async fn check(&self, job: JobId, _service: AccessService) -> Result<(), ServiceError> {
        if job == self.job {
            Ok(())
        } else {
            Err(ServiceError::UnknownJob(job))
        }
    }

    async fn connect(
        &self,
        job: JobId,
        service: AccessService,
        port: u16,
    ) -> Result<BoxServiceStream, ServiceError> {
        self.check(job, service).await?;
        let addr = match port {
            live::VNC_PORT => self.vnc,
            live::VNC_VIEW_PORT => self.vnc_view,
            live::JUPYTER_PORT => self.jupyter,
            _ => unreachable!("port {port}"),
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ServiceError::Unreachable {
                job,
                service,
                message: e.to_string(),
            })?;
        Ok(Box::new(stream))
    }

    async fn jupyter_token(&self, job: JobId) -> Result<String, ServiceError> {
        self.check(job, AccessService::Jupyter).await?;
        Ok(JUPYTER_SECRET.to_string())
    }
}

/// Greets like a VNC server (`RFB 003.008\n`, then `tag`) and echoes every byte.
async fn greeter(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                conn.write_all(b"RFB 003.008\n").await.ok();
                conn.write_all(tag).await.ok();
                let (mut r, mut w) = conn.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    addr
}

/// Stands in for Jupyter: reports what it received; `/jupyter/{id}/ws` echoes text messages.
async fn fake_jupyter() -> SocketAddr {
    async fn report(headers: HeaderMap, uri: axum::http::Uri) -> axum::Json<serde_json::Value> {
        let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap_or("").to_string());
        axum::Json(serde_json::json!({
            "uri": uri.to_string(),
            "authorization": h("authorization"),
            "cookie": h("cookie"),
            "host": h("host"),
        }))
    }
    async fn ws(up: WebSocketUpgrade, headers: HeaderMap) -> axum::response::Response {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        up.protocols(["v1.kernel.websocket.jupyter.org"])
            .on_upgrade(move |mut socket| async move {
                socket
                    .send(AxMessage::Text(format!("auth={auth}").into()))
                    .await
                    .ok();
                while let Some(Ok(msg)) = socket.next().await {
                    if let AxMessage::Text(t) = msg {
                        socket
                            .send(AxMessage::Text(format!("echo:{t}").into()))
                            .await
                            .ok();
                    }
                }
            })
    }
    let app = axum::Router::new()
        .route("/jupyter/{id}/ws", get(ws))
        .route("/jupyter/{id}/{*rest}", any(report));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    addr
}

struct Fixture {
    base: String,
    job: JobId,
    signer: AccessSigner,
    http: reqwest::Client,
}

async fn start(api_token: Option<&str>) -> Fixture {
    let job = JobId::new();
    let services = LocalServices {
        job,
        vnc: greeter(b"").await,
        vnc_view: greeter(b"VIEW").await,
        jupyter: fake_jupyter().await,
    };
    let signer = AccessSigner::with_key([42; KEY_BYTES]);
    let state = LiveState {
        signer: signer.clone(),
        api_token: api_token.map(SecretString::from),
        services: Arc::new(services),
    };
    let app = live::routes::<LiveState>().with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Fixture {
        base: format!("http://{addr}"),
        job,
        signer,
        http,
    }
}

impl Fixture {
    async fn access(&self, service: &str, view_only: bool) -> serde_json::Value {
        let resp = self
            .http
            .post(format!("{}/access/{}", self.base, self.job))
            .json(&serde_json::json!({"service": service, "view_only": view_only, "ttl_secs": 60}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// `GET path` on the server, with `cookie` if given.
    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }
}

async fn read_exactly(
    ws: &mut (impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
    n: usize,
) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("data within 10 s")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn the_vnc_websocket_relays_bytes_exactly_both_ways() {
    let f = start(None).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(f.ws_url(&format!("/desktop/{}/websockify", f.job)))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(read_exactly(&mut ws, 12).await, b"RFB 003.008\n");

    // 4 MiB of patterned bytes in odd-sized messages come back unchanged.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let (mut tx, mut rx) = ws.split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(50_001) {
            tx.send(Message::Binary(chunk.to_vec().into()))
                .await
                .unwrap();
        }
        tx
    });
    let echoed = read_exactly(&mut rx, data.len()).await;
    assert!(echoed == data, "the echo differs");
    let mut tx = writer.await.unwrap();
    tx.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn a_view_only_token_reaches_the_view_only_server_and_the_page_says_so() {
    let f = start(Some(API_TOKEN)).await;
    let view = f.access("desktop", true).await;
    assert_eq!(view["view_only"], true);
    let token = view["token"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(
        f.ws_url(&format!("/desktop/{}/websockify?access={token}", f.job)),
    )
    .await
    .unwrap();
    assert_eq!(read_exactly(&mut ws, 16).await, b"RFB 003.008\nVIEW");

    let full = f.access("desktop", false).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(f.ws_url(&format!(
        "/desktop/{}/websockify?access={}",
        f.job,
        full["token"].as_str().unwrap()
    )))
    .await
    .unwrap();
    ws.send(Message::Binary(b"x".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_exactly(&mut ws, 13).await, b"RFB 003.008\nx");
}

#[tokio::test]
async fn the_page_load_trades_the_token_for_a_cookie_and_serves_the_viewer() {
    let f = start(Some(API_TOKEN)).await;
    let grant = f.access("desktop", true).await;
    let resp = f.get(grant["url"].as_str().unwrap(), None).await;
    assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("/desktop/{}/", f.job),
        "the token leaves the URL"
    );
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/desktop/{}/", f.job)),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();

    let page = f.get(&location, Some(&pair)).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-view-only=\"true\""), "{html}");
    assert!(html.contains(&f.job.to_string()));
    // The viewer's script and noVNC's client come from the server itself.
    for asset in [
        "viewer.js",
        "novnc/core/rfb.js",
        "novnc/vendor/pako/lib/zlib/inflate.js",
    ] {
        let resp = f
            .get(&format!("/desktop/{}/{asset}", f.job), Some(&pair))
            .await;
        assert_eq!(resp.status(), 200, "{asset}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
    }
    // Without the cookie: refused.
    let resp = f.get(&format!("/desktop/{}/viewer.js", f.job), None).await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn missing_expired_forged_and_other_jobs_tokens_are_refused() {
    let f = start(Some(API_TOKEN)).await;
    let path = format!("/desktop/{}/websockify", f.job);
    let expect_refused = |url: String, code: &'static str| {
        let http = f.http.clone();
        async move {
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 401, "{url}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{url}: {body}");
        }
    };
    expect_refused(format!("{}{path}", f.base), "access_required").await;
    // Expired: signed with the right key, an expiry in the past.
    let now = agent_server::access::unix_now();
    let (expired, _) = f.signer.issue(
        f.job,
        AccessService::Desktop,
        false,
        now - 120,
        Duration::from_secs(60),
    );
    expect_refused(
        format!("{}{path}?access={expired}", f.base),
        "access_expired",
    )
    .await;
    // Another job's token, and a Jupyter token on the desktop.
    let (other, _) = f.signer.issue(
        JobId::new(),
        AccessService::Desktop,
        false,
        now,
        Duration::from_secs(60),
    );
    expect_refused(format!("{}{path}?access={other}", f.base), "access_refused").await;
    let jupyter = f.access("jupyter", false).await;
    let jt = jupyter["token"].as_str().unwrap();
    expect_refused(format!("{}{path}?access={jt}", f.base), "access_refused").await;
    expect_refused(
        format!("{}/jupyter/{}/lab?access=1.f.AAAA", f.base, f.job),
        "access_refused",
    )
    .await;
    // The WebSocket handshake itself is refused, with no upgrade.
    let err = tokio_tungstenite::connect_async(f.ws_url(&path))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    // The API's bearer token opens the paths too (for the CLI).
    let mut req = f.ws_url(&path).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {API_TOKEN}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(read_exactly(&mut ws, 12).await, b"RFB 003.008\n");
    // Unknown jobs get no token.
    let resp = f
        .http
        .post(format!("{}/access/{}", f.base, JobId::new()))
        .json(&serde_json::json!({"service": "desktop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn jupyter_is_proxied_with_its_secret_in_a_header_and_websockets_work() {
    let f = start(Some(API_TOKEN)).await;
    let grant = f.access("jupyter", false).await;
    let url = grant["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("/jupyter/{}/lab?access=", f.job)),
        "{url}"
    );
    let resp = f.get(url, None).await;
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(cookie.contains(&format!("Path=/jupyter/{}/", f.job)));

    let status = format!("/jupyter/{}/api/status?x=1", f.job);
    let resp = f.get(&status, Some(&format!("_xsrf=abc; {pair}"))).await;
    assert_eq!(resp.status(), 200);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["uri"], format!("/jupyter/{}/api/status?x=1", f.job));
    assert_eq!(seen["authorization"], format!("token {JUPYTER_SECRET}"));
    assert_eq!(
        seen["cookie"], "_xsrf=abc",
        "the access cookie is not passed on"
    );
    assert!(seen["host"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A WebSocket through the proxy, with its subprotocol, the secret added by the server.
    let token = grant["token"].as_str().unwrap();
    let mut req = f
        .ws_url(&format!("/jupyter/{}/ws?access={token}", f.job))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v1.kernel.websocket.jupyter.org".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v1.kernel.websocket.jupyter.org"
    );
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        Message::Text(format!("auth=token {JUPYTER_SECRET}").into())
    );
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("echo:hi".into())
    );
}

#[tokio::test]
async fn the_relay_closes_the_socket_when_the_service_closes() {
    // A service that greets and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        c.write_all(b"bye").await.unwrap();
        let mut buf = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await;
    });
    let job = JobId::new();
    let services = LocalServices {
        job,
        vnc: addr,
        vnc_view: addr,
        jupyter: addr,
    };
    let state = LiveState {
        signer: AccessSigner::random(),
        api_token: None,
        services: Arc::new(services),
    };
    let app = live::routes::<LiveState>().with_state(state);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{base}/desktop/{job}/websockify"))
            .await
            .unwrap();
    assert_eq!(read_exactly(&mut ws, 3).await, b"bye");
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
}
