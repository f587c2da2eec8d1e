//! Whisper's audio front end: sound file → 16 kHz mono f32 → [80, 3000] log-mel.
//!
//! The log-mel follows the reference's method (`tests/data/whisper/whisper_tiny_en.json`,
//! openai-whisper `transcribe()`'s encoder input): the samples with 480 000 zeros appended,
//! STFT (n_fft 400, hop 160, periodic Hann, centre reflect padding 200, last frame dropped),
//! power |X|², 80 Slaney mel filters (librosa `filters.mel(sr=16000, n_fft=400, n_mels=80)`,
//! computed here), `log10(max(x, 1e-10))`, `max(x, global_max − 8)` where the global max spans
//! every frame of that padded signal, `(x + 4) / 4`, keep the first `samples / 160` frames and
//! zero-pad (0.0) to 3000 frames.
//!
//! Precision: the STFT, the filterbank product, the log and the clamp are computed in f64
//! (filter weights rounded to f32 first, as `mel_filters.npz` stores them); only the output
//! is rounded to f32.

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use realfft::{RealFftPlanner, RealToComplex};
use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction, calculate_cutoff,
};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// STFT size.
pub const N_FFT: usize = 400;
/// STFT hop.
pub const HOP_LENGTH: usize = 160;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Samples in one 30-s window.
pub const N_SAMPLES: usize = 480_000;
/// Mel frames in one 30-s window.
pub const N_FRAMES: usize = 3000;
/// Frequency bins of one STFT frame.
const N_BINS: usize = N_FFT / 2 + 1;
/// `log10(1e-10)`: the value of a frame of pure zeros.
const LOG_FLOOR: f64 = -10.0;

/// Why audio could not be turned into samples.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// No known container was recognised (or the bytes are not audio at all).
    #[error("not audio, or an unsupported container format (WAV, FLAC, MP3, OGG/Vorbis are supported): {0}")]
    NotAudio(String),
    /// The container holds no track with a codec we can decode.
    #[error("no decodable audio track: {0}")]
    UnsupportedCodec(String),
    /// The stream is truncated or malformed.
    #[error("truncated or corrupt audio: {0}")]
    Corrupt(String),
    /// A lossless stream ended before the frame count its header declares.
    #[error("truncated audio: the header declares {declared} frames, only {decoded} could be decoded")]
    Truncated { declared: u64, decoded: u64 },
    /// The stream decoded to zero samples.
    #[error("the audio contains no samples")]
    Empty,
    /// Longer than the configured limit.
    #[error("audio too long: {seconds:.2} s exceeds the limit of {max_seconds} s (DecodeLimits::max_seconds)")]
    TooLong { seconds: f64, max_seconds: f64 },
    /// More channels than the configured limit.
    #[error("too many channels: {channels} (the limit is {max}, DecodeLimits::max_channels)")]
    TooManyChannels { channels: usize, max: usize },
    /// A sample rate of 0 or one that changes mid-stream.
    #[error("invalid sample rate: {0}")]
    BadSampleRate(String),
    /// Raw samples containing NaN or infinity.
    #[error("sample {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    /// rubato refused the conversion.
    #[error("resampling from {from} Hz to 16000 Hz failed: {reason}")]
    Resample { from: u32, reason: String },
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Longest accepted audio, in seconds (checked at the source rate, while decoding).
    pub max_seconds: f64,
    /// Most channels accepted.
    pub max_channels: usize,
}

impl Default for DecodeLimits {
    /// One hour, 8 channels.
    fn default() -> Self {
        DecodeLimits { max_seconds: 3600.0, max_channels: 8 }
    }
}

/// Decoded audio: mono, 16 kHz, f32 in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Mono samples at 16 kHz.
    pub samples: Vec<f32>,
    /// The stream's own sample rate.
    pub source_sample_rate: u32,
    /// The stream's channel count (mixed to mono by the mean).
    pub source_channels: usize,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }

    /// Wraps samples that already are mono 16 kHz f32 (checked: non-empty, finite, limit).
    pub fn from_samples_16k(samples: Vec<f32>, limits: &DecodeLimits) -> Result<Audio, AudioError> {
        if samples.is_empty() {
            return Err(AudioError::Empty);
        }
        check_len(samples.len() as u64, SAMPLE_RATE, limits)?;
        if let Some((index, &value)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(AudioError::NonFinite { index, value });
        }
        Ok(Audio { samples, source_sample_rate: SAMPLE_RATE, source_channels: 1 })
    }

    /// Raw little-endian f32 mono 16 kHz bytes (as a browser's `Float32Array` sends them).
    pub fn from_f32le_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<Audio, AudioError> {
        if !bytes.len().is_multiple_of(4) {
            return Err(AudioError::Corrupt(format!("raw f32 samples: {} bytes is not a multiple of 4", bytes.len())));
        }
        let samples = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Self::from_samples_16k(samples, limits)
    }
}

fn check_len(frames: u64, rate: u32, limits: &DecodeLimits) -> Result<(), AudioError> {
    let seconds = frames as f64 / rate as f64;
    if seconds > limits.max_seconds {
        return Err(AudioError::TooLong { seconds, max_seconds: limits.max_seconds });
    }
    Ok(())
}

fn sym_err(stage: &str, e: SymError) -> AudioError {
    match e {
        SymError::Unsupported(m) => AudioError::NotAudio(format!("{stage}: {m}")),
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt(format!("{stage}: unexpected end of data (truncated)"))
        }
        other => AudioError::Corrupt(format!("{stage}: {other}")),
    }
}

/// [`decode_with_limits`] with [`DecodeLimits::default`].
pub fn decode(bytes: &[u8]) -> Result<Audio, AudioError> {
    decode_with_limits(bytes, &DecodeLimits::default())
}

/// Decodes a sound file (WAV, FLAC, MP3, OGG/Vorbis; symphonia probes the container) to mono
/// 16 kHz f32: channels are mixed by their mean (a mono stream is copied unchanged), and a rate
/// other than 16 kHz is converted with [`resample_to_16k`]. At 16 kHz nothing is resampled, so a
/// 16-bit WAV yields exactly `int16 / 32768.0`. Packets that fail to decode are skipped (as
/// symphonia's player does); if none decodes, the stream is corrupt. For lossless codecs (PCM,
/// FLAC) a stream shorter than its header's frame count is [`AudioError::Truncated`].
pub fn decode_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Audio, AudioError> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| sym_err("probe", e))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::UnsupportedCodec("the container has no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    if let Some(ch) = params.channels
        && ch.count() > limits.max_channels
    {
        return Err(AudioError::TooManyChannels { channels: ch.count(), max: limits.max_channels });
    }
    if let (Some(n), Some(rate)) = (params.n_frames, params.sample_rate)
        && rate > 0
    {
        check_len(n, rate, limits)?;
    }
    let codec_name =
        symphonia::default::get_codecs().get_codec(params.codec).map(|d| d.short_name).unwrap_or("unknown");
    let lossless = codec_name.starts_with("pcm") || codec_name == "flac";
    let mut decoder =
        symphonia::default::get_codecs().make(&params, &DecoderOptions::default()).map_err(|e| match e {
            SymError::Unsupported(m) => AudioError::UnsupportedCodec(m.to_string()),
            other => sym_err("codec", other),
        })?;

    let mut mono: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = None;
    let mut channels = 0usize;
    let mut frames: u64 = 0;
    let mut decoded_packets = 0usize;
    let mut first_error: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(sym_err("demux", e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            Err(SymError::DecodeError(m)) => {
                first_error.get_or_insert_with(|| m.to_string());
                continue;
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(sym_err("decode", e)),
        };
        decoded_packets += 1;
        let spec = *buf.spec();
        if spec.rate == 0 || rate.is_some_and(|r| r != spec.rate) {
            return Err(AudioError::BadSampleRate(format!("{} Hz (stream started at {:?})", spec.rate, rate)));
        }
        rate = Some(spec.rate);
        let ch = spec.channels.count();
        if ch == 0 || ch > limits.max_channels {
            return Err(AudioError::TooManyChannels { channels: ch, max: limits.max_channels });
        }
        channels = ch;
        if buf.frames() == 0 {
            continue;
        }
        let mut sb = SampleBuffer::<f32>::new(buf.capacity() as u64, spec);
        sb.copy_interleaved_ref(buf);
        let s = sb.samples();
        if ch == 1 {
            mono.extend_from_slice(s);
        } else {
            mono.extend(s.chunks_exact(ch).map(|f| (f.iter().map(|&v| v as f64).sum::<f64>() / ch as f64) as f32));
        }
        frames = mono.len() as u64;
        check_len(frames, spec.rate, limits)?;
    }
    if decoded_packets == 0
        && let Some(m) = first_error
    {
        return Err(AudioError::Corrupt(format!("no packet could be decoded: {m}")));
    }
    if lossless
        && let Some(declared) = params.n_frames
        && frames < declared
    {
        return Err(AudioError::Truncated { declared, decoded: frames });
    }
    if mono.is_empty() {
        return Err(AudioError::Empty);
    }
    let source_rate = rate.unwrap_or(SAMPLE_RATE);
    let samples = if source_rate == SAMPLE_RATE { mono } else { resample_to_16k(&mono, source_rate)? };
    Ok(Audio { samples, source_sample_rate: source_rate, source_channels: channels })
}

/// Converts mono samples at `from` Hz to 16 kHz with rubato's `SincFixedIn` (f64): a 256-tap
/// sinc, Blackman-Harris² window, cutoff `calculate_cutoff(256, BlackmanHarris2)` (≈ 0.95 of the
/// lower Nyquist), 256× oversampling with cubic interpolation, 1024-frame chunks. The
/// resampler's delay is removed and the output has `ceil(len · 16000 / from)` samples, aligned
/// in time with the input.
pub fn resample_to_16k(input: &[f32], from: u32) -> Result<Vec<f32>, AudioError> {
    if from == 0 {
        return Err(AudioError::BadSampleRate("0 Hz".into()));
    }
    if from == SAMPLE_RATE {
        return Ok(input.to_vec());
    }
    let rerr = |e: &dyn std::fmt::Display| AudioError::Resample { from, reason: e.to_string() };
    const SINC_LEN: usize = 256;
    const CHUNK: usize = 1024;
    let params = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: calculate_cutoff::<f32>(SINC_LEN, WindowFunction::BlackmanHarris2),
        interpolation: SincInterpolationType::Cubic,
        oversampling_factor: 256,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = SAMPLE_RATE as f64 / from as f64;
    let mut r = SincFixedIn::<f64>::new(ratio, 1.0, params, CHUNK, 1).map_err(|e| rerr(&e))?;
    let expected = (input.len() as u64 * SAMPLE_RATE as u64).div_ceil(from as u64) as usize;
    let delay = r.output_delay();
    let mut out: Vec<f64> = Vec::with_capacity(expected + delay + CHUNK);
    let mut chunk = vec![0f64; CHUNK];
    let mut pos = 0;
    while pos + CHUNK <= input.len() {
        for (d, &s) in chunk.iter_mut().zip(&input[pos..pos + CHUNK]) {
            *d = s as f64;
        }
        let o = r.process(&[&chunk], None).map_err(|e| rerr(&e))?;
        out.extend_from_slice(&o[0]);
        pos += CHUNK;
    }
    if pos < input.len() {
        let rest: Vec<f64> = input[pos..].iter().map(|&s| s as f64).collect();
        let o = r.process_partial(Some(&[&rest]), None).map_err(|e| rerr(&e))?;
        out.extend_from_slice(&o[0]);
    }
    while out.len() < expected + delay {
        let o = r.process_partial::<Vec<f64>>(None, None).map_err(|e| rerr(&e))?;
        out.extend_from_slice(&o[0]);
    }
    Ok(out[delay..delay + expected].iter().map(|&v| v as f32).collect())
}

// ---------------------------------------------------------------- mel filterbank

/// The 80 × 201 Slaney mel filterbank, as librosa `filters.mel(sr=16000, n_fft=400,
/// n_mels=80)` (htk=False, norm="slaney") computes it: f64 arithmetic, stored f32.
pub struct MelFilters {
    /// Row-major [80, 201].
    pub weights: Vec<f32>,
    /// Per filter, the range of bins with non-zero weight.
    ranges: Vec<(usize, usize)>,
}

fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() / logstep } else { f / f_sp }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel { min_log_hz * (logstep * (m - min_log_mel)).exp() } else { f_sp * m }
}

impl MelFilters {
    fn build() -> MelFilters {
        let sr = SAMPLE_RATE as f64;
        let fftfreqs: Vec<f64> = (0..N_BINS).map(|k| k as f64 * (sr / 2.0) / (N_BINS - 1) as f64).collect();
        let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
        let n = N_MELS + 2;
        // np.linspace(lo, hi, n)
        let mel_f: Vec<f64> = (0..n)
            .map(|i| if i == n - 1 { hi } else { lo + i as f64 * ((hi - lo) / (n - 1) as f64) })
            .map(mel_to_hz)
            .collect();
        let mut weights = vec![0f32; N_MELS * N_BINS];
        let mut ranges = Vec::with_capacity(N_MELS);
        for i in 0..N_MELS {
            let fdiff0 = mel_f[i + 1] - mel_f[i];
            let fdiff1 = mel_f[i + 2] - mel_f[i + 1];
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            let (mut a, mut b) = (N_BINS, 0);
            for (k, &f) in fftfreqs.iter().enumerate() {
                let lower = -(mel_f[i] - f) / fdiff0;
                let upper = (mel_f[i + 2] - f) / fdiff1;
                let w = (0f64).max(lower.min(upper)) * enorm;
                weights[i * N_BINS + k] = w as f32;
                if w > 0.0 {
                    a = a.min(k);
                    b = b.max(k + 1);
                }
            }
            ranges.push((a.min(b), b));
        }
        MelFilters { weights, ranges }
    }

    /// Weight of filter `m` at FFT bin `k`.
    pub fn weight(&self, m: usize, k: usize) -> f32 {
        self.weights[m * N_BINS + k]
    }
}

/// The shared filterbank (built once).
pub fn mel_filters() -> &'static MelFilters {
    static F: OnceLock<MelFilters> = OnceLock::new();
    F.get_or_init(MelFilters::build)
}

// ---------------------------------------------------------------- STFT + log-mel

/// A log-mel window: [80, 3000] row-major (`data[mel * 3000 + frame]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    pub data: Vec<f32>,
    /// Frames holding audio; frames from here to 3000 are the 0.0 padding.
    pub content_frames: usize,
}

impl Mel {
    /// Value at (mel band, frame).
    pub fn at(&self, mel: usize, frame: usize) -> f32 {
        self.data[mel * N_FRAMES + frame]
    }

    /// The 80 values of one frame.
    pub fn frame(&self, frame: usize) -> [f32; N_MELS] {
        std::array::from_fn(|m| self.at(m, frame))
    }
}

/// The signal the STFT sees: `samples` cut or zero-extended to `len`, reflect-padded by 200.
struct Signal<'a> {
    samples: &'a [f32],
    len: usize,
}

impl Signal<'_> {
    fn at(&self, j: isize) -> f64 {
        let len = self.len as isize;
        let mut i = j - (N_FFT / 2) as isize;
        if i < 0 {
            i = -i;
        }
        if i >= len {
            i = 2 * (len - 1) - i;
        }
        let i = i as usize;
        if i < self.samples.len().min(self.len) { self.samples[i] as f64 } else { 0.0 }
    }

    /// STFT frames (the last one dropped).
    fn frames(&self) -> usize {
        self.len / HOP_LENGTH
    }

    /// Whether frame `t` reads only zeros (its log-mel is then exactly −10).
    fn is_silent(&self, t: usize) -> bool {
        let nz = self.samples.len().min(self.len);
        let start = t * HOP_LENGTH; // original index start + 200
        start >= nz + N_FFT / 2 && start + N_FFT / 2 <= self.len
    }
}

struct Stft {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    input: Vec<f64>,
    spectrum: Vec<realfft::num_complex::Complex<f64>>,
    scratch: Vec<realfft::num_complex::Complex<f64>>,
    power: Vec<f64>,
}

impl Stft {
    fn new() -> Stft {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let window =
            (0..N_FFT).map(|k| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64).cos()).collect();
        Stft {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            window,
            power: vec![0.0; N_BINS],
        }
    }

    /// log10(max(mel power, 1e-10)) of frame `t`.
    fn log_mel(&mut self, sig: &Signal, t: usize, out: &mut [f64; N_MELS]) {
        if sig.is_silent(t) {
            out.fill(LOG_FLOOR);
            return;
        }
        let base = (t * HOP_LENGTH) as isize;
        for (k, x) in self.input.iter_mut().enumerate() {
            *x = sig.at(base + k as isize) * self.window[k];
        }
        self.fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .expect("buffer sizes come from the plan");
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
        let f = mel_filters();
        for (m, o) in out.iter_mut().enumerate() {
            let (a, b) = f.ranges[m];
            let row = &f.weights[m * N_BINS..(m + 1) * N_BINS];
            let s: f64 = (a..b).map(|k| row[k] as f64 * self.power[k]).sum();
            *o = s.max(1e-10).log10();
        }
    }

    fn global_max(&mut self, sig: &Signal) -> f64 {
        let mut max = f64::NEG_INFINITY;
        let mut buf = [0f64; N_MELS];
        let mut silent_seen = false;
        for t in 0..sig.frames() {
            if sig.is_silent(t) {
                silent_seen = true;
                continue;
            }
            self.log_mel(sig, t, &mut buf);
            max = buf.iter().copied().fold(max, f64::max);
        }
        if silent_seen {
            max = max.max(LOG_FLOOR);
        }
        max
    }

    /// Frames `seek..seek + n_frames` (clamped and scaled) into a 3000-frame window; frames
    /// from `keep` on stay 0.0.
    fn window(&mut self, sig: &Signal, max: f64, seek: usize, keep: usize) -> Mel {
        let mut data = vec![0f32; N_MELS * N_FRAMES];
        let mut buf = [0f64; N_MELS];
        let floor = max - 8.0;
        for i in 0..keep.min(N_FRAMES) {
            self.log_mel(sig, seek + i, &mut buf);
            for (m, &v) in buf.iter().enumerate() {
                data[m * N_FRAMES + i] = ((v.max(floor) + 4.0) / 4.0) as f32;
            }
        }
        Mel { data, content_frames: keep.min(N_FRAMES) }
    }
}

/// The log-mel of the whole audio, cut into the 30-s windows of sequential decoding.
///
/// The reference method describes only ≤ 30 s; longer audio follows openai-whisper's
/// `transcribe()`: one log-mel of `samples + 480 000 zeros` (so the `global max − 8` clamp spans
/// the whole file), then windows `mel[:, seek : seek + segment_size]` with `segment_size =
/// min(3000, content_frames − seek)`, each `pad_or_trim`-ed (0.0) to 3000 frames; `seek`
/// advances by 3000 (as with `without_timestamps=True`). Frames are computed on demand: one
/// pass over the file for the global max, then one per window.
pub struct MelWindows<'a> {
    samples: &'a [f32],
    max: f64,
    content_frames: usize,
    seek: usize,
    stft: Stft,
}

impl<'a> MelWindows<'a> {
    pub fn new(samples: &'a [f32]) -> MelWindows<'a> {
        let mut stft = Stft::new();
        let sig = Signal { samples, len: samples.len() + N_SAMPLES };
        let max = stft.global_max(&sig);
        MelWindows { samples, max, content_frames: samples.len() / HOP_LENGTH, seek: 0, stft }
    }

    /// Frames holding audio in the whole file (`samples / 160`).
    pub fn content_frames(&self) -> usize {
        self.content_frames
    }

    /// The log10 global max the clamp uses.
    pub fn global_max(&self) -> f64 {
        self.max
    }
}

impl Iterator for MelWindows<'_> {
    /// (seek in frames, window)
    type Item = (usize, Mel);

    fn next(&mut self) -> Option<(usize, Mel)> {
        if self.seek >= self.content_frames {
            return None;
        }
        let sig = Signal { samples: self.samples, len: self.samples.len() + N_SAMPLES };
        let seek = self.seek;
        let keep = (self.content_frames - seek).min(N_FRAMES);
        let mel = self.stft.window(&sig, self.max, seek, keep);
        self.seek += N_FRAMES;
        Some((seek, mel))
    }
}

/// The encoder input for 16 kHz mono samples, exactly as the reference method describes (the
/// first 30-s window of [`MelWindows`]; for audio ≤ 30 s the only one). Audio shorter than one
/// hop gives an all-zero mel with `content_frames == 0`.
pub fn log_mel(samples: &[f32]) -> Mel {
    MelWindows::new(samples)
        .next()
        .map(|(_, m)| m)
        .unwrap_or(Mel { data: vec![0.0; N_MELS * N_FRAMES], content_frames: 0 })
}

/// The other common recipe (the reference's `mel_audio_padded`): the AUDIO cut or zero-padded
/// to 30 s first, then the log-mel of those 480 000 samples, all 3000 frames kept (the tail holds
/// the floor `(max − 8 + 4) / 4`, not 0.0). `content_frames` = frames holding audio.
pub fn log_mel_audio_padded(samples: &[f32]) -> Mel {
    let mut stft = Stft::new();
    let sig = Signal { samples, len: N_SAMPLES };
    let max = stft.global_max(&sig);
    let mut mel = stft.window(&sig, max, 0, N_FRAMES);
    mel.content_frames = samples.len().min(N_SAMPLES) / HOP_LENGTH;
    mel
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper/");

    fn stats(v: impl Iterator<Item = f32> + Clone) -> (f64, f64, f64, f64) {
        let n = v.clone().count() as f64;
        let mean = v.clone().map(|x| x as f64).sum::<f64>() / n;
        let var = v.clone().map(|x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let min = v.clone().fold(f32::INFINITY, f32::min) as f64;
        let max = v.fold(f32::NEG_INFINITY, f32::max) as f64;
        (mean, var.sqrt(), min, max)
    }

    fn check_stats(name: &str, got: (f64, f64, f64, f64), want: &Value, worst: &mut f64) {
        let keys = ["mean", "std", "min", "max"];
        let g = [got.0, got.1, got.2, got.3];
        for (k, g) in keys.iter().zip(g) {
            let w = want[*k].as_f64().unwrap();
            let d = (g - w).abs();
            *worst = worst.max(d);
            eprintln!("{name}.{k}: got {g:.7} want {w} diff {d:.2e}");
            assert!(d < 1e-4, "{name}.{k}: got {g} want {w}");
        }
    }

    /// Measured max deviation (both clips, every statistic and frame value): see the commit
    /// message / the eprintln output; the assertion bound is 1e-4.
    #[test]
    fn matches_reference() {
        let refj: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{DIR}whisper_tiny_en.json")).unwrap()).unwrap();
        let mut worst = 0f64;
        for case in refj["cases"].as_array().unwrap() {
            let file = case["file"].as_str().unwrap();
            let bytes = std::fs::read(format!("{DIR}{file}")).unwrap();
            let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(sha, case["file_sha256"].as_str().unwrap(), "{file}");
            let audio = decode(&bytes).unwrap();
            assert_eq!(audio.samples.len() as u64, case["samples"].as_u64().unwrap());
            assert_eq!(audio.source_sample_rate, 16000);
            let mel = log_mel(&audio.samples);
            let r = &case["mel"];
            assert_eq!(mel.content_frames as u64, r["content_frames"].as_u64().unwrap());
            check_stats(file, stats(mel.data.iter().copied()), r, &mut worst);
            let cf = mel.content_frames;
            let content = (0..N_MELS).flat_map(|m| mel.data[m * N_FRAMES..m * N_FRAMES + cf].iter().copied());
            check_stats(&format!("{file} content"), stats(content), &r["content_only"], &mut worst);
            let mid = r["mid_frame_index"].as_u64().unwrap() as usize;
            for (key, t) in [("first_frame", 0), ("mid_frame", mid)] {
                let want = r[key].as_array().unwrap();
                assert_eq!(want.len(), N_MELS);
                let mut fw = 0f64;
                for (m, w) in want.iter().enumerate() {
                    let d = (mel.at(m, t) as f64 - w.as_f64().unwrap()).abs();
                    fw = fw.max(d);
                    assert!(d < 1e-4, "{file} {key}[{m}]: {} vs {w}", mel.at(m, t));
                }
                worst = worst.max(fw);
                eprintln!("{file} {key}: max diff {fw:.2e}");
            }
            // Padded frames are exactly 0.0.
            assert!((0..N_MELS).all(|m| mel.data[m * N_FRAMES + cf..(m + 1) * N_FRAMES].iter().all(|&v| v == 0.0)));
            // The other recipe.
            let ap = log_mel_audio_padded(&audio.samples);
            check_stats(
                &format!("{file} audio_padded"),
                stats(ap.data.iter().copied()),
                &case["mel_audio_padded"],
                &mut worst,
            );
            // Windows: one window, the same as log_mel.
            let wins: Vec<_> = MelWindows::new(&audio.samples).collect();
            assert_eq!(wins.len(), 1);
            assert_eq!(wins[0].1, mel);
        }
        eprintln!("max deviation over everything: {worst:.2e}");
    }
}
