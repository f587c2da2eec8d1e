//! `POST /v1/audio/transcriptions`, as OpenAI's: a multipart form with the sound `file` (WAV,
//! FLAC, MP3, OGG/Vorbis; 25 MiB at most, as OpenAI's limit), `model` (a loaded speech model, or
//! `whisper-1` for the first one), `response_format` (`json` | `text` | `verbose_json` | `srt` |
//! `vtt`), `language` (the model's own only: `en`), `temperature` (0: greedy decoding is what
//! runs), `prompt` (text before the audio, as faster-whisper's `initial_prompt`).
//!
//! Timing: the model runs without timestamps (the reference's settings), so segments and cues
//! are the 30-s windows, from the window's start to where its audio ends. `verbose_json` leaves
//! out what is not computed (log probabilities, no-speech probability, words).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::models::whisper::audio::{self, AudioError, DecodeLimits};
use crate::pool::speech::{Audio, Transcribed};
use crate::pool::{Pool, PoolError};

/// Largest file, as OpenAI's limit (25 MB, counted here as MiB).
pub const MAX_FILE_BYTES: usize = 25 << 20;
/// Longest audio accepted: at several times real time on a CPU tab, 30 minutes is answered
/// within the API's default request timeout.
pub const MAX_AUDIO_SECONDS: f64 = 1800.0;
/// Quieter than this peak (−60 dBFS) everywhere is silence: nothing to transcribe.
const SILENCE_PEAK: f32 = 1e-3;
/// Longest `prompt`, in characters (the model keeps its last 223 tokens of it).
const MAX_PROMPT_CHARS: usize = 4096;

pub(super) fn routes() -> Router<Arc<Pool>> {
    Router::new().route(
        "/v1/audio/transcriptions",
        // The file plus the form's other fields.
        post(transcriptions).layer(DefaultBodyLimit::max(MAX_FILE_BYTES + (64 << 10))),
    )
}

fn refuse(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    super::openai::error(status, message, param, None)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "json" => Format::Json,
            "text" => Format::Text,
            "verbose_json" => Format::VerboseJson,
            "srt" => Format::Srt,
            "vtt" => Format::Vtt,
            _ => return None,
        })
    }
}

/// The form, read.
#[derive(Default)]
struct Form {
    file: Option<axum::body::Bytes>,
    model: Option<String>,
    format: Option<String>,
    language: Option<String>,
    temperature: Option<String>,
    prompt: Option<String>,
    stream: Option<String>,
    granularities: Vec<String>,
}

/// One transcription (`verbose_json`'s shape in the document; `json` is `{"text"}` alone).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Transcription {
    text: String,
}

/// Transcribe speech.
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "Audio",
    request_body(content = Vec<u8>, description = "multipart/form-data: file (WAV, FLAC, MP3, OGG/Vorbis), model, \
        response_format (json|text|verbose_json|srt|vtt), language (en), temperature (0), prompt",
        content_type = "multipart/form-data"),
    responses((status = 200, body = Transcription), (status = 400, description = "not audio, truncated, empty, \
        silent, a language other than the model's, temperature above 0"),
        (status = 404, description = "no such speech model"),
        (status = 413, description = "over 25 MiB or 30 minutes")))]
pub(super) async fn transcriptions(
    State(pool): State<Arc<Pool>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let form = match form {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("send multipart/form-data with a file: {}", e.body_text()),
                None,
            );
        }
    };
    let form = match read_form(form).await {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let asked = form.model.as_deref().filter(|m| *m != "whisper-1");
    let (name, model) = match pool.speech_model(asked) {
        Ok(m) => m,
        Err(PoolError::UnknownModel(m)) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no speech model {m:?} is loaded (see /v1/models)"),
                Some("model"),
            );
        }
        Err(e) => return super::openai::pool_error_of(&e),
    };
    let resp = match run(&pool, &name, &model, form).await {
        Ok(r) => r,
        Err(r) => *r,
    };
    super::labelled(resp, name)
}

async fn run(
    pool: &Pool,
    name: &str,
    model: &crate::models::whisper::Whisper,
    form: Form,
) -> Result<Response, Box<Response>> {
    let bad = |m: String, p: &str| Box::new(refuse(StatusCode::BAD_REQUEST, m, Some(p)));
    let format = match form.format.as_deref() {
        None => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| {
            bad(format!("response_format {f:?}: one of json, text, verbose_json, srt, vtt"), "response_format")
        })?,
    };
    if let Some(l) = &form.language {
        let l = l.trim().to_ascii_lowercase();
        if l != "en" && l != "english" {
            return Err(bad(
                format!("{name} transcribes English only: language must be \"en\", not {l:?}"),
                "language",
            ));
        }
    }
    if let Some(t) = &form.temperature {
        match t.trim().parse::<f32>() {
            Ok(0.0) => {}
            Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => {
                return Err(bad(
                    format!("temperature {v}: this server decodes greedily (temperature 0) only"),
                    "temperature",
                ));
            }
            _ => return Err(bad(format!("temperature {t:?}: a number from 0 to 1"), "temperature")),
        }
    }
    if form.stream.as_deref().is_some_and(|s| s.trim() == "true") {
        return Err(bad("stream: streamed transcriptions are not served; leave stream out".into(), "stream"));
    }
    if form.granularities.iter().any(|g| g != "segment") {
        return Err(bad(
            format!(
                "timestamp_granularities {:?}: only \"segment\" (word timings are not computed)",
                form.granularities
            ),
            "timestamp_granularities[]",
        ));
    }
    let context = match form.prompt.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        None => vec![],
        Some(p) if p.chars().count() > MAX_PROMPT_CHARS => {
            return Err(Box::new(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("prompt: over {MAX_PROMPT_CHARS} characters (the limit)"),
                Some("prompt"),
            )));
        }
        // faster-whisper's initial_prompt: " " + the text, without special tokens.
        Some(p) => model
            .tokenizer
            .encode(format!(" {p}"), false)
            .map_err(|e| bad(format!("prompt: {e}"), "prompt"))?
            .get_ids()
            .to_vec(),
    };
    let Some(file) = form.file else {
        return Err(bad("the form has no `file` field: send the audio as a file".into(), "file"));
    };
    let samples = tokio::task::spawn_blocking(move || decode(&file))
        .await
        .map_err(|e| Box::new(refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding: {e}"), None)))??;
    let t = pool
        .transcribe(Some(name), Audio::Samples(Arc::new(samples)), context, None)
        .await
        .map_err(|e| Box::new(super::openai::pool_error_of(&e)))?;
    Ok(render(format, &t))
}

/// The file's samples, or the refusal naming what is wrong with it.
fn decode(bytes: &[u8]) -> Result<Vec<f32>, Box<Response>> {
    let limits = DecodeLimits { max_seconds: MAX_AUDIO_SECONDS, ..DecodeLimits::default() };
    let a = audio::decode_with_limits(bytes, &limits).map_err(|e| {
        let status = match e {
            AudioError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Box::new(refuse(status, format!("file: {e}"), Some("file")))
    })?;
    let peak = a.samples.iter().fold(0f32, |m, v| m.max(v.abs()));
    if peak < SILENCE_PEAK {
        let dbfs = if peak > 0.0 { format!("{:.0} dBFS", 20.0 * peak.log10()) } else { "digital silence".into() };
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            format!("file: the audio is silent (peak {dbfs}, below −60 dBFS): nothing to transcribe"),
            Some("file"),
        )));
    }
    Ok(a.samples)
}

async fn read_form(mut form: Multipart) -> Result<Form, Box<Response>> {
    let too_large = || {
        Box::new(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the file exceeds the limit of {MAX_FILE_BYTES} bytes (25 MiB)"),
            Some("file"),
        ))
    };
    let mut out = Form::default();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(Box::new(refuse(e.status(), e.body_text(), None))),
        };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let bytes = match field.bytes().await {
                Ok(b) => b,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                Err(e) => return Err(Box::new(refuse(e.status(), e.body_text(), Some("file")))),
            };
            if bytes.len() > MAX_FILE_BYTES {
                return Err(too_large());
            }
            if bytes.is_empty() {
                return Err(Box::new(refuse(StatusCode::BAD_REQUEST, "file: the file is empty", Some("file"))));
            }
            out.file = Some(bytes);
            continue;
        }
        let text = match field.text().await {
            Ok(t) => t,
            Err(e) => return Err(Box::new(refuse(e.status(), e.body_text(), Some(&name)))),
        };
        if text.len() > 4 * MAX_PROMPT_CHARS {
            return Err(Box::new(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{name}: over {} bytes", 4 * MAX_PROMPT_CHARS),
                Some(&name),
            )));
        }
        match name.as_str() {
            "model" => out.model = Some(text),
            "response_format" => out.format = Some(text),
            "language" => out.language = Some(text),
            "temperature" => out.temperature = Some(text),
            "prompt" => out.prompt = Some(text),
            "stream" => out.stream = Some(text),
            "timestamp_granularities[]" | "timestamp_granularities" => out.granularities.push(text),
            other => {
                return Err(Box::new(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("unsupported parameter `{other}`"),
                    Some(other),
                )));
            }
        }
    }
    Ok(out)
}

/// `s` seconds as `HH:MM:SS{sep}mmm`.
fn clock(s: f64, sep: char) -> String {
    let ms = (s.max(0.0) * 1e3).round() as u64;
    format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn render(format: Format, t: &Transcribed) -> Response {
    let tr = &t.transcript;
    let cues = || tr.windows.iter().filter(|w| !w.text.trim().is_empty());
    let plain = |body: String, ty: &'static str| ([(header::CONTENT_TYPE, ty)], body).into_response();
    match format {
        Format::Json => Json(json!({ "text": tr.text })).into_response(),
        Format::Text => plain(format!("{}\n", tr.text), "text/plain; charset=utf-8"),
        Format::VerboseJson => {
            let segments: Vec<_> = tr
                .windows
                .iter()
                .enumerate()
                .map(|(id, w)| {
                    json!({
                        "id": id,
                        "seek": (w.start_s * 100.0).round() as u64,
                        "start": w.start_s,
                        "end": w.end_s,
                        "text": w.text,
                        "tokens": w.ids,
                        "temperature": 0.0,
                        "avg_logprob": w.avg_logprob,
                        "no_speech_prob": w.no_speech_prob,
                    })
                })
                .collect();
            Json(json!({
                "task": "transcribe",
                "language": "english",
                "duration": tr.duration_s,
                "text": tr.text,
                "segments": segments,
                "model": t.model,
                "tab": t.tab,
                "backend": t.backend,
                "attempts": t.attempts,
            }))
            .into_response()
        }
        Format::Srt => {
            let body: String = cues()
                .enumerate()
                .map(|(i, w)| {
                    format!("{}\n{} --> {}\n{}\n\n", i + 1, clock(w.start_s, ','), clock(w.end_s, ','), w.text.trim())
                })
                .collect();
            plain(body, "application/x-subrip; charset=utf-8")
        }
        Format::Vtt => {
            let body: String = cues()
                .map(|w| format!("{} --> {}\n{}\n\n", clock(w.start_s, '.'), clock(w.end_s, '.'), w.text.trim()))
                .collect();
            plain(format!("WEBVTT\n\n{body}"), "text/vtt; charset=utf-8")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_as_srt_and_vtt_write_them() {
        assert_eq!(clock(0.0, ','), "00:00:00,000");
        assert_eq!(clock(3725.5004, '.'), "01:02:05.500");
        assert_eq!(clock(59.9996, ','), "00:01:00,000");
    }

    #[test]
    fn silence_and_noise_are_told_apart() {
        let wav = hound_like_wav;
        let quiet = wav(&[0i16; 16_000]);
        let err = decode(&quiet).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let tone: Vec<i16> = (0..16_000).map(|i| ((i as f32 * 0.1).sin() * 3000.0) as i16).collect();
        assert_eq!(decode(&wav(&tone)).unwrap().len(), 16_000);
    }

    /// A 16-bit mono 16 kHz WAV file.
    fn hound_like_wav(samples: &[i16]) -> Vec<u8> {
        let data = samples.len() as u32 * 2;
        let mut w = Vec::new();
        w.extend(b"RIFF");
        w.extend((36 + data).to_le_bytes());
        w.extend(b"WAVEfmt ");
        w.extend(16u32.to_le_bytes());
        w.extend(1u16.to_le_bytes());
        w.extend(1u16.to_le_bytes());
        w.extend(16_000u32.to_le_bytes());
        w.extend(32_000u32.to_le_bytes());
        w.extend(2u16.to_le_bytes());
        w.extend(16u16.to_le_bytes());
        w.extend(b"data");
        w.extend(data.to_le_bytes());
        for s in samples {
            w.extend(s.to_le_bytes());
        }
        w
    }
}
