//! The pool's view of EfficientNet-Lite0: images (or a prepared `[N, 3, 224, 224]` tensor) in,
//! per image the 1000 logits and the 1280 pooled features out. Every image is one row of cost
//! 1; a batch of images is one `[N, 3, 224, 224]` tensor, one dispatch.

use shared_proto::{DType, Graph, Tensor};

use super::preprocess::{self, ImageError};
use super::{CLASSES, EfficientNet, FEATURES, SIZE};
use crate::family::{self, BatchModel, Input, PrepareError, Prepared, Signature, TensorSpec};
use crate::policy::routing::ModelType;

/// The shape of one prepared image (CHW).
const ROW: [u32; 3] = [3, SIZE as u32, SIZE as u32];

impl BatchModel for EfficientNet {
    fn name(&self) -> &str {
        &self.name
    }
    fn model_type(&self) -> ModelType {
        ModelType::Vision
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
        let rows = match input {
            Input::Images(images) => images
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let pixels = preprocess::prepare(bytes).map_err(|e| match e {
                        ImageError::TooLarge { .. } => PrepareError::TooLarge(format!("image {}: {e}", i + 1)),
                        e => PrepareError::BadInput(format!("image {}: {e}", i + 1)),
                    })?;
                    Ok(Tensor::from_f32(ROW.to_vec(), &pixels))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Input::Tensor(t) => {
                let ok = t.dtype == DType::F32 && t.shape.len() == 4 && t.shape[1..] == ROW && t.shape[0] > 0;
                if !ok {
                    return Err(PrepareError::BadInput(format!(
                        "{} takes FP32 [N, 3, {SIZE}, {SIZE}] (NCHW, (v - 127) / 128), got {:?} {:?}",
                        self.name, t.dtype, t.shape
                    )));
                }
                if let Some(bad) = t.to_f32().and_then(|v| v.into_iter().find(|x| !x.is_finite())) {
                    return Err(PrepareError::BadInput(format!("the pixel tensor holds {bad}: values must be finite")));
                }
                family::unstack(&t)
            }
            Input::Texts(_) | Input::TokenIds(_) => {
                return Err(PrepareError::BadInput(format!("{} classifies images: send image bytes", self.name)));
            }
        };
        let n = rows.len();
        Ok(Prepared { rows, lens: vec![1; n], truncated: vec![false; n] })
    }

    fn inputs(&self, rows: &[&Tensor]) -> anyhow::Result<Vec<Tensor>> {
        Ok(vec![family::stack_f32(rows)?])
    }

    fn calibration_row(&self) -> anyhow::Result<Tensor> {
        // A smooth gradient: any image costs the same, only the shape matters.
        let pixels: Vec<f32> = (0..3 * SIZE * SIZE).map(|i| ((i % 251) as f32 - 125.0) / 128.0).collect();
        Ok(Tensor::from_f32(ROW.to_vec(), &pixels))
    }

    fn output_widths(&self) -> Vec<usize> {
        vec![CLASSES, FEATURES]
    }

    fn signature(&self) -> Signature {
        let s = SIZE as i64;
        Signature {
            inputs: vec![TensorSpec::new("pixels", "FP32", &[-1, 3, s, s])],
            outputs: vec![
                TensorSpec::new("logits", "FP32", &[-1, CLASSES as i64]),
                TensorSpec::new("features", "FP32", &[-1, FEATURES as i64]),
            ],
        }
    }

    fn class_names(&self) -> Option<&[String]> {
        Some(&self.labels)
    }
}
