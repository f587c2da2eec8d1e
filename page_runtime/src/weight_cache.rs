//! Weights by content hash, kept by the tab in the browser's Cache Storage (on disk, in the
//! browser's profile — not in memory), so a model loaded again in this browser — on another
//! backend while calibrating, after a lost device, after a page reload — is read back locally and
//! the host sends only what the tab does not hold.
//!
//! A weight is stored as the pieces it arrived in (`/w/<hash>/<offset>`, each at most a frame's
//! size, so no step needs it whole in memory) and then a marker `/w/<hash>` that lists the piece
//! offsets; the marker is written last, so a weight whose pieces were not all stored is never
//! reported as held. A marker is written only once its weight passed its hash check, so what is
//! read back is trusted by that hash (`Check::Known`: dtype, shape and size checked, not hashed
//! again; Chromium's simple disk cache keeps a CRC of each entry's data). Cache Storage exists only in secure contexts (loopback pages are; a page served
//! from a LAN address over http is not): there the cache is simply absent and every weight is sent.

use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

const CACHE_NAME: &str = "tabpool-weights-v1";

#[derive(Clone)]
pub struct WeightCache {
    cache: Object,
}

fn call(target: &Object, method: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
    let f: js_sys::Function = Reflect::get(target, &method.into())?.dyn_into()?;
    let args: Array = args.iter().copied().collect();
    f.apply(target, &args)
}

async fn wait(v: JsValue) -> Result<JsValue, JsValue> {
    JsFuture::from(v.dyn_into::<Promise>()?).await
}

fn url(hash: &str, piece: Option<usize>) -> String {
    match piece {
        Some(offset) => format!("/w/{hash}/{offset}"),
        None => format!("/w/{hash}"),
    }
}

impl WeightCache {
    /// The tab's weight cache, or `None` where Cache Storage is unavailable.
    pub async fn open() -> Option<WeightCache> {
        let global = js_sys::global();
        let caches = Reflect::get(&global, &"caches".into()).ok().filter(|c| !c.is_undefined())?;
        let cache = wait(call(caches.unchecked_ref(), "open", &[&CACHE_NAME.into()]).ok()?).await.ok()?;
        Some(WeightCache { cache: cache.dyn_into().ok()? })
    }

    async fn get(&self, url: &str) -> Option<Object> {
        let r = wait(call(&self.cache, "match", &[&url.into()]).ok()?).await.ok()?;
        r.dyn_into::<Object>().ok().filter(|r| !JsValue::from(r).is_undefined())
    }

    /// The piece offsets of weight `hash`, if all its pieces are stored.
    pub async fn pieces(&self, hash: &str) -> Option<Vec<usize>> {
        let resp = self.get(&url(hash, None)).await?;
        let text = wait(call(&resp, "text", &[]).ok()?).await.ok()?.as_string()?;
        text.split(',').map(|s| s.parse().ok()).collect()
    }

    /// Piece `offset` of weight `hash`, as bytes outside wasm memory.
    pub async fn piece(&self, hash: &str, offset: usize) -> Option<Uint8Array> {
        let resp = self.get(&url(hash, Some(offset))).await?;
        let buf = wait(call(&resp, "arrayBuffer", &[]).ok()?).await.ok()?;
        Some(Uint8Array::new(&buf))
    }

    async fn put(&self, url: &str, body: &JsValue) -> Result<(), JsValue> {
        let response_ctor: js_sys::Function = Reflect::get(&js_sys::global(), &"Response".into())?.dyn_into()?;
        let resp = Reflect::construct(&response_ctor, &Array::of1(body))?;
        wait(call(&self.cache, "put", &[&url.into(), &resp])?).await.map(|_| ())
    }

    /// Store piece `offset` of weight `hash` (copied out of wasm memory).
    pub async fn put_piece(&self, hash: &str, offset: usize, bytes: &[u8]) -> Result<(), JsValue> {
        self.put(&url(hash, Some(offset)), &Uint8Array::from(bytes).into()).await
    }

    /// Mark weight `hash` complete: all of `offsets` are stored.
    pub async fn put_marker(&self, hash: &str, offsets: &[usize]) -> Result<(), JsValue> {
        let list: Vec<String> = offsets.iter().map(usize::to_string).collect();
        self.put(&url(hash, None), &JsValue::from_str(&list.join(","))).await
    }
}
