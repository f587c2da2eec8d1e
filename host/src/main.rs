use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use shared_proto::MatMulVariant;
use tabpool::commands::pool_args::PoolArgs;
use tabpool::commands::{
    bench, bench_generate, bench_grid, bench_history, bench_lending, bench_memory, bench_multimodal, bench_pool,
    bench_recovery, bench_shard, bench_transcribe, bench_vision, chat, classify, cli, doctor, embed, generate, matmul,
    report, serve, shard_plan, token, transcribe,
};
use tabpool::exec::Backend;
use tabpool::exec::placement;
use tabpool::policy::sharding::Strategy;
use tabpool::{Host, HostConfig};

#[derive(Parser)]
#[command(name = "tabpool", version, about = "Headless browser tabs as a pool of AI accelerators")]
struct Cli {
    /// Folder with index.html and the built wasm (default: found automatically).
    #[arg(long, global = true)]
    www: Option<PathBuf>,
    /// Chromium binary (default: chromium on PATH).
    #[arg(long, global = true)]
    chromium: Option<PathBuf>,
    /// WebNN-capable headless Chromium (default: where setup unpacks npm @sparticuz/chromium).
    #[arg(long, global = true)]
    chromium_webnn: Option<PathBuf>,
    /// chromedriver binary (default: chromedriver on PATH).
    #[arg(long, global = true)]
    chromedriver: Option<PathBuf>,
    /// Firefox binary (default: firefox-esr or firefox on PATH).
    #[arg(long, global = true)]
    firefox: Option<PathBuf>,
    /// geckodriver binary (default: on PATH or ~/.cargo/bin).
    #[arg(long, global = true)]
    geckodriver: Option<PathBuf>,
    /// Address the page server and tab socket bind to (0.0.0.0 for tabs on other machines).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Host name or IP tabs use to reach this host (needed for remote WebDriver tabs).
    #[arg(long, global = true)]
    advertise: Option<String>,
    /// Extra browser flag; repeatable.
    #[arg(long = "browser-flag", global = true, allow_hyphen_values = true)]
    browser_flags: Vec<String>,
    /// Seconds a tab may take to load and join.
    #[arg(long, global = true, default_value_t = 60)]
    tab_timeout: u64,
    /// Threads per tab for its wasm CPU executor (the threaded runtime in a cross-origin
    /// isolated page; 1: the single-thread build). Default: one budget for the machine —
    /// transcribe, generate, chat and serve share its cores among the tabs they may hold
    /// (serve: --max-tabs); the other commands and the benches run one thread per tab.
    #[arg(long, global = true)]
    tab_threads: Option<u32>,
    /// What a tab's CPU executor multiplies 4/8-bit block weights with: int16 (the default: each
    /// 32-value block of activations rounded to ±32767 levels, integer dot products; SmolLM2's
    /// reference ids unchanged); f32; or int8-batched (±127 levels, llama.cpp's Q8 path, for
    /// several rows at once — a prefill — with one-row steps in f32; changes the ids).
    #[arg(long, global = true, value_parser = ["f32", "int16", "int8-batched"])]
    tab_activations: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant (serve's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Report browsers, driver and page build, then WebGPU/WebNN from one real tab; with
    /// `--grid URL`, a Selenium Grid's nodes and one tab per free slot.
    Doctor {
        #[arg(long)]
        json: bool,
        /// A Selenium Grid 4 hub: list its nodes and what a tab on each measures (needs
        /// --bind/--advertise so tabs on the nodes reach this host).
        #[arg(long, value_name = "URL")]
        grid: Option<String>,
        /// A capability to ask the Grid for, KEY=JSON (e.g. tabpool:webnn=true); repeatable.
        #[arg(long = "capability", value_name = "KEY=JSON", requires = "grid")]
        capabilities: Vec<String>,
    },
    /// Multiply random matrices in a real tab on WebGPU and compare with the CPU.
    Matmul {
        #[arg(long, default_value_t = 256)]
        m: u32,
        #[arg(long, default_value_t = 256)]
        k: u32,
        #[arg(long, default_value_t = 256)]
        n: u32,
        #[arg(long, value_enum, default_value_t = Variant::Tiled)]
        variant: Variant,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Sentence embeddings (all-MiniLM-L6-v2) in a real tab; TEXT... or lines on stdin.
    Embed {
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "auto")]
        backend: Backend,
        /// With --backend auto: time every backend again instead of loading the one calibration chose last time.
        #[arg(long)]
        recalibrate: bool,
        #[arg(long)]
        json: bool,
        /// Texts to embed; none (or "-") reads non-empty lines from standard input.
        texts: Vec<String>,
    },
    /// ImageNet labels for images (EfficientNet-Lite0) in a real tab, through the pool as `serve`
    /// runs them (or on the host's CPU executor with --backend cpu).
    Classify {
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "auto")]
        backend: Backend,
        /// Labels per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// One JSON object: per image its top labels, the 1000 logits and the 1280-d embedding.
        #[arg(long)]
        json: bool,
        /// PNG, JPEG, WebP or GIF files.
        #[arg(required = true)]
        images: Vec<std::path::PathBuf>,
    },
    /// Speech to text (Whisper tiny.en, greedy, 30-s windows) in real tabs, or on the host's CPU
    /// executor with --backend cpu.
    Transcribe {
        /// Where the encoder runs (auto: the tab's wasm CPU executor). The decoder runs there too
        /// on cpu and wasm-cpu; with webgpu or webnn it runs on the same tab's wasm CPU executor.
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "auto")]
        backend: Backend,
        /// Where the decoder runs (auto: as described above; webgpu: WebGPU, its cross-attention
        /// memory in the tab's GPU buffers; webnn: WebNN, its memory in WebNN tensors).
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "auto")]
        decoder_backend: Backend,
        /// Keep the decoder's weights f16 (as stored) on a CPU executor too: half their memory,
        /// a slower decode (the tab's wasm widens each half as it reads). Default: f32 there.
        #[arg(long)]
        compact_decoder: bool,
        /// 2: the encoder in one tab and the decoder in another (with --strategy component).
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[arg(long, value_parser = cli::named::<Strategy>(), default_value = "component")]
        strategy: Strategy,
        /// One JSON object: per file its ids, text, windows and real-time factor.
        #[arg(long)]
        json: bool,
        /// WAV, FLAC, MP3 or OGG/Vorbis files (any rate; stereo mixed to mono).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Text generation (SmolLM2-135M-Instruct, 4-bit) streamed token by token, its KV cache in a
    /// real tab (or on the host's CPU executor).
    Generate {
        #[command(flatten)]
        gen_flags: GenFlags,
        /// Continue PROMPT as plain text instead of answering it as a chat user turn.
        #[arg(long)]
        raw: bool,
        /// Also reports `backend` and, with auto, `backend_reason`.
        #[arg(long)]
        json: bool,
        /// The question (or, with --raw, the text to continue).
        prompt: String,
    },
    /// A conversation with SmolLM2-135M-Instruct: each line of standard input is a user turn,
    /// answered with the history in mind and streamed. Ctrl-C stops a reply; Ctrl-C, end of
    /// input or /exit at the prompt ends the chat. Oldest turns are dropped when the history
    /// outgrows the context. Without a terminal on stdin no prompt is printed (scriptable).
    Chat {
        #[command(flatten)]
        gen_flags: GenFlags,
        /// After each reply, print to stderr its prompt tokens, how many came from the tab's
        /// prefix cache (the earlier turns), the time to first token and the decode speed.
        #[arg(long)]
        stats: bool,
    },
    /// Sharding plans for SmolLM2 (see also `generate --shards`).
    Shard {
        #[command(subcommand)]
        what: ShardWhat,
    },
    /// Benchmarks measured in a real tab.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run a pool (MiniLM loaded, scaling between --min-tabs and --max-tabs) until Ctrl-C, with
    /// GET /status and POST /embed on --api.
    Serve {
        #[command(flatten)]
        pool: PoolArgs,
        /// A model to serve (repeatable): `minilm` (embeddings), `smollm2` (text generation), a
        /// sentence-encoder folder (config.json, model.safetensors, tokenizer.json) or a llama
        /// `.gguf` file. Default: minilm, and smollm2 when installed.
        #[arg(long = "model", value_name = "NAME|PATH")]
        models: Vec<String>,
        /// Load no model (only those given with --model).
        #[arg(long)]
        no_default_model: bool,
        #[arg(long, default_value = serve::DEFAULT_API)]
        api: std::net::SocketAddr,
        #[command(flatten)]
        key: KeyArgs,
        /// Host name the API also answers to (besides loopback names and the bound address);
        /// repeatable. Other Host headers get 421 (DNS rebinding).
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
        /// Serve GET /metrics (Prometheus) without the API key, for a scraper that cannot send one.
        #[arg(long)]
        metrics_public: bool,
        /// Seconds a request may take to be answered (a stream: to start) before it gets 504.
        #[arg(long, value_name = "SECS", default_value_t = 600.0)]
        request_timeout: f64,
        /// Seconds an API connection may sit with no request in flight and no byte moved.
        #[arg(long, value_name = "SECS", default_value_t = 120.0)]
        idle_timeout: f64,
        /// Take tabs that web pages lend (`rt.join(url, { token })` of the npm package), admitted
        /// by join tokens (`tabpool token create`); their results are checked on trusted tabs.
        #[arg(long)]
        join: bool,
        /// The join token file (default: $TABPOOL_JOIN_TOKENS or ~/.local/share/tabpool/join_tokens.json).
        #[arg(long, value_name = "FILE", requires = "join")]
        join_tokens: Option<PathBuf>,
    },
    /// Join tokens for pages that lend their tab to a `serve --join`: create, list, revoke.
    Token(token::Args),
    /// The performance history as a report: browser/backend comparison, latency percentiles,
    /// error categories, breaker events, recoveries, scaling, regressions (Markdown, or HTML with
    /// charts).
    Report {
        /// The DuckDB file (default: $TABPOOL_HISTORY or ~/.local/share/tabpool/history.duckdb).
        #[arg(long, value_name = "FILE")]
        history: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = report::Format::Md)]
        format: report::Format,
        /// Only what happened since: a span (30m, 24h, 7d) or a date (2026-11-20).
        #[arg(long)]
        since: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Ask a running `serve` at this address (it holds the database open).
        #[arg(long)]
        api: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print a running pool's metrics: tabs, kinds, capabilities, queues, memory, history, scaling log.
    Status {
        #[arg(long, default_value = serve::DEFAULT_API)]
        api: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// The API key: `--api-key`, else `--api-key-file`, else `$TABPOOL_API_KEY`.
#[derive(clap::Args)]
struct KeyArgs {
    /// API key clients send as `Authorization: Bearer KEY` (at least 16 characters). Visible
    /// to other local users in the process list: prefer --api-key-file or TABPOOL_API_KEY.
    #[arg(long = "api-key", value_name = "KEY")]
    api_key: Option<String>,
    /// File whose first line is the API key; refused unless private to its owner (chmod 600).
    #[arg(long = "api-key-file", value_name = "FILE", conflicts_with = "api_key")]
    api_key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn resolve(&self) -> anyhow::Result<Option<String>> {
        let key = match (&self.api_key, &self.api_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(f)) => Some(tabpool::secret::read_key_file(f)?),
            (None, None) => std::env::var("TABPOOL_API_KEY").ok().filter(|k| !k.is_empty()),
        };
        if key.as_deref() == Some("") {
            anyhow::bail!("the API key is empty");
        }
        Ok(key)
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Round-trip latency and host→tab throughput.
    Proto {
        #[arg(long, default_value_t = 2000)]
        pings: usize,
        #[arg(long)]
        json: bool,
    },
    /// MiniLM: load time, sentences/s and p50/p99 at batch 1 and 32, per backend.
    Embed {
        /// One sentence per line (default: the built-in 64 sentences; with --peers, the peer harness's list).
        #[arg(long)]
        sentences: Option<PathBuf>,
        #[arg(long, value_parser = cli::named::<Backend>(), value_delimiter = ',', default_values = ["webnn", "webgpu", "cpu"])]
        backends: Vec<Backend>,
        /// Sentences run on the WebGPU tab (software adapters are slow).
        #[arg(long, default_value_t = 32)]
        webgpu_sentences: usize,
        /// WebNN tabs in the pool row (0: none).
        #[arg(long, default_value_t = 2)]
        pool_tabs: usize,
        /// Also measure the peers in the same run (minutes) with the peer harness: ../shared/anchors or $TABPOOL_ANCHORS, not in the repository.
        #[arg(long)]
        peers: bool,
        /// With --peers: include their WebGPU run (about 11 minutes on SwiftShader).
        #[arg(long)]
        peers_webgpu: bool,
        #[arg(long)]
        json: bool,
    },
    /// EfficientNet-Lite0: images/s and p50/p99 at batch 1 and 8 on the host CPU executor, a WebNN
    /// tab, a WebGPU tab (SwiftShader: 3 calls at batch 1, one at batch 8) and a pool of WebNN tabs;
    /// tab memory above an empty tab; top-1 checked against the reference; --peers runs
    /// onnxruntime native and onnxruntime-web in the same run, with ratios.
    Vision {
        #[arg(long, value_parser = cli::named::<Backend>(), value_delimiter = ',', default_values = ["cpu", "webnn", "webgpu"])]
        backends: Vec<Backend>,
        /// Timed passes of 8 images per batch size (WebGPU: fixed, see above).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// WebNN tabs in the pool row (below 2: none).
        #[arg(long, default_value_t = 2)]
        pool_tabs: usize,
        /// Also run the vision peer harness (../shared/anchors/vision/run.sh or $TABPOOL_ANCHORS/vision, not in the repository; ~4 min); skipped with a note when absent.
        #[arg(long)]
        peers: bool,
        #[arg(long)]
        json: bool,
    },
    /// Whisper tiny.en: seconds and x realtime on the reference clips and a 29-s input, on the host
    /// CPU executor, a wasm-cpu tab, a WebNN encoder, and the component split over two tabs.
    #[command(alias = "speech")]
    Transcribe {
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also run the audio peer harness (../shared/anchors/audio/run.sh or $TABPOOL_ANCHORS/audio; ~5 min) and print ratios.
        #[arg(long)]
        peers: bool,
        /// With --peers: also whisper.cpp-in-wasm in a tab (about 10 more minutes).
        #[arg(long)]
        peers_wasm: bool,
        #[arg(long)]
        json: bool,
    },
    /// Four models (MiniLM, SmolLM2, EfficientNet-Lite0, Whisper) on the same tabs: the same mix of
    /// embeddings, chats, images and clips one family after another vs all at once; throughput
    /// ratio, CPU use and p50/p99 per family alone and in the mix.
    Multimodal {
        #[arg(long, default_value_t = 2)]
        tabs: usize,
        /// Rounds of the mix per phase.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long)]
        json: bool,
    },
    /// A pool on a Selenium Grid against the same pool on this machine: sent/s and tok/s on one
    /// node vs two, new-tab time, a node lost mid-load, slots left behind (needs
    /// --bind/--advertise so the nodes' tabs reach this host, or root to start its own Grid).
    Grid(bench_grid::Args),
    /// Lending: one trusted tab alone, then with a tab a page lends (its results checked at the
    /// default rate, then all), sent/s and ratios; and how fast a lying lender is quarantined.
    Lending(bench_lending::Args),
    /// Pool throughput with 1, 2, 4 tabs; two models concurrently vs sequentially; a mixed pool.
    Pool {
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 4])]
        tabs: Vec<usize>,
        /// Browser kind of the scaling rows.
        #[arg(long, default_value = "chromium-webnn")]
        kind: String,
        /// One-sentence requests per timed pass.
        #[arg(long, default_value_t = 512)]
        requests: usize,
        #[arg(long)]
        sentences: Option<PathBuf>,
        /// Kinds of the mixed-pool row, one tab each (empty: skip).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["chromium-webnn".to_string(), "chromium".to_string()])]
        mixed: Vec<String>,
        /// Kinds measured alone, one tab each, with the backend calibration chose (empty: skip).
        #[arg(long, value_delimiter = ',', default_values_t = vec!["chromium-webnn".to_string(), "chromium".to_string(), "firefox".to_string()])]
        per_kind: Vec<String>,
        /// Requests per timed pass of the per-kind rows (software WebGPU runs ~10 texts/s).
        #[arg(long, default_value_t = 64)]
        per_kind_requests: usize,
        #[arg(long)]
        json: bool,
    },
    /// Failover to a warm replica, tab replacement with the model re-loaded, success under faults.
    Recovery {
        #[arg(long, default_value_t = 10)]
        trials: usize,
        /// Requests in the fault stream.
        #[arg(long, default_value_t = 300)]
        stream: usize,
        /// A fault every this many requests.
        #[arg(long, default_value_t = 50)]
        every: usize,
        #[arg(long)]
        json: bool,
    },
    /// What recording history costs: the recorder alone, and pool throughput with and without it.
    History {
        #[arg(long, default_value_t = 2)]
        tabs: usize,
        #[arg(long, default_value = "chromium-webnn")]
        kind: String,
        #[arg(long, default_value_t = 512)]
        requests: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Rows for the recorder-alone measurement.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// SmolLM2 generation per backend: load, prefill tok/s, TTFT, decode tok/s, and several
    /// streams in shared steps; --peers runs llama.cpp native and in wasm in the same run.
    #[command(alias = "gen")]
    Generate {
        #[arg(long, value_parser = cli::named::<Backend>(), value_delimiter = ',', default_values = ["cpu", "wasm-cpu", "webgpu"])]
        backends: Vec<Backend>,
        #[arg(long, default_value_t = 128)]
        decode: usize,
        /// Tokens decoded on WebGPU (SwiftShader is slow).
        #[arg(long, default_value_t = 16)]
        webgpu_decode: usize,
        /// Concurrent streams in the batching rows.
        #[arg(long, value_delimiter = ',', default_values_t = vec![4, 16])]
        streams: Vec<usize>,
        /// Also run the streams over two tabs of each in-tab backend.
        #[arg(long)]
        two_tabs: bool,
        /// Also measure native llama.cpp and llama.cpp-in-wasm with the peer harness ($TABPOOL_ANCHORS/gen, not in the repository; ~10 min).
        #[arg(long)]
        peers: bool,
        #[arg(long)]
        json: bool,
    },
    /// SmolLM2 in one tab beside sharded plans (layer and pipeline ×2/×3, component,
    /// attention-ffn): decode tok/s, aggregate tok/s of concurrent streams, the share of token
    /// time outside the stages, each tab's memory, and kill → next token for a lost stage.
    Shard {
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "wasm-cpu")]
        backend: Backend,
        #[arg(long, default_value_t = 64)]
        decode: usize,
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Stage renderers killed in the recovery row (each replaced from a spare tab).
        #[arg(long, default_value_t = 6)]
        kills: usize,
        #[arg(long)]
        json: bool,
    },
    /// A tab's memory (PSS of its process tree) empty, with MiniLM loaded and after serving every
    /// shape bucket, per backend, beside the weight bytes.
    Memory {
        #[arg(long, value_parser = cli::named::<Backend>(), value_delimiter = ',', default_values = ["webnn", "webgpu", "cpu"])]
        backends: Vec<Backend>,
        #[arg(long)]
        json: bool,
    },
    /// GFLOP/s of the register-blocked, tiled and naive kernels.
    Matmul {
        #[arg(long, value_delimiter = ',', default_values_t = vec![64, 128, 256, 512])]
        sizes: Vec<u32>,
        #[arg(long)]
        json: bool,
    },
}

/// The options `generate` and `chat` share.
#[derive(clap::Args)]
struct GenFlags {
    /// auto launches a tab and picks WebGPU when its adapter is a real GPU, else (no WebGPU, or a
    /// software adapter such as SwiftShader: decode measured WebGPU 1.9, wasm CPU 16.8 tok/s) the wasm CPU executor.
    /// webnn runs in the chromium-webnn shell with the weights as f32 (≈540 MB): greedy equals the
    /// reference, but it decodes slower than the wasm CPU executor here, so auto never picks it.
    #[arg(long, value_parser = cli::named::<Backend>(), default_value = "auto")]
    backend: Backend,
    /// Most tokens to generate (per reply).
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// With a temperature: sample among the K most likely (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// With a temperature: sample among the most likely tokens whose mass reaches P.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// With a temperature: the seed of the draws (same seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A system prompt instead of the model's default one.
    #[arg(long)]
    system: Option<String>,
    /// Split the model into N stages of contiguous layers, each in its own tab with only its own
    /// weights (the hidden state passes through the host between them). On one machine the
    /// tabs share its cores: this buys memory per tab, not speed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    shards: u32,
    /// With --shards: layer (contiguous layer ranges), pipeline (the same, a step's sessions in
    /// micro-batches so stages work at once), component (embedding + head apart from the body;
    /// --shards 2), attention-ffn (each layer's attention and FFN on different tabs; --shards 2).
    /// `tabpool shard plan` predicts each from measured speeds.
    #[arg(long, value_parser = cli::named::<Strategy>(), default_value = "layer")]
    strategy: Strategy,
}

impl GenFlags {
    fn into_opts(self) -> placement::GenOptions {
        let GenFlags { backend, max_tokens, temperature, top_k, top_p, seed, system, shards, strategy } = self;
        placement::GenOptions { backend, system, max_tokens, temperature, top_k, top_p, seed, shards, strategy }
    }
}

#[derive(Subcommand)]
enum ShardWhat {
    /// The planner's plan and predictions for N tabs of a backend, and every strategy's
    /// predictions beside it; its inputs (decode speeds, a hop, two tabs at once) are measured
    /// first on the whole model. The plan itself is not run.
    Plan {
        #[arg(long, value_parser = cli::named::<Backend>(), default_value = "wasm-cpu")]
        backend: Backend,
        /// Tabs available.
        #[arg(long, default_value_t = 3)]
        tabs: usize,
        #[arg(long, default_value_t = 2)]
        shards: usize,
        #[arg(long, value_parser = cli::named::<Strategy>(), default_value = "hybrid")]
        strategy: Strategy,
        /// Concurrent streams the aggregate is predicted for.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Variant {
    Tiled,
    Naive,
    Register,
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_command(host: &mut Host, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Doctor { .. } => unreachable!("doctor manages its own host"),
        Command::Matmul { m, k, n, variant, seed, json } => {
            let variant = match variant {
                Variant::Tiled => MatMulVariant::Tiled,
                Variant::Naive => MatMulVariant::Naive,
                Variant::Register => MatMulVariant::Register,
            };
            matmul::run(host, matmul::Args { m, k, n, variant, seed, json }).await
        }
        Command::Embed { backend, recalibrate, json, texts } => {
            embed::run(host, embed::Args { backend, recalibrate, json, texts }).await
        }
        Command::Transcribe { backend, decoder_backend, compact_decoder, shards, strategy, json, files } => {
            let args = transcribe::Args { backend, decoder_backend, compact_decoder, shards, strategy, json, files };
            transcribe::run(host, args).await
        }
        Command::Bench { what: BenchWhat::Transcribe { reps, peers, peers_wasm, json } } => {
            bench_transcribe::run(host, bench_transcribe::Args { reps, peers, peers_wasm, json }).await
        }
        Command::Generate { gen_flags, raw, json, prompt } => {
            generate::run(host, generate::Args { opts: gen_flags.into_opts(), prompt, raw, json }).await
        }
        Command::Bench { what: BenchWhat::Proto { pings, json } } => bench::proto(host, pings, json).await,
        Command::Bench {
            what: BenchWhat::Embed { sentences, backends, webgpu_sentences, pool_tabs, peers, peers_webgpu, json },
        } => {
            let args = bench::EmbedArgs { sentences, backends, webgpu_sentences, pool_tabs, peers, peers_webgpu, json };
            bench::embed(host, args).await
        }
        Command::Bench { what: BenchWhat::Matmul { sizes, json } } => bench::matmul(host, &sizes, json).await,
        Command::Bench {
            what: BenchWhat::Generate { backends, decode, webgpu_decode, streams, two_tabs, peers, json },
        } => {
            let args = bench_generate::Args { backends, decode, webgpu_decode, streams, two_tabs, peers, json };
            bench_generate::run(host, args).await
        }
        Command::Bench { what: BenchWhat::Memory { backends, json } } => {
            bench_memory::run(host, bench_memory::Args { backends, json }).await
        }
        Command::Shard { what: ShardWhat::Plan { backend, tabs, shards, strategy, streams, json } } => {
            shard_plan::run(host, shard_plan::Args { backend, tabs, shards, strategy, streams, json }).await
        }
        Command::Bench { what: BenchWhat::Shard { backend, decode, streams, kills, json } } => {
            bench_shard::run(host, bench_shard::Args { backend, decode, streams, kills, json }).await
        }
        Command::Serve { .. }
        | Command::Token(_)
        | Command::Classify { .. }
        | Command::Chat { .. }
        | Command::Status { .. }
        | Command::Report { .. }
        | Command::Bench {
            what:
                BenchWhat::Pool { .. }
                | BenchWhat::Grid(_)
                | BenchWhat::Lending(_)
                | BenchWhat::Recovery { .. }
                | BenchWhat::History { .. }
                | BenchWhat::Vision { .. }
                | BenchWhat::Multimodal { .. },
        } => {
            unreachable!("runs without a pre-started host")
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Everything this process creates — the history database and its write-ahead log, browser
    // profiles (which hold the tabs' secrets), reports — is its user's alone.
    // SAFETY: umask(2) only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    // The CPU executor allocates each op's output afresh (megabytes for a batch); glibc serves
    // such sizes with mmap and gives them back at free, so every op faulted its pages in again
    // (a tenth of a MiniLM batch on the host). Keep them in the heap instead.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) before any thread starts only tunes this process's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = HostConfig {
        www: cli.www,
        chromium: cli.chromium,
        chromium_webnn: cli.chromium_webnn,
        chromedriver: cli.chromedriver,
        firefox: cli.firefox,
        geckodriver: cli.geckodriver,
        bind: cli.bind,
        advertise: cli.advertise,
        extra_flags: cli.browser_flags,
        tab_timeout: Duration::from_secs(cli.tab_timeout),
        join: None,
        tab_threads: cli.tab_threads,
        tab_activations: cli.tab_activations,
    };
    let result = match cli.command {
        Command::Token(args) => token::run(args),
        Command::Doctor { json, grid: None, .. } => doctor::run(cfg, json).await,
        Command::Doctor { json, grid: Some(url), capabilities } => match cli::capabilities(&capabilities) {
            Ok(caps) => doctor::run_grid(cfg, &url, caps, json).await,
            Err(e) => Err(e),
        },
        Command::Status { api, json, key } => match key.resolve() {
            Ok(key) => serve::status(&api, json, key.as_deref()).await,
            Err(e) => Err(e),
        },
        Command::Report { history, format, since, out, api, key } => match key.resolve() {
            Ok(key) => report::run(report::Args { history, format, since, out, api, key }).await,
            Err(e) => Err(e),
        },
        Command::Serve {
            pool,
            models,
            no_default_model,
            api,
            key,
            allow_hosts,
            metrics_public,
            request_timeout,
            idle_timeout,
            join,
            join_tokens,
        } => {
            let cfg = HostConfig {
                join: join.then(|| join_tokens.unwrap_or_else(tabpool::server::join::TokenFile::default_path)),
                ..cfg
            };
            let security = match key.resolve() {
                Ok(key) => tabpool::api::Security { key, allow_hosts, metrics_public },
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let secs = |name: &str, v: f64| match std::time::Duration::try_from_secs_f64(v) {
                Ok(d) if (0.01..=86_400.0 * 7.0).contains(&v) => Ok(d),
                _ => Err(format!("--{name} {v}: expected 0.01 to 604800 seconds")),
            };
            let limits = match (secs("request-timeout", request_timeout), secs("idle-timeout", idle_timeout)) {
                (Ok(request_timeout), Ok(idle)) => {
                    tabpool::api::Limits { request_timeout, idle, ..tabpool::api::Limits::default() }
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let args = serve::Args { pool, models, no_default_model, api, security, limits };
            match serve::run(cfg, args, interrupted()).await {
                Ok(true) => {
                    eprintln!("interrupted: tabs, browsers and driver closed");
                    return ExitCode::from(130);
                }
                r => r.map(|_| ()),
            }
        }
        Command::Classify { backend, top, json, images } => tokio::select! {
            r = classify::run(cfg, classify::Args { backend, top, json, images }) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
        },
        Command::Bench { what: BenchWhat::Recovery { trials, stream, every, json } } => {
            let args = bench_recovery::Args { trials, stream, every, json };
            tokio::select! {
                r = bench_recovery::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench { what: BenchWhat::Multimodal { tabs, rounds, json } } => {
            tokio::select! {
                r = bench_multimodal::run(cfg, bench_multimodal::Args { tabs, rounds, json }) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench { what: BenchWhat::Vision { backends, reps, pool_tabs, peers, json } } => {
            let args = bench_vision::Args { backends, reps, pool_tabs, peers, json };
            tokio::select! {
                r = bench_vision::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench { what: BenchWhat::History { tabs, kind, requests, rounds, rows, json } } => {
            let args = bench_history::Args { tabs, kind, requests, rounds, rows, json };
            tokio::select! {
                r = bench_history::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench { what: BenchWhat::Lending(args) } => {
            tokio::select! {
                r = bench_lending::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench { what: BenchWhat::Grid(args) } => {
            tokio::select! {
                r = bench_grid::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Command::Bench {
            what: BenchWhat::Pool { tabs, kind, requests, sentences, mixed, per_kind, per_kind_requests, json },
        } => {
            let args = bench_pool::Args { tabs, kind, requests, sentences, mixed, per_kind, per_kind_requests, json };
            tokio::select! {
                r = bench_pool::run(cfg, args) => r,
                _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        // Ctrl-C is the chat's own (it stops a reply); SIGTERM still ends everything.
        Command::Chat { gen_flags, stats } => match Host::start(cfg).await {
            Err(e) => Err(e),
            Ok(mut host) => {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                let r = tokio::select! {
                    r = chat::run(&mut host, chat::Args { opts: gen_flags.into_opts(), stats }) => r,
                    _ = term.recv() => Err(anyhow::anyhow!("terminated")),
                };
                host.shutdown().await;
                r
            }
        },
        command => match Host::start(cfg).await {
            Err(e) => Err(e),
            Ok(mut host) => {
                let outcome = tokio::select! {
                    r = run_command(&mut host, command) => Some(r),
                    _ = interrupted() => None,
                };
                host.shutdown().await;
                match outcome {
                    Some(r) => r,
                    None => {
                        eprintln!("interrupted: tabs, browsers and driver closed");
                        return ExitCode::from(130);
                    }
                }
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
