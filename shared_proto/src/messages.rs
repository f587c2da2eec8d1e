//! One enum per direction. Tensors never sit inside these headers: they travel after the
//! header in the frame ([`crate::codec::Frame::tensors`]) and messages refer to them by position.

use serde::{Deserialize, Serialize};

use crate::caps::Capabilities;
use crate::error::RemoteError;
use crate::graph::Graph;

/// Host → tab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToTab {
    /// The handshake succeeded; the tab may now serve requests.
    Welcome { tab_id: u64 },
    /// The handshake failed; the host closes the socket after this.
    Reject { reason: RejectReason, message: String },
    /// Work for the tab. Input tensors are the frame's tensors, in order.
    Request { id: u64, req: Request },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    VersionMismatch,
    BadToken,
    UnknownTab,
    DuplicateTab,
}

/// Tab → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToHost {
    Hello(Box<Hello>),
    /// The answer to `Request { id }`. Output tensors are the frame's tensors, in order.
    Reply {
        id: u64,
        result: Result<Reply, RemoteError>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The tab id and secret the host put in the page URL for this launch.
    pub tab_id: u64,
    pub token: String,
    pub caps: Capabilities,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// No-op round trip.
    Ping,
    /// Accept the attached tensors and report their size: host→tab throughput.
    Sink,
    Kernel(Kernel),
    /// Declare a model by its graph, to run on `backend`; its weights follow in `PutWeights`.
    LoadModel {
        model: String,
        graph: Graph,
        backend: ExecBackend,
    },
    /// Weights `first..first + n` of `model` (in the graph's declared order) as the frame's
    /// tensors; each is checked against its declared shape and content hash.
    PutWeights {
        model: String,
        first: u32,
    },
    /// Run `model` on the frame's tensors (its inputs, in declared order).
    Run {
        model: String,
    },
    UnloadModel {
        model: String,
    },
    /// Bytes `offset..offset + len` of weight `index` of `model` (`total` bytes in all), as the
    /// frame's one U8 tensor, parts in order. A weight larger than a frame travels this way, so
    /// the tab never holds it whole in wasm memory (which cannot shrink once grown): WebNN
    /// assembles it outside wasm and writes its tensor when the last part lands. The whole
    /// weight is checked against its declared shape and content hash.
    PutWeightPart {
        model: String,
        index: u32,
        offset: u64,
        total: u64,
    },
    /// Destroy the tab's WebGPU device (`GPUDevice.destroy()`) and WebNN contexts
    /// (`MLContext.destroy()`), as a driver reset or a crashed GPU/ML service loses them: fault
    /// injection for recovery tests. Models on them fail with `DeviceLost`; the next `LoadModel`
    /// gets a new device or context.
    LoseDevice,
    /// Open generation session `session` on stateful `model`, reserving `capacity` tokens of its
    /// KV cache (prompt plus everything it may generate). Refused with `Capacity` when the
    /// model's session limit or KV cache is full; nothing is reserved then.
    ///
    /// `prompt`: the tokens the session will start with (empty: not said). With it, the tab
    /// copies the KV rows of the longest prefix it keeps from closed sessions opened the same
    /// way (its prefix cache) and answers how many tokens it reused; the first `Step` then
    /// carries only the rest. Such a session's rows are kept as a prefix at its close.
    OpenSession {
        model: String,
        session: u64,
        capacity: u32,
        prompt: Vec<u32>,
    },
    /// Advance sessions of `model` together in one run (continuous batching): each row appends
    /// its `tokens` (a prompt, a prompt chunk, or the last sampled token) to its session's KV
    /// cache and samples one next token from the logits after its last token.
    Step {
        model: String,
        rows: Vec<StepRow>,
    },
    /// Free a session's KV rows (finished, cancelled, or abandoned by its client).
    CloseSession {
        model: String,
        session: u64,
    },
    /// Write a fixed memory into `session`'s KV rows of cache layers `first_layer..`: the frame's
    /// one f32 tensor `[layers, 2, rows, kv_heads·head_dim]` (keys then values per layer), at rows
    /// `start..start + rows` of the session's range. What `Op::CrossAttention` reads: an
    /// encoder–decoder model's cross-attention keys and values, computed once per session where
    /// the encoder runs and kept here for every step of the decoder.
    PutMemory {
        model: String,
        session: u64,
        first_layer: u32,
    },
    /// Run `model` (an encoder) on the frame's inputs, as `Run`, and write its outputs — keys
    /// and values per layer, `[1, rows, width]` each — as `session`'s memory in `decoder` (a
    /// model in this tab) at cache layers `first_layer..`, as `PutMemory` would: the memory
    /// never crosses the socket when both parts share a tab. Answered `EncodedIntoMemory`.
    EncodeIntoMemory {
        model: String,
        decoder: String,
        session: u64,
        first_layer: u32,
    },
    /// Run the CPU executor's kernels on at most `threads` threads (the main thread and
    /// `threads − 1` of its workers; at least one). The host's one thread budget per machine
    /// gives each tab its share as tabs come and go (`policy::threads`). Answered `ThreadsSet`
    /// with the count now in force: at most what the page started (its `Capabilities::threads`).
    SetThreads {
        threads: u32,
    },
}

/// One session's share of a [`Request::Step`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub session: u64,
    pub tokens: Vec<u32>,
    pub sampling: Sampling,
}

/// How a row's next token is chosen. Sampling draws its uniform number from
/// `(seed, the position of the token it samples)`, so a session replayed elsewhere after a
/// recovery samples the same tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Sampling {
    Greedy,
    TopKP { temperature: f32, top_k: u32, top_p: f32, seed: u64 },
}

/// A single kernel on the tab's WebGPU device (the operator graph comes later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kernel {
    /// `C[m,n] = A[m,k] · B[k,n]`, inputs `[A, B]` f32, output `[C]`. `repeats > 1` re-runs the
    /// dispatch within one submission so timing covers compute rather than transfer.
    MatMul { variant: MatMulVariant, repeats: u32 },
    /// Element-wise `C = A + B`, same shapes.
    Add,
}

/// Where a tab runs a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecBackend {
    /// The tab's WebGPU device (wgpu).
    WebGpu,
    /// A WebNN context of this device type ("cpu", "gpu", "npu").
    WebNn { device: String },
    /// The plain-Rust CPU executor inside the tab's wasm.
    Cpu,
}

impl std::fmt::Display for ExecBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecBackend::WebGpu => write!(f, "webgpu"),
            ExecBackend::WebNn { device } => write!(f, "webnn-{device}"),
            ExecBackend::Cpu => write!(f, "wasm-cpu"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatMulVariant {
    /// Workgroup-shared 64×64 tiles, 4×4 outputs per invocation.
    Tiled,
    /// One invocation per output, straight from global memory: the baseline.
    Naive,
    /// 4×4 outputs per invocation from vec4 loads, no workgroup memory (k, n divisible by 4;
    /// otherwise the tiled kernel runs).
    Register,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Pong,
    Sunk {
        bytes: u64,
    },
    /// `device_ms`: in-tab time from submit to results mapped, divided by `repeats`.
    KernelDone {
        device_ms: f64,
    },
    /// The model is declared. `held`: weights (indices) the tab already had by content hash and
    /// loaded itself — the host sends only the others; if that was all of them, the tab has
    /// compiled the model too (`prepare_ms`).
    ModelDeclared {
        held: Vec<u32>,
        prepare_ms: Option<f64>,
    },
    /// `missing` weights still to come; when it reaches 0 the tab compiles the model's
    /// pipelines (a warm-up run) and reports how long that took.
    WeightsStored {
        bytes: u64,
        missing: u32,
        prepare_ms: Option<f64>,
    },
    /// Outputs are the frame's tensors. `device_ms`: submit → results mapped.
    Ran {
        device_ms: f64,
    },
    Unloaded,
    /// What `LoseDevice` destroyed: the WebGPU device (`false`: the tab had none) and how many
    /// WebNN contexts.
    DeviceDestroyed {
        webgpu: bool,
        webnn_contexts: u32,
    },
    /// `kv_bytes` of the model's KV cache reserved for the session; `reused`: the leading
    /// prompt tokens whose KV rows came from the prefix cache (the session is that long now).
    SessionOpened {
        kv_bytes: u64,
        reused: u32,
    },
    /// One sampled token per row of the `Step`, in row order; `device_ms` as in `Ran`.
    Stepped {
        tokens: Vec<u32>,
        device_ms: f64,
    },
    SessionClosed,
    /// The memory of a `PutMemory` is written (`bytes` of it).
    MemoryStored {
        bytes: u64,
    },
    /// An `EncodeIntoMemory` ran (`device_ms` as in `Ran`) and wrote `bytes` of memory.
    EncodedIntoMemory {
        device_ms: f64,
        bytes: u64,
    },
    /// Threads the CPU executor uses now (`SetThreads`).
    ThreadsSet {
        threads: u32,
    },
}
