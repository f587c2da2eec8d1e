//! The tab's main loop: read launch parameters from the page URL, probe, connect, say `Hello`,
//! then answer requests until the host closes the socket.

use std::rc::Rc;

use bytes::Bytes;
use futures_util::StreamExt;
use shared_proto::{
    ErrorKind, Frame, Hello, Limits, PROTOCOL_VERSION, RemoteError, Reply, Request, Tensor, ToHost, ToTab, decode,
    encode,
};

use crate::caps;
use crate::executors::webgpu::WebGpuExecutor;
use crate::socket::{self, Event, Socket};

/// WebSocket close code for a protocol violation (RFC 6455 §7.4.1).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;

struct LaunchParams {
    socket_url: String,
    token: String,
    tab_id: u64,
}

fn launch_params() -> Result<LaunchParams, String> {
    let search = web_sys::window().ok_or("no window")?.location().search().map_err(caps::js_text)?;
    let mut socket_url = None;
    let mut token = None;
    let mut tab_id = None;
    for pair in search.trim_start_matches('?').split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = js_sys::decode_uri_component(v).map_err(caps::js_text)?.as_string().unwrap_or_default();
        match k {
            "ws" => socket_url = Some(v),
            "token" => token = Some(v),
            "tab" => tab_id = v.parse().ok(),
            _ => {}
        }
    }
    Ok(LaunchParams {
        socket_url: socket_url.ok_or("page URL lacks ?ws=")?,
        token: token.ok_or("page URL lacks &token=")?,
        tab_id: tab_id.ok_or("page URL lacks a numeric &tab=")?,
    })
}

/// Shown in the page title so a WebDriver client (and a person) can see where a tab is stuck.
fn status(text: &str) {
    if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
        let _ = js_sys::Reflect::set(&doc, &"title".into(), &format!("tabpool: {text}").into());
    }
}

pub async fn run() -> Result<(), String> {
    let result = serve().await;
    match &result {
        Ok(()) => status("closed"),
        Err(e) => status(&format!("error: {e}")),
    }
    result
}

async fn serve() -> Result<(), String> {
    let params = launch_params()?;
    status("probing");
    let (caps, executor) = caps::probe().await;
    status("connecting");
    let (socket, mut events) = socket::connect(&params.socket_url).await?;
    let socket = Rc::new(socket);
    let hello = ToHost::Hello(Box::new(Hello {
        protocol_version: PROTOCOL_VERSION,
        tab_id: params.tab_id,
        token: params.token,
        caps,
    }));
    send(&socket, Frame::new(hello))?;
    let executor = Rc::new(executor);
    let mut welcomed = false;
    while let Some(event) = events.next().await {
        let bytes = match event {
            Event::Frame(b) => b,
            Event::Text => {
                socket.close(CLOSE_PROTOCOL_ERROR, "text frames are not part of the protocol");
                return Err("host sent a text frame".into());
            }
            Event::Closed { code, reason } => {
                return if welcomed { Ok(()) } else { Err(format!("closed during handshake: {code} {reason}")) };
            }
        };
        let frame: Frame<ToTab> = match decode(Bytes::from(bytes), &Limits::DEFAULT) {
            Ok(f) => f,
            Err(e) => {
                socket.close(CLOSE_PROTOCOL_ERROR, "malformed frame");
                return Err(format!("malformed frame from host: {e}"));
            }
        };
        match frame.msg {
            ToTab::Welcome { tab_id } => {
                welcomed = true;
                status(&format!("ready (tab {tab_id})"));
            }
            ToTab::Reject { reason, message } => return Err(format!("rejected ({reason:?}): {message}")),
            ToTab::Request { id, req } => {
                let (socket, executor) = (socket.clone(), executor.clone());
                wasm_bindgen_futures::spawn_local(async move {
                    let (result, tensors) = handle(&executor, req, frame.tensors).await;
                    if let Err(e) = send(&socket, Frame::with_tensors(ToHost::Reply { id, result }, tensors)) {
                        web_sys::console::error_1(&format!("reply {id} not sent: {e}").into());
                    }
                });
            }
        }
    }
    Ok(())
}

async fn handle(
    executor: &Option<WebGpuExecutor>,
    req: Request,
    inputs: Vec<Tensor>,
) -> (Result<Reply, RemoteError>, Vec<Tensor>) {
    match req {
        Request::Ping => (Ok(Reply::Pong), Vec::new()),
        Request::Sink => (Ok(Reply::Sunk { bytes: inputs.iter().map(|t| t.data.len() as u64).sum() }), Vec::new()),
        Request::Kernel(kernel) => {
            let Some(ex) = executor else {
                let why = "this tab has no WebGPU device (see its capabilities)";
                return (Err(RemoteError::new(ErrorKind::Unsupported, why)), Vec::new());
            };
            match ex.run_kernel(&kernel, &inputs).await {
                Ok(run) => (Ok(Reply::KernelDone { device_ms: run.device_ms }), run.outputs),
                Err(e) => (Err(e), Vec::new()),
            }
        }
    }
}

fn send(socket: &Socket, frame: Frame<ToHost>) -> Result<(), String> {
    let bytes = encode(&frame, &Limits::DEFAULT).map_err(|e| e.to_string())?;
    socket.send(&bytes)
}
