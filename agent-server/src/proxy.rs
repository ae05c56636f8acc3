//! A reverse proxy for one HTTP/1.1 request over a byte stream (a tunnel into a sandbox),
//! WebSocket upgrades included: the request goes out with its path, query and headers (less the
//! hop-by-hop ones, the browser's `Authorization` and the access cookie and parameter), plus the
//! service's own secret as `Authorization: token …`; a `101 Switching Protocols` answer joins the
//! two upgraded connections byte for byte.

use std::io;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use crate::live::BoxServiceStream;

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

fn strip_param(uri: &Uri, name: &str) -> String {
    let mut out = uri.path().to_string();
    if let Some(q) = uri.query() {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

/// Sends `req` over `stream` and returns the answer. `secret` is the service's token;
/// `cookie` and `param` name the access token's cookie and query parameter, which are removed.
pub async fn forward(
    stream: BoxServiceStream,
    mut req: Request,
    secret: &str,
    cookie: &str,
    param: &str,
) -> io::Result<Response> {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = strip_param(&parts.uri, param)
        .parse()
        .map_err(io::Error::other)?;
    *out.headers_mut() = parts.headers;
    let headers = out.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    strip_cookie(headers, cookie);
    headers.remove(header::AUTHORIZATION);
    let auth = HeaderValue::from_str(&format!("token {secret}")).map_err(io::Error::other)?;
    headers.insert(header::AUTHORIZATION, auth);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1"));
    }

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection ended with an error");
        }
    });
    let mut resp = sender.send_request(out).await.map_err(io::Error::other)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(async move {
                let (client, server) = match tokio::try_join!(client_upgrade, server_upgrade) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "a proxied upgrade failed");
                        return;
                    }
                };
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    tracing::debug!(error = %e, "a proxied upgraded connection ended");
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_access_token_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-foo").is_none() && h.get(header::UPGRADE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-bar").map(|v| v.as_bytes()), Some(&b"2"[..]));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(h.get(header::UPGRADE).is_some());

        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("_xsrf=abc; agent_access=secret; b=2"),
        );
        strip_cookie(&mut h, "agent_access");
        assert_eq!(
            h.get(header::COOKIE).map(|v| v.as_bytes()),
            Some(&b"_xsrf=abc; b=2"[..])
        );

        let uri: Uri = "/jupyter/x/lab?access=1.f.s&a=b"
            .parse()
            .unwrap_or_default();
        assert_eq!(strip_param(&uri, "access"), "/jupyter/x/lab?a=b");
        let uri: Uri = "/jupyter/x/lab?access=1.f.s".parse().unwrap_or_default();
        assert_eq!(strip_param(&uri, "access"), "/jupyter/x/lab");
    }
}
