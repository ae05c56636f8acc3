//! `agent desktop`, `agent jupyter` and `agent release`: a job's live desktop and notebook.
//!
//! `agent desktop ID` prints a signed URL of the noVNC viewer; `--listen 127.0.0.1:6080` instead
//! serves the desktop's VNC (RFB) on that local address, each connection relayed over the
//! server's WebSocket (`/desktop/{id}/websockify`), so any VNC client can connect to it. Every
//! connection asks for a fresh short-lived token; the API token never goes into a URL.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use agent_core::JobId;

use super::{fail, print_json, reported, Exit};
use crate::access::AccessService;
use crate::client::Client;
use crate::live::{AccessRequest, AccessResponse, ACCESS_PARAM};

async fn access(
    client: &Client,
    id: JobId,
    service: AccessService,
    view_only: bool,
) -> Result<AccessResponse, crate::client::ClientError> {
    client
        .access(
            id,
            &AccessRequest {
                service,
                view_only,
                ttl_secs: None,
            },
        )
        .await
}

/// `agent desktop ID` / `agent jupyter ID`: prints the signed URL.
pub(super) async fn open(
    client: &Client,
    id: JobId,
    service: AccessService,
    view_only: bool,
    json: bool,
) -> Result<Exit, Exit> {
    let r = reported(access(client, id, service, view_only).await)?;
    let url = format!("{}{}", client.base_url(), r.url);
    if json {
        print_json(&serde_json::json!({
            "job_id": id,
            "service": service,
            "url": url,
            "expires_at": r.expires_at,
            "view_only": r.view_only,
        }));
    } else {
        println!("{url}");
    }
    Ok(Exit::Ok)
}

/// `agent release ID`.
pub(super) async fn release(client: &Client, id: JobId, json: bool) -> Result<Exit, Exit> {
    let r = reported(client.release(id).await)?;
    if json {
        print_json(&r);
    } else if r.released {
        println!("job {id}: sandbox released");
    } else {
        println!("job {id}: no sandbox to release");
    }
    Ok(Exit::Ok)
}

/// `agent desktop ID --listen ADDR`: forwards local VNC connections until interrupted.
pub(super) async fn forward_desktop(
    client: Client,
    id: JobId,
    view_only: bool,
    listen: SocketAddr,
    json: bool,
) -> Result<Exit, Exit> {
    // Fails early (unknown job, no desktop asked for) before listening.
    reported(access(&client, id, AccessService::Desktop, view_only).await)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| fail(Exit::Usage, format!("cannot listen on {listen}: {e}")))?;
    let local = listener.local_addr().unwrap_or(listen);
    if json {
        print_json(&serde_json::json!({"job_id": id, "listen": local.to_string()}));
    } else {
        println!("forwarding vnc://{local} to job {id}'s desktop; Ctrl-C stops");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = relay(&client, id, view_only, tcp).await {
                            eprintln!("connection from {peer}: {e}");
                        }
                    });
                }
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Ok),
        }
    }
}

/// The WebSocket URL of the desktop's VNC relay, with a fresh token.
fn websocket_url(base: &str, id: JobId, token: &str) -> String {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.strip_prefix("http://").unwrap_or(base))
    };
    format!("{ws_base}/desktop/{id}/websockify?{ACCESS_PARAM}={token}")
}

/// One local VNC connection, relayed byte for byte over the server's WebSocket.
async fn relay(client: &Client, id: JobId, view_only: bool, tcp: TcpStream) -> Result<(), String> {
    let grant = access(client, id, AccessService::Desktop, view_only)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = websocket_url(client.base_url(), id, &grant.token)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("the server's desktop WebSocket: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                let _ = sink.send(Message::Close(None)).await;
                return Ok::<_, String>(());
            }
            sink.send(Message::Binary(buf[..n].to_vec().into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    };
    let down = async {
        while let Some(msg) = stream.next().await {
            match msg.map_err(|e| e.to_string())? {
                Message::Binary(data) => wr.write_all(&data).await.map_err(|e| e.to_string())?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
        Ok::<_, String>(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_server_scheme() {
        let id = JobId::new();
        assert_eq!(
            websocket_url("http://127.0.0.1:8000", id, "t"),
            format!("ws://127.0.0.1:8000/desktop/{id}/websockify?access=t")
        );
        assert!(websocket_url("https://example.org", id, "t").starts_with("wss://example.org/"));
    }
}
