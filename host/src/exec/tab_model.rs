//! A model loaded into one tab: declare the graph, stream the weights in frames, run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shared_proto::{DType, ExecBackend, Graph, Reply, Request, Tensor};

use crate::Tab;

/// Weights are grouped into frames of about this many bytes; a larger weight travels in parts
/// of this size (`PutWeightPart`). The tab copies each frame into wasm memory, which never
/// shrinks: the largest frame stays resident for the tab's life (a whole 47 MB embedding
/// table did), so frames are kept small; a frame is a round trip of a few ms.
const CHUNK_BYTES: usize = 4 << 20;
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Progress of a weight upload, for a progress bar.
pub trait WeightUpload: Sync {
    fn start(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

impl WeightUpload for () {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

impl WeightUpload for indicatif::ProgressBar {
    fn start(&self, total: u64) {
        self.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }
    fn finish(&self) {
        self.finish_and_clear();
    }
}

pub struct TabModel {
    pub tab: Tab,
    pub name: String,
    pub backend: ExecBackend,
    /// Host-side time for declare + upload + the tab's pipeline compile.
    pub load_ms: f64,
    /// The tab's warm-up run that compiled the pipelines.
    pub prepare_ms: f64,
    pub weight_bytes: u64,
    /// Of those, the bytes sent (the rest the tab held by content hash).
    pub sent_bytes: u64,
}

/// Send weight `index` in parts of `CHUNK_BYTES`; the tab's last answer: weights still missing
/// and, if none, its prepare time.
async fn put_in_parts(
    tab: &Tab,
    name: &str,
    index: usize,
    weight: &Tensor,
    progress: &dyn WeightUpload,
) -> anyhow::Result<(u32, Option<f64>)> {
    let total = weight.data.len();
    let (mut missing, mut prepare_ms) = (u32::MAX, None);
    for offset in (0..total).step_by(CHUNK_BYTES) {
        let end = (offset + CHUNK_BYTES).min(total);
        let part =
            Tensor { dtype: DType::U8, shape: vec![(end - offset) as u32], data: weight.data.slice(offset..end) };
        let req = Request::PutWeightPart {
            model: name.into(),
            index: index as u32,
            offset: offset as u64,
            total: total as u64,
        };
        let (reply, _) = tab
            .call(req, vec![part], LOAD_TIMEOUT)
            .await
            .with_context(|| format!("uploading weight {index} bytes {offset}..{end} to tab {}", tab.id()))?;
        match reply {
            Reply::WeightsStored { missing: m, prepare_ms: p, .. } => (missing, prepare_ms) = (m, p),
            other => bail!("tab {} answered {other:?} to PutWeightPart", tab.id()),
        }
        progress.advance((end - offset) as u64);
    }
    Ok((missing, prepare_ms))
}

impl TabModel {
    pub async fn load(
        tab: &Tab,
        name: &str,
        graph: &Graph,
        weights: &[Tensor],
        backend: ExecBackend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<TabModel> {
        let t0 = Instant::now();
        let req = Request::LoadModel { model: name.into(), graph: graph.clone(), backend: backend.clone() };
        let (held, mut prepare_ms) = match tab.call(req, vec![], LOAD_TIMEOUT).await? {
            (Reply::ModelDeclared { held, prepare_ms }, _) => (held, prepare_ms),
            (other, _) => bail!("tab {} answered {other:?} to LoadModel", tab.id()),
        };
        // Weights the tab holds by content hash (its cache) are not sent again.
        let mut send = vec![true; weights.len()];
        for &i in &held {
            if let Some(s) = send.get_mut(i as usize) {
                *s = false;
            }
        }
        let total: u64 = weights.iter().zip(&send).filter(|(_, s)| **s).map(|(w, _)| w.data.len() as u64).sum();
        let held_bytes: u64 = weights.iter().map(|w| w.data.len() as u64).sum::<u64>() - total;
        progress.start(total);
        let last = send.iter().rposition(|&s| s);
        let mut first = 0usize;
        while let Some(l) = last
            && first <= l
        {
            if !send[first] {
                first += 1;
                continue;
            }
            if weights[first].data.len() > CHUNK_BYTES {
                let (missing, p) = put_in_parts(tab, name, first, &weights[first], progress).await?;
                if first == l && missing != 0 {
                    bail!("tab {} still misses {missing} weights after the upload", tab.id());
                }
                prepare_ms = p;
                first += 1;
                continue;
            }
            let sizes: Vec<usize> = weights.iter().map(|w| w.data.len()).collect();
            let end = frame_end(&sizes, &send, first, CHUNK_BYTES, shared_proto::Limits::DEFAULT.max_tensors);
            let bytes: usize = sizes[first..end].iter().sum();
            let req = Request::PutWeights { model: name.into(), first: first as u32 };
            let (reply, _) = tab
                .call(req, weights[first..end].to_vec(), LOAD_TIMEOUT)
                .await
                .with_context(|| format!("uploading weights {first}..{end} to tab {}", tab.id()))?;
            match reply {
                Reply::WeightsStored { missing, prepare_ms: p, .. } => {
                    if end > l && missing != 0 {
                        bail!("tab {} still misses {missing} weights after the upload", tab.id());
                    }
                    prepare_ms = p;
                }
                other => bail!("tab {} answered {other:?} to PutWeights", tab.id()),
            }
            progress.advance(bytes as u64);
            first = end;
        }
        progress.finish();
        tracing::info!(
            "{name} on {backend} in tab {}: sent {total} weight bytes, {held_bytes} held by the tab ({} weights); \
             loaded in {:.0} ms, of which preparing {:.0} ms",
            tab.id(),
            held.len(),
            t0.elapsed().as_secs_f64() * 1e3,
            prepare_ms.unwrap_or(0.0)
        );
        Ok(TabModel {
            tab: tab.clone(),
            name: name.into(),
            backend,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            prepare_ms: prepare_ms.unwrap_or(0.0),
            weight_bytes: total + held_bytes,
            sent_bytes: total,
        })
    }

    /// Free the model in the tab.
    pub async fn unload(self) -> anyhow::Result<()> {
        match self.tab.call(Request::UnloadModel { model: self.name.clone() }, vec![], RUN_TIMEOUT).await? {
            (Reply::Unloaded, _) => Ok(()),
            (other, _) => bail!("tab {} answered {other:?} to UnloadModel", self.tab.id()),
        }
    }

    /// Run on `inputs`; returns the outputs and the tab's device time.
    pub async fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<(Vec<Tensor>, f64)> {
        self.run_within(inputs, RUN_TIMEOUT).await
    }

    /// Run on `inputs` and write the outputs as `session`'s memory in `decoder`, a model of the
    /// same tab, at cache layers `first_layer..` (`Request::EncodeIntoMemory`): nothing crosses
    /// the socket but the inputs. The executor's time in ms.
    pub async fn run_into_memory(
        &self,
        inputs: Vec<Tensor>,
        decoder: &TabModel,
        session: u64,
        first_layer: u32,
    ) -> anyhow::Result<f64> {
        anyhow::ensure!(self.tab.id() == decoder.tab.id(), "an encoder writes memory only into a decoder of its tab");
        let req =
            Request::EncodeIntoMemory { model: self.name.clone(), decoder: decoder.name.clone(), session, first_layer };
        match self.tab.call(req, inputs, RUN_TIMEOUT).await? {
            (Reply::EncodedIntoMemory { device_ms, .. }, _) => Ok(device_ms),
            (other, _) => bail!("tab {} answered {other:?} to EncodeIntoMemory", self.tab.id()),
        }
    }

    /// As [`Self::run`], failing with [`crate::TabError::Timeout`] after `timeout`.
    pub async fn run_within(&self, inputs: Vec<Tensor>, timeout: Duration) -> anyhow::Result<(Vec<Tensor>, f64)> {
        match self.tab.call(Request::Run { model: self.name.clone() }, inputs, timeout).await? {
            (Reply::Ran { device_ms }, outputs) => Ok((outputs, device_ms)),
            (other, _) => bail!("tab {} answered {other:?} to Run", self.tab.id()),
        }
    }
}

/// Where a frame of consecutive weights to send, starting at `first`, ends (exclusive): as many
/// as fit in `max_bytes` and the protocol's tensor count per frame (a model of many small
/// tensors — EfficientNet's biases — would otherwise build a frame the codec refuses).
fn frame_end(sizes: &[usize], send: &[bool], first: usize, max_bytes: usize, max_tensors: usize) -> usize {
    let mut end = first + 1;
    let mut bytes = sizes[first];
    while end < sizes.len() && send[end] && bytes + sizes[end] <= max_bytes && end - first < max_tensors {
        bytes += sizes[end];
        end += 1;
    }
    end
}

#[cfg(test)]
mod frame_tests {
    use super::frame_end;

    #[test]
    fn frames_stop_at_the_byte_size_the_tensor_count_and_held_weights() {
        let send = vec![true; 200];
        assert_eq!(frame_end(&[4; 200], &send, 0, 1 << 20, 64), 64, "count");
        assert_eq!(frame_end(&[4; 200], &send, 64, 1 << 20, 64), 128);
        assert_eq!(frame_end(&[400; 200], &send, 0, 1000, 64), 2, "bytes");
        let mut held = send.clone();
        held[3] = false;
        assert_eq!(frame_end(&[4; 200], &held, 0, 1 << 20, 64), 3, "a held weight ends the run");
        assert_eq!(frame_end(&[4; 200], &send, 199, 1 << 20, 64), 200);
    }
}
