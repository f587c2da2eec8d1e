//! Serves `www/` (the page and the built wasm) to tabs.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use tokio::net::TcpListener;

/// Bind on `ip` (ephemeral port) and serve `root` until the task is aborted.
pub async fn serve(root: PathBuf, ip: std::net::IpAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(move |uri: Uri| {
        let root = root.clone();
        async move { file(&root, uri.path()).await }
    });
    let server = super::bounded::serve(listener, app, super::bounded::Bounds::PAGE, "page server");
    Ok((addr, server.task))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        // instantiateStreaming refuses wasm served under any other type.
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}

async fn file(root: &Path, url_path: &str) -> Response {
    let rel = url_path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    // Only plain components: no `..`, no absolute paths escaping `root`.
    let safe = Path::new(rel).components().all(|c| matches!(c, Component::Normal(_)));
    let status = |code: StatusCode, text: &str| {
        Response::builder().status(code).body(Body::from(text.to_string())).expect("static response")
    };
    if !safe {
        return status(StatusCode::BAD_REQUEST, "bad path");
    }
    let path = root.join(rel);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Response::builder()
            .header(header::CONTENT_TYPE, content_type(&path))
            // Cross-origin isolated: a page may then share wasm memory with its workers (the
            // threaded runtime, `&threads=N`); everything it loads is from this origin.
            .header("cross-origin-opener-policy", "same-origin")
            .header("cross-origin-embedder-policy", "require-corp")
            // A rebuilt runtime must never be shadowed by a cached one.
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::from(bytes))
            .expect("file response"),
        Err(_) => status(StatusCode::NOT_FOUND, "not found"),
    }
}
