//! The tab's end of the socket: a browser WebSocket in binary (ArrayBuffer) mode, turned into a
//! stream of events.

use futures_channel::{mpsc, oneshot};
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::caps::js_text;

pub enum Event {
    Frame(Vec<u8>),
    /// A text frame: never valid in this protocol.
    Text,
    Closed {
        code: u16,
        reason: String,
    },
}

/// Sending half; the closures live as long as it does.
pub struct Socket {
    ws: WebSocket,
    _handlers: Vec<Box<dyn std::any::Any>>,
}

impl Socket {
    pub fn send(&self, bytes: &[u8]) -> Result<(), String> {
        // `WebSocket.send` refuses a view of shared memory (the threaded build's): a copy.
        #[cfg(target_feature = "atomics")]
        {
            let copy = Uint8Array::new_with_length(bytes.len() as u32);
            copy.copy_from(bytes);
            self.ws.send_with_js_u8_array(&copy).map_err(js_text)
        }
        #[cfg(not(target_feature = "atomics"))]
        self.ws.send_with_u8_array(bytes).map_err(js_text)
    }

    /// Send bytes already held by JS (no view into wasm memory).
    pub fn send_js(&self, bytes: &Uint8Array) -> Result<(), String> {
        self.ws.send_with_js_u8_array(bytes).map_err(js_text)
    }

    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.ws.close_with_code_and_reason(code, reason);
    }
}

/// Open `url` and wait until it is open (or failed).
pub async fn connect(url: &str) -> Result<(Socket, mpsc::UnboundedReceiver<Event>), String> {
    let ws = WebSocket::new(url).map_err(js_text)?;
    ws.set_binary_type(BinaryType::Arraybuffer);
    let (tx, rx) = mpsc::unbounded();
    let (open_tx, open_rx) = oneshot::channel::<Result<(), String>>();
    let open_tx = std::rc::Rc::new(std::cell::RefCell::new(Some(open_tx)));

    let on_message = {
        let tx = tx.clone();
        Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let ev = match e.data().dyn_into::<ArrayBuffer>() {
                Ok(buf) => {
                    let frame = Uint8Array::new(&buf).to_vec();
                    // Detaching frees the JS copy now rather than at some later garbage collection
                    // (weight frames are megabytes each).
                    let _ = buf.transfer_with_length(0);
                    Event::Frame(frame)
                }
                Err(_) => Event::Text,
            };
            let _ = tx.unbounded_send(ev);
        })
    };
    let on_open = {
        let open_tx = open_tx.clone();
        Closure::<dyn FnMut()>::new(move || {
            if let Some(s) = open_tx.borrow_mut().take() {
                let _ = s.send(Ok(()));
            }
        })
    };
    let on_close = {
        let open_tx = open_tx.clone();
        Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            if let Some(s) = open_tx.borrow_mut().take() {
                let _ = s.send(Err(format!("closed before open: code {} {}", e.code(), e.reason())));
            }
            let _ = tx.unbounded_send(Event::Closed { code: e.code(), reason: e.reason() });
        })
    };
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    open_rx.await.map_err(|_| "socket dropped".to_string())??;
    Ok((Socket { ws, _handlers: vec![Box::new(on_message), Box::new(on_open), Box::new(on_close)] }, rx))
}
