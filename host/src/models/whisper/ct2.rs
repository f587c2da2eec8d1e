//! CTranslate2 `model.bin` reader (filled in by the reader work).
