//! Sequential transcription, as faster-whisper runs it with `without_timestamps=True`: the audio's
//! log-mel cut into 30-s windows; each window encoded once (the encoder's outputs include the
//! decoder's cross keys and values, which become the decoder session's memory), then decoded
//! greedily until end-of-text, conditioned on the text so far (`<|startofprev|>` + the last 223
//! ids before the window's `<|startoftranscript|> <|notimestamps|>`).
//!
//! A window faster-whisper would judge silent (no-speech probability over 0.6 and an average
//! log-probability not above −1: `Decoding::judged_silent`) is left out, and its text does not
//! condition the next one. Not done: temperature fallback, which the reference's settings
//! (temperatures `[0.0]`) turn off too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use page_runtime::executors::cpu::CpuModel;
use shared_proto::{ExecBackend, Graph, Sampling, StepRow, Tensor};

use crate::exec::gate::Gate;
use crate::exec::placement::launch_for;
use crate::exec::{Replacer, Stepper, TabModel, WeightUpload, load_in_tab};
use crate::models::whisper::Whisper;
use crate::models::whisper::audio::{self, HOP_LENGTH, Mel, N_FRAMES, SAMPLE_RATE};
use crate::models::whisper::decoder::{self, DecoderLimits};
use crate::models::whisper::encoder;
use crate::models::whisper::encoder_batch::EncoderModel;
use crate::policy::backend_choice::{Backend, Measured, for_generation};
use crate::policy::recovery::Category;
use crate::policy::weight_form::{self, Preference, WeightForm};
use crate::tab::TabError;
use crate::{Host, Tab};

/// `<|startofprev|>`: what precedes the previous text in a conditioned prompt.
pub const SOT_PREV: u32 = 50360;

/// Where the encoder runs: the host's CPU executor or a tab.
pub enum EncoderRunner {
    Host(Arc<CpuModel>),
    Tab(TabModel),
}

impl EncoderRunner {
    pub fn on_host(model: &Whisper) -> anyhow::Result<EncoderRunner> {
        let (graph, weights, _) = model.encoder(false)?;
        Ok(EncoderRunner::Host(Arc::new(CpuModel::new(graph, weights).map_err(|e| anyhow::anyhow!("{e}"))?)))
    }

    pub async fn in_tab(
        tab: &Tab,
        model: &Whisper,
        backend: ExecBackend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<EncoderRunner> {
        let (graph, weights, _) = model.encoder(false)?;
        let name = format!("{}-encoder", model.name);
        Ok(EncoderRunner::Tab(TabModel::load(tab, &name, &graph, &weights, backend, progress).await?))
    }

    /// "cpu" (the host) or the tab's backend.
    pub fn backend(&self) -> String {
        match self {
            EncoderRunner::Host(_) => "cpu".into(),
            EncoderRunner::Tab(tm) => tm.backend.to_string(),
        }
    }

    pub fn tab_id(&self) -> Option<u64> {
        self.tab().map(Tab::id)
    }

    pub fn tab(&self) -> Option<&Tab> {
        match self {
            EncoderRunner::Host(_) => None,
            EncoderRunner::Tab(tm) => Some(&tm.tab),
        }
    }

    /// The encoder's tab model when it shares its tab with `decoder`'s: then a window's memory
    /// can be written where it is computed (`TabModel::run_into_memory`).
    fn beside<'a>(&'a self, decoder: &'a Stepper) -> Option<(&'a TabModel, &'a TabModel)> {
        match (self, decoder) {
            (EncoderRunner::Tab(e), Stepper::Tab(d)) if e.tab.id() == d.tab.id() => Some((e, d)),
            _ => None,
        }
    }

    /// One window: the cross keys and values per decoder layer (`k0, v0, …`), and the
    /// executor's time in ms.
    pub async fn encode(&self, mel: &Mel) -> anyhow::Result<(Vec<Tensor>, f64)> {
        let inputs = encoder::inputs(&[&mel.data])?;
        match self {
            EncoderRunner::Host(m) => {
                let m = m.clone();
                tokio::task::spawn_blocking(move || {
                    let t0 = Instant::now();
                    let out = m.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok((out, t0.elapsed().as_secs_f64() * 1e3))
                })
                .await?
            }
            EncoderRunner::Tab(tm) => tm.run(inputs).await,
        }
    }
}

/// Where a window's cross-attention memory comes from when its decoder session opens.
#[derive(Clone, Copy)]
enum WindowMemory<'a> {
    /// Encoded already (on the host, in another tab, or ahead of time): sent with `PutMemory`.
    Encoded(&'a Tensor),
    /// Encoded now, in the decoder's own tab, straight into the session (`EncodeIntoMemory`).
    EncodeHere(&'a Mel),
}

/// One 30-s window's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
    /// Generated ids, end-of-text excluded.
    pub ids: Vec<u32>,
    pub text: String,
    /// The no-speech probability and faster-whisper's average log-probability (none without
    /// ids) the window was judged by ([`Decoding::judged_silent`]).
    pub no_speech_prob: f64,
    pub avg_logprob: Option<f64>,
}

/// A whole file's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcript {
    pub ids: Vec<u32>,
    /// The windows' texts joined, surrounding spaces trimmed.
    pub text: String,
    pub windows: Vec<Window>,
    /// Seconds of audio.
    pub duration_s: f64,
    /// Seconds taken (front end, encoder and decoder).
    pub elapsed_s: f64,
    /// Encoder and decoder executor time, ms.
    pub encode_ms: f64,
    pub decode_ms: f64,
    /// Wall time of the front end, and of the encoder's and the decoder's calls (round trips and
    /// the encoder output's crossing included; overlapped calls each count whole), ms.
    pub front_ms: f64,
    pub encode_wall_ms: f64,
    pub decode_wall_ms: f64,
    /// Tabs replaced because they were lost on the way.
    pub tabs_replaced: u32,
    /// Windows judged silent and left out of the text and the ids, as faster-whisper skips them
    /// ([`Decoding::judged_silent`]); what they decoded is kept here.
    pub skipped: Vec<Window>,
}

impl Transcript {
    /// Real-time factor: seconds of compute per second of audio.
    pub fn rtf(&self) -> f64 {
        if self.duration_s > 0.0 { self.elapsed_s / self.duration_s } else { 0.0 }
    }
}

/// The encoder and the decoder, wherever each runs (one tab, two tabs, or the host).
pub struct Transcriber {
    pub model: Arc<Whisper>,
    pub encoder: EncoderRunner,
    pub decoder: Stepper,
    sessions: AtomicU64,
    /// How the parts were placed in tabs, so a lost tab can be replaced like for like.
    placement: Option<TabPlacement>,
    /// In a pool: short requests go before each of this transcription's calls.
    gate: Option<Arc<Gate>>,
    /// In a pool whose replica spans two tabs: a new decoder in another tab when the decoder's
    /// tab is lost (called with 1, the decoder's stage).
    decoder_replacer: Option<Replacer>,
}

/// Where the parts of a tab placement run: backends, and whether they share one tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TabPlacement {
    pub encoder: Backend,
    pub decoder: Backend,
    pub two_tabs: bool,
    /// The decoder's weights: fastest for its executor or compact (`policy::weight_form`).
    pub weights: Preference,
}

/// A lost tab is replaced at most this often per window before the window fails.
const MAX_REPLACEMENTS_PER_WINDOW: u32 = 3;

/// A Whisper model made ready once for loading into many tabs (the pool's replicas): the encoder
/// as a batch model, the decoder's step graph and weights.
pub struct SpeechParts {
    pub model: Arc<Whisper>,
    pub encoder: EncoderModel,
    /// The decoder in each weight form, built when a tab first needs it.
    decoders: [std::sync::OnceLock<(Graph, Vec<Tensor>)>; 2],
    /// Fastest or compact decoder weights (`policy::weight_form`).
    decoder_weights: Preference,
}

impl SpeechParts {
    pub fn build(model: Arc<Whisper>, decoder_weights: Preference) -> anyhow::Result<SpeechParts> {
        let encoder = EncoderModel::new(&model)?;
        Ok(SpeechParts { model, encoder, decoders: Default::default(), decoder_weights })
    }

    fn decoder(&self, form: WeightForm) -> anyhow::Result<&(Graph, Vec<Tensor>)> {
        let cell = &self.decoders[form as usize];
        if let Some(d) = cell.get() {
            return Ok(d);
        }
        let built = self.model.decoder(DecoderLimits::default(), form)?;
        Ok(cell.get_or_init(|| built))
    }

    /// Both parts in `tab`: the encoder on `backend` — with `Auto`, every backend the tab offers
    /// is timed on a real window and the fastest kept (the measurements are returned) — and the
    /// decoder where generation's rule puts a decode loop: WebGPU on a real GPU adapter, else the
    /// tab's wasm CPU executor (on SwiftShader the WebGPU decoder ran the reference clips at 3.3–3.6
    /// s per audio second, against 0.1–0.25 on wasm).
    pub async fn load_in_tab(
        &self,
        tab: &Tab,
        backend: Backend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<(Transcriber, Vec<Measured>)> {
        self.load_in_tabs(tab, tab, backend, progress).await
    }

    /// The encoder in `enc` (on `backend`, calibrated as in [`Self::load_in_tab`]) and the
    /// decoder in `dec`, both loading at once: one tab when they are the same, else the
    /// component split (the encoder's output crosses once per window, the steps stay in `dec`).
    pub async fn load_in_tabs(
        &self,
        enc: &Tab,
        dec: &Tab,
        backend: Backend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<(Transcriber, Vec<Measured>)> {
        let ((tm, measured), decoder) = if enc.id() == dec.id() {
            // In turn: the encoder's calibration is timed with nothing else in its tab.
            let encoder = load_in_tab(enc, &self.encoder, backend, progress).await?;
            (encoder, self.load_decoder(dec, progress).await?)
        } else {
            let (encoder, decoder) =
                tokio::join!(load_in_tab(enc, &self.encoder, backend, progress), self.load_decoder(dec, progress));
            (encoder?, decoder?)
        };
        Ok((Transcriber::new(self.model.clone(), EncoderRunner::Tab(tm), decoder), measured))
    }

    /// The decoder in `tab`, where generation's rule puts a decode loop.
    pub async fn load_decoder(&self, tab: &Tab, progress: &dyn WeightUpload) -> anyhow::Result<Stepper> {
        let name = format!("{}-decoder", self.model.name);
        let exec = for_generation(Backend::Auto, tab.caps())?;
        let (graph, weights) = self.decoder(weight_form::for_decoder(&exec, self.decoder_weights))?;
        Stepper::in_tab(tab, &name, graph, weights, exec.clone(), progress)
            .await
            .with_context(|| format!("loading the Whisper decoder on {exec} in tab {}", tab.id()))
    }
}

impl Transcriber {
    pub fn new(model: Arc<Whisper>, encoder: EncoderRunner, decoder: Stepper) -> Transcriber {
        Transcriber {
            model,
            encoder,
            decoder,
            sessions: AtomicU64::new(1),
            placement: None,
            gate: None,
            decoder_replacer: None,
        }
    }

    /// Both on the host's CPU executor.
    pub fn on_host(model: Arc<Whisper>) -> anyhow::Result<Transcriber> {
        let encoder = EncoderRunner::on_host(&model)?;
        let form = weight_form::for_decoder(&ExecBackend::Cpu, Preference::Fastest);
        let (graph, weights) = model.decoder(DecoderLimits::default(), form)?;
        let decoder = Stepper::on_host(graph, weights)?;
        Ok(Transcriber::new(model, encoder, decoder))
    }

    /// Launch the tabs of `placement` on `host` and load the parts there.
    pub async fn place(host: &mut Host, model: Arc<Whisper>, placement: TabPlacement) -> anyhow::Result<Transcriber> {
        let et = launch_for(host, placement.encoder).await?;
        let dt = if placement.two_tabs { launch_for(host, placement.decoder).await? } else { et.clone() };
        let b = |b: Backend| b.in_tab().context("an in-tab backend");
        let mut t = Transcriber::in_tabs(
            model,
            (&et, b(placement.encoder)?),
            (&dt, b(placement.decoder)?),
            placement.weights,
            &(),
        )
        .await?;
        t.placement = Some(placement);
        Ok(t)
    }

    /// The encoder in `enc.0` on `enc.1`, the decoder in `dec.0` on `dec.1` (one tab or two).
    pub async fn in_tabs(
        model: Arc<Whisper>,
        enc: (&Tab, ExecBackend),
        dec: (&Tab, ExecBackend),
        weights: Preference,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<Transcriber> {
        let ((et, eb), (dt, db)) = (enc, dec);
        let encoder = EncoderRunner::in_tab(et, &model, eb.clone(), progress)
            .await
            .with_context(|| format!("loading the Whisper encoder on {eb} in tab {}", et.id()))?;
        let decoder = decoder_in(dt, &model, db, weights, progress).await?;
        Ok(Transcriber::new(model, encoder, decoder))
    }

    /// Let pending short requests go before each encoder window and decoder step.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Transcriber {
        self.gate = Some(gate);
        self
    }

    /// Replace a lost decoder tab through `replacer` (the pool's: a free tab, a new one, or the
    /// lost one once recovered), replaying the window's session there.
    pub fn with_decoder_replacer(mut self, replacer: Replacer) -> Transcriber {
        self.decoder_replacer = Some(replacer);
        self
    }

    async fn yield_to_pending(&self) {
        if let Some(g) = &self.gate {
            g.yield_to_pending().await;
        }
    }

    /// Where each part runs: `"wasm-cpu"`, or `"cpu+wasm-cpu"` when they differ.
    pub fn backend(&self) -> String {
        let (e, d) = (self.encoder.backend(), self.decoder.backend());
        if e == d { e } else { format!("{e}+{d}") }
    }

    /// The encoder's executor when it runs in a tab.
    pub fn encoder_backend(&self) -> Option<ExecBackend> {
        match &self.encoder {
            EncoderRunner::Host(_) => None,
            EncoderRunner::Tab(tm) => Some(tm.backend.clone()),
        }
    }

    /// The tabs used (encoder's first), without repeats.
    pub fn tabs(&self) -> Vec<u64> {
        let mut t: Vec<u64> = self.encoder.tab_id().into_iter().chain(self.decoder.tab_ids()).collect();
        t.dedup();
        t
    }

    /// Threads the decoder's tab runs its CPU executor on (`Capabilities::threads`; 1 on the
    /// host, whose executor spreads over rayon's threads).
    pub fn decoder_threads(&self) -> u32 {
        self.decoder_tab().map_or(1, |t| t.caps().threads)
    }

    /// Transcribe 16 kHz mono samples.
    pub async fn transcribe(&mut self, samples: Arc<Vec<f32>>) -> anyhow::Result<Transcript> {
        self.run(samples, &[], None).await
    }

    /// Transcribe with `context` (token ids of earlier text, e.g. OpenAI's `prompt`) as the text
    /// before the first window, as faster-whisper's `initial_prompt`; it is not in the output.
    pub async fn transcribe_after(&mut self, samples: Arc<Vec<f32>>, context: &[u32]) -> anyhow::Result<Transcript> {
        self.run(samples, context, None).await
    }

    /// Transcribe, replacing a tab lost on the way (`place`d transcribers only): a lost encoder
    /// tab re-encodes the window in a new tab; a lost decoder tab is replaced and the window's
    /// session replayed there (its memory sent again, prompt and ids so far re-run), so the
    /// transcript is the one an undisturbed run gives.
    pub async fn transcribe_recovering(
        &mut self,
        host: &mut Host,
        samples: Arc<Vec<f32>>,
    ) -> anyhow::Result<Transcript> {
        self.run(samples, &[], Some(host)).await
    }

    async fn run(
        &mut self,
        samples: Arc<Vec<f32>>,
        context: &[u32],
        host: Option<&mut Host>,
    ) -> anyhow::Result<Transcript> {
        // Timed from here: the front end counts in the real-time factor.
        let t0 = Instant::now();
        let duration_s = samples.len() as f64 / SAMPLE_RATE as f64;
        let windows: Vec<(usize, Mel)> =
            tokio::task::spawn_blocking(move || audio::MelWindows::new(&samples).collect()).await?;
        let front_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut out = self.run_windows(t0, windows, duration_s, context, host).await?;
        out.front_ms = front_ms;
        Ok(out)
    }

    /// Transcribe log-mel windows already made (`(first frame, window)`, in order), each
    /// conditioned on the text before it (`context` first).
    pub async fn transcribe_windows(
        &mut self,
        windows: Vec<(usize, Mel)>,
        duration_s: f64,
        context: &[u32],
    ) -> anyhow::Result<Transcript> {
        self.run_windows(Instant::now(), windows, duration_s, context, None).await
    }

    async fn run_windows(
        &mut self,
        t0: Instant,
        windows: Vec<(usize, Mel)>,
        duration_s: f64,
        context: &[u32],
        mut host: Option<&mut Host>,
    ) -> anyhow::Result<Transcript> {
        let mut previous = context.to_vec();
        let (mut all, mut out, mut encode_ms, mut decode_ms, mut replaced) = (Vec::new(), Vec::new(), 0.0, 0.0, 0);
        let (mut encode_wall_ms, mut decode_wall_ms, mut skipped) = (0.0, 0.0, Vec::new());
        let frame_s = HOP_LENGTH as f64 / SAMPLE_RATE as f64;
        // The next window's encoding, run while this window decodes: its input does not depend
        // on the text so far, and the encoder (WebNN, another tab, the host) runs beside the
        // decoder's steps. A failed prefetch is simply encoded again in turn (with recovery).
        let mut prefetched: Option<anyhow::Result<(Vec<Tensor>, f64)>> = None;
        for (k, (seek, mel)) in windows.iter().enumerate() {
            let mut tries = 0;
            // With both parts in one tab, a window nobody encoded ahead, and no next window to
            // encode beside its decoding, is encoded straight into its decoder session: its 18 MB
            // of memory never makes the round trip through the host.
            let here =
                prefetched.is_none() && windows.get(k + 1).is_none() && self.encoder.beside(&self.decoder).is_some();
            let memory = if here {
                None
            } else {
                Some(loop {
                    let encoded = match prefetched.take() {
                        Some(Ok(done)) => Ok(done),
                        _ => {
                            self.yield_to_pending().await;
                            let (e, wall) = timed(self.encoder.encode(mel)).await;
                            encode_wall_ms += wall;
                            e
                        }
                    };
                    match encoded {
                        Ok((outputs, ms)) => {
                            encode_ms += ms;
                            break decoder::memory(&outputs)?;
                        }
                        Err(e) => {
                            tries += 1;
                            self.replace_lost(host.as_deref_mut(), e, tries, Part::Encoder).await?;
                            replaced += 1;
                        }
                    }
                })
            };
            let source = match &memory {
                Some(t) => WindowMemory::Encoded(t),
                None => WindowMemory::EncodeHere(mel),
            };
            let prompt = self.prompt(&previous);
            let mut done = Decoding::default();
            loop {
                let (decoded, wall) = match windows.get(k + 1) {
                    Some((_, next)) if prefetched.is_none() => {
                        let ((d, d_wall), (e, e_wall)) = tokio::join!(
                            timed(self.decode_window(source, &prompt, &mut done)),
                            timed(self.encoder.encode(next))
                        );
                        prefetched = Some(e);
                        encode_wall_ms += e_wall;
                        (d, d_wall)
                    }
                    _ => timed(self.decode_window(source, &prompt, &mut done)).await,
                };
                decode_wall_ms += wall;
                match decoded {
                    Ok((ms, encoded)) => {
                        decode_ms += ms;
                        if let Some((ms, wall)) = encoded {
                            // The window's encoding ran inside this call: its time is the
                            // encoder's, not the decoder's.
                            encode_ms += ms;
                            encode_wall_ms += wall;
                            decode_wall_ms -= wall;
                        }
                        break;
                    }
                    Err(e) => {
                        tries += 1;
                        self.replace_lost(host.as_deref_mut(), e, tries, Part::Decoder).await?;
                        replaced += 1;
                    }
                }
            }
            let silent = done.judged_silent();
            let (no_speech_prob, avg_logprob) = (done.no_speech_prob, done.avg_logprob());
            let ids = done.ids;
            let text = self.model.text(&ids)?;
            let frames = mel.content_frames.min(N_FRAMES);
            let (start_s, end_s) = (*seek as f64 * frame_s, (seek + frames) as f64 * frame_s);
            let window = Window { start_s, end_s, ids, text, no_speech_prob, avg_logprob };
            if silent {
                // As faster-whisper: no segment, and nothing for the next window's prompt.
                tracing::debug!(window = k, no_speech_prob, "window judged silent: skipped");
                skipped.push(window);
                continue;
            }
            all.extend_from_slice(&window.ids);
            previous.extend_from_slice(&window.ids);
            out.push(window);
        }
        let text = out.iter().map(|w| w.text.as_str()).collect::<String>().trim().to_string();
        Ok(Transcript {
            ids: all,
            text,
            windows: out,
            duration_s,
            elapsed_s: t0.elapsed().as_secs_f64(),
            encode_ms,
            decode_ms,
            front_ms: 0.0,
            encode_wall_ms,
            decode_wall_ms,
            tabs_replaced: replaced,
            skipped,
        })
    }

    /// After `err` from `part`: when its tab is gone and a host can launch another (or, for the
    /// decoder, the pool's replacer gives one), load the part(s) that tab held into a new one;
    /// otherwise `err` stands.
    async fn replace_lost(
        &mut self,
        host: Option<&mut Host>,
        err: anyhow::Error,
        tries: u32,
        part: Part,
    ) -> anyhow::Result<()> {
        let lost = match part {
            Part::Encoder => self.encoder.tab(),
            Part::Decoder => self.decoder_tab(),
        };
        let connection = TabError::category(&err) == Category::Connection;
        if tries > MAX_REPLACEMENTS_PER_WINDOW || !(connection || lost.is_some_and(|t| !t.is_connected())) {
            return Err(err);
        }
        if let (Part::Decoder, Some(replace)) = (part, self.decoder_replacer.clone()) {
            tracing::warn!("whisper: the decoder's tab was lost ({err:#}); replacing it");
            self.decoder =
                replace(1).await.with_context(|| format!("replacing the lost decoder tab after: {err:#}"))?;
            return Ok(());
        }
        let (Some(host), Some(p)) = (host, self.placement) else { return Err(err) };
        tracing::warn!("whisper: the {part:?} tab was lost ({err:#}); replacing it");
        let b = |b: Backend| b.in_tab().context("an in-tab backend");
        let model = self.model.clone();
        if !p.two_tabs || part == Part::Encoder {
            let tab = launch_for(host, p.encoder).await?;
            self.encoder = EncoderRunner::in_tab(&tab, &model, b(p.encoder)?, &()).await?;
            if !p.two_tabs {
                self.decoder = decoder_in(&tab, &model, b(p.decoder)?, p.weights, &()).await?;
            }
        } else {
            let tab = launch_for(host, p.decoder).await?;
            self.decoder = decoder_in(&tab, &model, b(p.decoder)?, p.weights, &()).await?;
        }
        Ok(())
    }

    fn decoder_tab(&self) -> Option<&Tab> {
        match &self.decoder {
            Stepper::Tab(tm) => Some(&tm.tab),
            _ => None,
        }
    }

    /// faster-whisper's prompt: the previous ids (at most `n_text_ctx / 2 − 1`) after
    /// `<|startofprev|>`, then `<|startoftranscript|> <|notimestamps|>`.
    pub fn prompt(&self, previous: &[u32]) -> Vec<u32> {
        let cfg = &self.model.cfg;
        let mut p = Vec::new();
        if !previous.is_empty() {
            p.push(SOT_PREV);
            let keep = cfg.n_text_ctx / 2 - 1;
            p.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        p.extend([cfg.sot, cfg.no_timestamps]);
        p
    }

    /// Greedy decoding of one window whose cross memory is `memory`, appending to `done` until
    /// end-of-text; the decoder's executor time in ms. Ids already in `done` (from a session
    /// lost on the way) are replayed after the prompt, so decoding resumes where it stopped.
    ///
    /// The prompt runs in two steps, the first ending at `<|startoftranscript|>`: there the
    /// graph's no-speech probability is read, as CTranslate2 reads it for faster-whisper. Every
    /// later step also gives its chosen id's probability (end-of-text's included), for the
    /// window's average log-probability.
    ///
    /// Returns the decoder's executor time in ms and, when the window was encoded here, the
    /// encoder's executor and wall times.
    async fn decode_window(
        &self,
        memory: WindowMemory<'_>,
        prompt: &[u32],
        done: &mut Decoding,
    ) -> anyhow::Result<(f64, Option<(f64, f64)>)> {
        let cfg = &self.model.cfg;
        let sot = prompt.iter().position(|&t| t == cfg.sot).context("a Whisper prompt holds <|startoftranscript|>")?;
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        self.decoder.open(session, cfg.n_audio_ctx as u32).await?;
        let mut encoded = None;
        let result = async {
            let first_layer = cfg.n_text_layer as u32;
            match (memory, self.encoder.beside(&self.decoder)) {
                (WindowMemory::Encoded(m), _) => {
                    self.decoder.put_memory(session, first_layer, m.clone()).await?;
                }
                (WindowMemory::EncodeHere(mel), Some((enc, dec))) => {
                    self.yield_to_pending().await;
                    let inputs = encoder::inputs(&[&mel.data])?;
                    let (ms, wall) = timed(enc.run_into_memory(inputs, dec, session, first_layer)).await;
                    encoded = Some((ms?, wall));
                }
                (WindowMemory::EncodeHere(_), None) => bail!("a window encoded in place needs both parts in one tab"),
            }
            let mut ms = 0.0;
            let mut step = async |tokens: Vec<u32>| {
                let row = StepRow { session, tokens, sampling: Sampling::Greedy };
                self.yield_to_pending().await;
                let (next, outputs, t) = self.decoder.step_with_outputs(vec![row]).await?;
                ms += t;
                let ([next], [chosen, no_speech, ..]) = (&next[..], &outputs[..]) else {
                    bail!("a decoder step of one row gave {} ids and {} more outputs", next.len(), outputs.len())
                };
                let p = |t: &Tensor| t.to_f32().and_then(|v| v.first().copied()).context("a probability output");
                anyhow::Ok((*next, p(chosen)?, p(no_speech)?))
            };
            let (_, _, no_speech) = step(prompt[..=sot].to_vec()).await?;
            done.no_speech_prob = no_speech as f64;
            let mut feed: Vec<u32> = prompt[sot + 1..].iter().chain(done.ids.iter()).copied().collect();
            while done.ids.len() < max_new_tokens(cfg.n_text_ctx, prompt.len()) {
                let (next, p, _) = step(std::mem::take(&mut feed)).await?;
                done.logprobs.push((p as f64).ln());
                if next == cfg.eot {
                    break;
                }
                done.ids.push(next);
                feed.push(next);
            }
            Ok(ms)
        }
        .await;
        // The session's rows are freed also when a step failed (the tab may be gone: ignored).
        let _ = self.decoder.close(session).await;
        Ok((result?, encoded))
    }
}

/// A window's decoding so far: what a replay resumes from, and what faster-whisper's no-speech
/// rule reads.
#[derive(Debug, Clone, Default)]
pub struct Decoding {
    /// Generated ids, end-of-text excluded.
    pub ids: Vec<u32>,
    /// The log-probability of each step's chosen id after suppression (end-of-text's included
    /// when it came).
    pub logprobs: Vec<f64>,
    /// The no-speech token's probability after `<|startoftranscript|>`.
    pub no_speech_prob: f64,
}

impl Decoding {
    /// faster-whisper's skip of a window it judges silent (`no_speech_threshold` 0.6 with
    /// `log_prob_threshold` −1.0, its defaults, which the reference's call keeps): no-speech
    /// probability over 0.6 unless the average log-probability — CTranslate2's summed score
    /// over (ids + 1) — is above −1. With no ids that average is NaN in faster-whisper, so the
    /// no-speech probability alone decides (the window is empty either way).
    pub fn judged_silent(&self) -> bool {
        self.no_speech_prob > NO_SPEECH_THRESHOLD && self.avg_logprob().is_none_or(|avg| avg <= LOG_PROB_THRESHOLD)
    }

    /// faster-whisper's average log-probability: the summed log-probabilities over (ids + 1);
    /// none without ids.
    pub fn avg_logprob(&self) -> Option<f64> {
        (!self.ids.is_empty()).then(|| self.logprobs.iter().sum::<f64>() / (self.ids.len() + 1) as f64)
    }
}

/// faster-whisper's defaults for its window skip.
const NO_SPEECH_THRESHOLD: f64 = 0.6;
const LOG_PROB_THRESHOLD: f64 = -1.0;

/// The most ids a window generates after a prompt of `prompt_len` ids, as CTranslate2's Whisper
/// bounds faster-whisper's `max_length` (the text context, 448): half of it, and never past it —
/// `min(448 / 2, 448 − (prompt_len − 1))`, the prompt's last id being the first step's input.
fn max_new_tokens(n_text_ctx: usize, prompt_len: usize) -> usize {
    (n_text_ctx / 2).min((n_text_ctx + 1).saturating_sub(prompt_len))
}

/// `f`'s output and its wall time in ms.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, f64) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed().as_secs_f64() * 1e3)
}

/// The two parts, for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Encoder,
    Decoder,
}

async fn decoder_in(
    tab: &Tab,
    model: &Whisper,
    backend: ExecBackend,
    pref: Preference,
    progress: &dyn WeightUpload,
) -> anyhow::Result<Stepper> {
    let (graph, weights) = model.decoder(DecoderLimits::default(), weight_form::for_decoder(&backend, pref))?;
    let name = format!("{}-decoder", model.name);
    Stepper::in_tab(tab, &name, &graph, &weights, backend.clone(), progress)
        .await
        .with_context(|| format!("loading the Whisper decoder on {backend} in tab {}", tab.id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper/");

    fn json(name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}{name}")).unwrap()).unwrap()
    }

    fn samples(file: &str) -> Vec<f32> {
        audio::decode(&std::fs::read(format!("{DIR}{file}")).unwrap()).unwrap().samples
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    }

    /// The encoder on the CPU executor against the float64 reference (same f16 weights widened):
    /// whole rows within |Δ| ≤ 2e-3 + 1e-3·|x| (values reach ±12), and the output's mean/std.
    #[test]
    fn encoder_matches_the_float64_reference() {
        let model = Whisper::load(None).unwrap();
        let (graph, weights, dims) = model.encoder(true).unwrap();
        assert_eq!((dims.d_model, dims.heads, dims.layers, dims.cross_layers), (384, 6, 4, 4));
        let cpu = CpuModel::new(graph, weights).unwrap();
        let fwd = json("forward_reference.json");
        for case in fwd["cases"].as_array().unwrap() {
            let mel = audio::log_mel(&samples(case["file"].as_str().unwrap()));
            let out = cpu.run(&encoder::inputs(&[&mel.data]).unwrap()).unwrap();
            assert_eq!(out.len(), 1 + 2 * 4);
            assert_eq!(out[0].shape, [1, 1500, 384]);
            let h = out[0].to_f32().unwrap();
            let mut worst = 0f64;
            for (row, want) in case["encoder"]["rows"].as_object().unwrap() {
                let r: usize = row.parse().unwrap();
                for (i, w) in want.as_array().unwrap().iter().enumerate() {
                    let (g, w) = (h[r * 384 + i] as f64, w.as_f64().unwrap());
                    worst = worst.max((g - w).abs());
                    assert!((g - w).abs() <= 2e-3 + 1e-3 * w.abs(), "row {r}[{i}]: {g} vs {w}");
                }
            }
            let n = h.len() as f64;
            let mean = h.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (h.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!((mean - case["encoder"]["mean"].as_f64().unwrap()).abs() < 1e-4, "mean {mean}");
            assert!((std - case["encoder"]["std"].as_f64().unwrap()).abs() < 1e-4, "std {std}");
            eprintln!("{}: encoder rows max |Δ| {worst:.2e}", case["file"]);
        }
    }

    /// Greedy transcription on the host's CPU executor (encoder and decoder graphs, the decoder's
    /// KV and cross memory in its cache) gives the reference's ids and transcript for both clips,
    /// and the first step's suppressed logits match the float64 reference's top 5 within 2e-2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn host_transcription_equals_the_reference() {
        let model = Arc::new(Whisper::load(None).unwrap());
        let mut t = Transcriber::on_host(model.clone()).unwrap();
        let refj = json("whisper_tiny_en.json");
        let fwd = json("forward_reference.json");
        for (case, f) in refj["cases"].as_array().unwrap().iter().zip(fwd["cases"].as_array().unwrap()) {
            let out = t.transcribe(Arc::new(samples(case["file"].as_str().unwrap()))).await.unwrap();
            assert_eq!(out.ids, ids(&case["token_ids"]), "{}", case["file"]);
            assert_eq!(out.text, case["transcript"].as_str().unwrap());
            assert_eq!(out.windows.len(), 1);
            assert_eq!(out.windows[0].text, case["transcript_raw"].as_str().unwrap());
            eprintln!("{}: rtf {:.3}", case["file"], out.rtf());
            // First step's logits, from a decoder graph that also outputs them.
            let (graph, weights) =
                model.decoder(DecoderLimits { max_sessions: 1, logits: true }, WeightForm::Stored).unwrap();
            let cpu = CpuModel::new(graph, weights).unwrap();
            let mel = audio::log_mel(&samples(case["file"].as_str().unwrap()));
            let (enc, _) = t.encoder.encode(&mel).await.unwrap();
            cpu.put_memory(4, 0, &decoder::memory(&enc).unwrap()).unwrap();
            let mut sessions = page_runtime::sessions::Sessions::new(cpu.graph().kv.unwrap());
            sessions.open(1, 1500).unwrap();
            let row = StepRow { session: 1, tokens: t.prompt(&[]), sampling: Sampling::Greedy };
            let plan = sessions.plan_stage(cpu.graph(), &[row], 51864, vec![]).unwrap();
            let out = cpu.run(&plan.inputs).unwrap();
            let logits = out[3].to_f32().unwrap();
            let want = &f["first_step"];
            for (id, l) in ids(&want["top5_ids"]).iter().zip(want["top5_logits"].as_array().unwrap()) {
                let (g, w) = (logits[*id as usize] as f64, l.as_f64().unwrap());
                assert!((g - w).abs() < 2e-2, "{}: logit of {id}: {g} vs {w}", case["file"]);
            }
        }
    }

    /// The samples of a `silence_reference.json` case (see `make_silence_reference.py`).
    fn silence_case(parts: &[Value]) -> Vec<f32> {
        let mut out = Vec::new();
        for p in parts {
            let p = p.as_str().unwrap();
            let (kind, arg) = p.split_once(':').unwrap_or((p, ""));
            match kind {
                "clip" => {
                    let mut c = samples(&format!("{arg}.wav"));
                    c.resize(audio::N_SAMPLES, 0.0);
                    out.extend(c);
                }
                "zeros" => out.extend(std::iter::repeat_n(0.0, audio::N_SAMPLES)),
                "noise" => {
                    let (amp, seed) = arg.split_once(':').unwrap();
                    let (amp, mut x): (u64, u64) = (amp.parse().unwrap(), seed.parse().unwrap());
                    for _ in 0..audio::N_SAMPLES {
                        x = (1_664_525 * x + 1_013_904_223) % (1 << 32);
                        out.push((((x >> 16) % (2 * amp + 1)) as f32 - amp as f32) / 32768.0);
                    }
                }
                "tail" => out.extend(samples(&format!("{arg}.wav"))),
                other => panic!("unknown part {other}"),
            }
        }
        out
    }

    /// Windows faster-whisper judges silent are skipped here too. Against its own decisions on
    /// inputs with a window of zeros or of noise between speech (silence_reference.json, made by
    /// faster-whisper 1.2.1 on the same model): every window's ids, its no-speech probability
    /// within 2e-3 and its average log-probability within 5e-3, the same windows skipped (a
    /// decision within 0.01 of a threshold is only reported), and the texts of the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_judged_silent_are_skipped_as_faster_whisper_does() {
        let model = Arc::new(Whisper::load(None).unwrap());
        let mut t = Transcriber::on_host(model).unwrap();
        let refj = json("silence_reference.json");
        let mut skips = 0;
        for case in refj["cases"].as_array().unwrap() {
            let parts = case["parts"].as_array().unwrap();
            let s = silence_case(parts);
            assert_eq!(s.len() as u64, case["samples"].as_u64().unwrap(), "{parts:?}: samples");
            let out = t.transcribe(Arc::new(s)).await.unwrap();
            let mut ours: Vec<(&Window, bool)> =
                out.windows.iter().map(|w| (w, false)).chain(out.skipped.iter().map(|w| (w, true))).collect();
            ours.sort_by(|a, b| a.0.start_s.total_cmp(&b.0.start_s));
            let want = case["windows"].as_array().unwrap();
            assert_eq!(ours.len(), want.len(), "{parts:?}: windows");
            for (k, ((w, skipped), r)) in ours.iter().zip(want).enumerate() {
                let nsp = r["no_speech_prob"].as_f64().unwrap();
                let avg = r["avg_logprob"].as_f64();
                eprintln!(
                    "{parts:?} window {k}: ids {}, no-speech {:.4} (ref {nsp:.4}), avg logprob {:?} (ref {avg:?}), skipped {skipped}",
                    w.ids.len(),
                    w.no_speech_prob,
                    w.avg_logprob
                );
                assert_eq!(w.ids, ids(&r["tokens"]), "{parts:?} window {k}: ids");
                assert!(
                    (w.no_speech_prob - nsp).abs() <= 2e-3,
                    "{parts:?} window {k}: no-speech {} vs {nsp}",
                    w.no_speech_prob
                );
                if let (Some(a), Some(b)) = (w.avg_logprob, avg) {
                    assert!((a - b).abs() <= 5e-3, "{parts:?} window {k}: avg logprob {a} vs {b}");
                }
                let ref_skip = nsp > 0.6 && avg.is_none_or(|a| a <= -1.0);
                let near = (nsp - 0.6).abs() < 0.01 || avg.is_some_and(|a| (a + 1.0).abs() < 0.01);
                if near {
                    eprintln!("  within 0.01 of a threshold: decision not compared");
                } else {
                    assert_eq!(*skipped, ref_skip, "{parts:?} window {k}: skipped");
                }
                skips += usize::from(*skipped);
            }
            let texts: Vec<&str> =
                out.windows.iter().map(|w| w.text.as_str()).filter(|t| !t.trim().is_empty()).collect();
            let want_texts: Vec<&str> =
                case["segments"].as_array().unwrap().iter().map(|s| s["text"].as_str().unwrap()).collect();
            assert_eq!(texts, want_texts, "{parts:?}: segments");
        }
        assert!(skips > 0, "no case had a window judged silent: the rule went untested");
    }

    /// CTranslate2's bound: 224 ids after a fresh prompt, fewer after a long previous text.
    #[test]
    fn a_window_generates_at_most_half_the_text_context() {
        assert_eq!(max_new_tokens(448, 2), 224);
        assert_eq!(max_new_tokens(448, 226), 223);
        assert_eq!(max_new_tokens(448, 449), 0);
    }

    /// Longer than one window: the first clip, silence to 30 s, the second clip. Two windows,
    /// the second conditioned on the first's text; each window's text is its clip's transcript.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_windows_each_transcribe_their_clip() {
        let model = Arc::new(Whisper::load(None).unwrap());
        let mut t = Transcriber::on_host(model).unwrap();
        let refj = json("whisper_tiny_en.json");
        let cases = refj["cases"].as_array().unwrap();
        let mut s = samples(cases[0]["file"].as_str().unwrap());
        s.resize(audio::N_SAMPLES, 0.0);
        s.extend(samples(cases[1]["file"].as_str().unwrap()));
        let out = t.transcribe(Arc::new(s)).await.unwrap();
        assert_eq!(out.windows.len(), 2);
        assert_eq!((out.windows[0].start_s, out.windows[0].end_s), (0.0, 30.0));
        assert_eq!(out.windows[1].start_s, 30.0);
        for (w, c) in out.windows.iter().zip(cases) {
            eprintln!("window {:.0}–{:.2} s: {:?}", w.start_s, w.end_s, w.text);
            assert_eq!(w.text.trim(), c["transcript"].as_str().unwrap());
        }
        assert_eq!(out.ids.len(), out.windows.iter().map(|w| w.ids.len()).sum::<usize>());
    }
}
