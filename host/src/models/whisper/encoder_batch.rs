//! The encoder as the pool sees it: a stateless batch model, one 30-s log-mel window
//! (`[80, 3000]`) per row in, per row each decoder layer's cross keys and values out. So a speech
//! replica loads it, and calibrates every backend its tab offers, exactly as any batch model —
//! routing by measured strength, not a table. Requests never reach it on their own: the pool's
//! speech path (`pool::speech`) runs it once per window and hands its outputs to the decoder.

use shared_proto::{DType, Graph, Tensor};

use super::Whisper;
use super::encoder::{EncoderDims, N_AUDIO_CTX, N_FRAMES, N_MELS};
use crate::family::{self, BatchModel, Input, PrepareError, Prepared, Signature, TensorSpec};
use crate::policy::routing::ModelType;

/// The shape of one window.
const ROW: [u32; 2] = [N_MELS as u32, N_FRAMES as u32];

pub struct EncoderModel {
    name: String,
    graph: Graph,
    weights: Vec<Tensor>,
    dims: EncoderDims,
    /// A real window (one second of a 440 Hz tone, the rest padding) to time on each backend.
    calibration: Vec<f32>,
}

impl EncoderModel {
    pub fn new(model: &Whisper) -> anyhow::Result<EncoderModel> {
        let (graph, weights, dims) = model.encoder(false)?;
        let tone: Vec<f32> =
            (0..16_000).map(|i| 0.1 * (i as f32 * 440.0 * std::f32::consts::TAU / 16e3).sin()).collect();
        let calibration = super::audio::log_mel(&tone).data;
        Ok(EncoderModel { name: format!("{}-encoder", model.name), graph, weights, dims, calibration })
    }
}

impl BatchModel for EncoderModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn model_type(&self) -> ModelType {
        ModelType::Audio
    }
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn weights(&self) -> &[Tensor] {
        &self.weights
    }
    fn take_weights(&mut self) -> Vec<Tensor> {
        std::mem::take(&mut self.weights)
    }

    fn prepare(&self, input: Input) -> Result<Prepared, PrepareError> {
        let Input::Tensor(t) = input else {
            return Err(PrepareError::BadInput(format!("{} takes log-mel windows [N, 80, 3000]", self.name)));
        };
        if t.dtype != DType::F32 || t.shape.len() != 3 || t.shape[1..] != ROW || t.shape[0] == 0 {
            return Err(PrepareError::BadInput(format!(
                "{} takes FP32 [N, 80, 3000] log-mel windows, got {:?} {:?}",
                self.name, t.dtype, t.shape
            )));
        }
        let rows = family::unstack(&t);
        let n = rows.len();
        Ok(Prepared { rows, lens: vec![1; n], truncated: vec![false; n] })
    }

    fn inputs(&self, rows: &[&Tensor]) -> anyhow::Result<Vec<Tensor>> {
        let mels: Vec<Vec<f32>> = rows.iter().map(|r| r.to_f32().unwrap_or_default()).collect();
        super::encoder::inputs(&mels.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn calibration_row(&self) -> anyhow::Result<Tensor> {
        Ok(Tensor::from_f32(ROW.to_vec(), &self.calibration))
    }

    fn output_widths(&self) -> Vec<usize> {
        vec![N_AUDIO_CTX * self.dims.d_model; 2 * self.dims.cross_layers]
    }

    fn time_software_gpu(&self) -> bool {
        // One window on SwiftShader ran for over two minutes here; WebNN and the wasm CPU
        // executor take well under a few seconds.
        false
    }

    fn signature(&self) -> Signature {
        let per = |i: usize| {
            let kv = if i.is_multiple_of(2) { "k" } else { "v" };
            TensorSpec::new(
                &format!("cross_{kv}{}", i / 2),
                "FP32",
                &[-1, N_AUDIO_CTX as i64, self.dims.d_model as i64],
            )
        };
        Signature {
            inputs: vec![TensorSpec::new("mel", "FP32", &[-1, N_MELS as i64, N_FRAMES as i64])],
            outputs: (0..2 * self.dims.cross_layers).map(per).collect(),
        }
    }
}
