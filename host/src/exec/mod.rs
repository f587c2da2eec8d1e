//! Running models: in a tab (graph + weights uploaded once, then token-id tensors per request)
//! or on the host's CPU executor; [`Embedder`] puts MiniLM on either.

pub mod decoder;
mod embedder;
pub mod gate;
pub mod pipeline;
pub mod placement;
pub mod remembered;
pub mod stepper;
mod tab_model;
pub mod transcriber;

pub use decoder::{Decoder, Finish, GenEvent, GenFailure, GenParams, StepLimits};
pub use embedder::{Backend, Embedder, Embeddings, LoadReport, calibrate_tab, cosine, cpu_model, load_in_tab};
pub use pipeline::{Pipeline, Replacer, Replanner, StageObserver};
pub use remembered::CalibrationCache;
pub use stepper::{StepOut, Stepper};
pub use tab_model::{TabModel, WeightUpload};
