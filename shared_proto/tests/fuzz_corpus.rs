//! The fuzz corpus as a regression test, on stable: every input in shared_proto/fuzz/corpus/<target>/
//! (seeds, everything libFuzzer kept, every input that ever found a bug) goes through the same
//! checks as the libFuzzer targets (fuzz/src/checks.rs): no panic, decode allocation within
//! `checks::alloc_bound`, round trips. Then the corpus is mutated for `TABPOOL_FUZZ_SECS` seconds
//! (default 2; set it to 600 for a long run on a machine without nightly, see ARCHITECTURE.md).
#![cfg(not(target_arch = "wasm32"))]

#[path = "../fuzz/src/checks.rs"]
mod checks;
#[path = "../fuzz/src/counting.rs"]
mod counting;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared_proto::*;

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

type Check = fn(&[u8]);
const TARGETS: [(&str, Check); 4] = [
    ("decode_to_host", checks::decode_to_host),
    ("decode_to_tab", checks::decode_to_tab),
    ("graph", checks::graph),
    ("pre_auth", checks::pre_auth),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}

/// Run `check` on `input`; on a panic, keep the input where it can be added to the corpus.
fn run_keeping_failures(target: &str, check: Check, input: &[u8], what: &str) {
    if let Err(panic) = std::panic::catch_unwind(|| check(input)) {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-failure-{target}-{:016x}", fnv(input)));
        std::fs::write(&path, input).expect("keep failing input");
        eprintln!(
            "{target}: {what} failed; input kept at {} (add it to {})",
            path.display(),
            corpus_dir(target).display()
        );
        std::panic::resume_unwind(panic);
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100000001b3))
}

#[test]
fn seeds_of_every_message_kind_pass_and_are_in_the_corpus() {
    let (to_tab, to_host) = checks::seed_frames();
    // Before authentication a peer's first frame is a `Hello`.
    let hellos: checks::Seeds = to_host.iter().filter(|(name, _)| name.starts_with("hello")).cloned().collect();
    assert!(!hellos.is_empty());
    for (target, seeds) in [("decode_to_tab", &to_tab), ("decode_to_host", &to_host), ("pre_auth", &hellos)] {
        let check = TARGETS.iter().find(|t| t.0 == target).expect("target").1;
        for (name, bytes) in seeds {
            // The seeds must be accepted (else they would seed nothing deep).
            let bytes_ = Bytes::from(bytes.clone());
            match target {
                "decode_to_tab" => drop(decode::<ToTab>(bytes_, &Limits::DEFAULT).expect(name)),
                "pre_auth" => drop(decode::<ToHost>(bytes_, &Limits::PRE_AUTH).expect(name)),
                _ => drop(decode::<ToHost>(bytes_, &Limits::DEFAULT).expect(name)),
            }
            run_keeping_failures(target, check, bytes, name);
            let file = corpus_dir(target).join(format!("seed_{name}"));
            // TABPOOL_FUZZ_WRITE_SEEDS=1 refreshes the corpus's seeds after a protocol change.
            if std::env::var_os("TABPOOL_FUZZ_WRITE_SEEDS").is_some() {
                std::fs::write(&file, bytes).expect("write seed");
            }
            assert!(file.exists(), "{} is missing: run with TABPOOL_FUZZ_WRITE_SEEDS=1", file.display());
        }
    }
    // The seed graph uses every op and is valid, so shape inference runs through all of them.
    let g = checks::every_op_graph();
    g.validate().expect("seed graph validates");
    let minimal = page_runtime::executors::inputs::minimal(&g);
    let shapes: Vec<Vec<u32>> = minimal.iter().map(|t| t.shape.clone()).collect();
    let all = page_runtime::executors::shapes::graph_shapes(&g, &shapes).expect("seed graph's shapes infer");
    assert_eq!(all[20], vec![1, 4]);
}

#[test]
fn whole_corpus_replays() {
    let started = Instant::now();
    let mut total = 0;
    for (target, check) in TARGETS {
        let files = corpus(target);
        // A missing or emptied corpus must not pass as "nothing failed".
        assert!(files.len() >= 10, "{target}: only {} corpus files", files.len());
        for (path, input) in &files {
            run_keeping_failures(target, check, input, &path.display().to_string());
        }
        total += files.len();
    }
    eprintln!(
        "replayed {total} corpus inputs in {:.2?}; max decode allocation {} B ({}‰ of its bound)",
        started.elapsed(),
        checks::MAX_PEAK.load(std::sync::atomic::Ordering::Relaxed),
        checks::MAX_PERMILLE_OF_BOUND.load(std::sync::atomic::Ordering::Relaxed),
    );
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of the kinds that break frames: bit flips, interesting bytes (bincode varint
/// markers 251..=254, 0, 0xff), truncation, insertion, deletion, a rewritten length field (header
/// length, tensor count, a tensor's byte length), or a splice with another corpus input.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
        1 if len > 0 => input[rng.below(len)] = [0, 1, 0x7f, 0x80, 0xff, 251, 252, 253, 254][rng.below(9)],
        2 => input.truncate(rng.below(len + 1)),
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        5 if len >= 4 => {
            // A u32 or u64 length field somewhere, set to an edge value.
            let at = rng.below(len - 3);
            let v: u32 = [0, 1, u32::MAX, 1 << 20, (1 << 20) + 1, 64, 65, 1 << 26, rng.next() as u32][rng.below(9)];
            input[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        6 if len >= 8 => {
            // The header length field itself.
            let v = (rng.next() % (len as u64 + 16)) as u32;
            input[4..8].copy_from_slice(&v.to_le_bytes());
        }
        7 => {
            // Splice: a prefix of this input, a suffix of another (e.g. one header, other tensors).
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let n = rng.below(4);
            for _ in 0..n {
                if !input.is_empty() {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
            }
        }
    }
    input.truncate(64 << 10);
}

#[test]
fn mutated_corpus_for_a_time_budget() {
    let secs: f64 = std::env::var("TABPOOL_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("TABPOOL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let budget = Duration::from_secs_f64(secs);
    let corpora: Vec<_> = TARGETS.iter().map(|(t, _)| corpus(t)).collect();
    let mut rng = Rng(seed.max(1));
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget || runs == 0 {
        // A few hundred runs between clock reads.
        for _ in 0..256 {
            let t = rng.below(TARGETS.len());
            let (target, check) = TARGETS[t];
            let files = &corpora[t];
            let mut input = files[rng.below(files.len())].1.clone();
            let other = &files[rng.below(files.len())].1;
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut input, other);
            }
            run_keeping_failures(target, check, &input, &format!("mutation {runs} of seed {seed}"));
            runs += 1;
        }
    }
    eprintln!(
        "{runs} mutated inputs in {:.1?} (seed {seed}); max decode allocation {} B ({}‰ of its bound)",
        started.elapsed(),
        checks::MAX_PEAK.load(std::sync::atomic::Ordering::Relaxed),
        checks::MAX_PERMILLE_OF_BOUND.load(std::sync::atomic::Ordering::Relaxed),
    );
}

#[test]
fn the_allocation_bound_can_fail() {
    // The counter sees what decode allocates...
    let (_, peak) = counting::measure(|| vec![0u8; 1 << 20]);
    assert!(peak >= 1 << 20, "counted {peak}");
    // ...and the worst case the bound is derived from comes close to it: a Hello whose features
    // are many empty strings (24 bytes of `String` per 1-byte element; 100 000 of them, past
    // serde's 1 MiB preallocation, so the `Vec` grows by doubling as the bound assumes).
    let caps = Capabilities {
        webgpu: WebGpuCaps { features: vec![String::new(); 100_000], ..Default::default() },
        ..Default::default()
    };
    let hello = ToHost::Hello(Box::new(Hello { protocol_version: 2, tab_id: 1, token: String::new(), caps }));
    let bytes = encode(&Frame::new(hello), &Limits::DEFAULT).expect("encodes");
    let (res, peak) = counting::measure(|| decode::<ToHost>(Bytes::from(bytes.clone()), &Limits::DEFAULT));
    res.expect("decodes");
    let per_byte = peak as f64 / bytes.len() as f64;
    eprintln!("{} header bytes of empty strings: {peak} B at peak, {per_byte:.1} B per byte", bytes.len());
    assert!(per_byte > 24.0, "{per_byte} B per byte: the worst case is not what the bound assumes");
    assert!(peak <= checks::alloc_bound(bytes.len(), &Limits::DEFAULT));
    // The failing claim the bound is derived from: a `LoadModel` whose weight list claims 2^32 - 1
    // entries, followed by R bytes of minimal (4-byte) weights, preallocates R of its 80-byte
    // elements before the header runs out.
    let minimal = WeightDecl { name: String::new(), dtype: DType::F32, shape: vec![], hash: String::new() };
    let graph = Graph { inputs: vec![], weights: vec![minimal; 3000], nodes: vec![], outputs: vec![], kv: None };
    let load =
        ToTab::Request { id: 1, req: Request::LoadModel { model: "m".into(), graph, backend: ExecBackend::Cpu } };
    let f = encode(&Frame::new(load), &Limits::DEFAULT).expect("encodes");
    let header_len = u32::from_le_bytes(f[4..8].try_into().unwrap()) as usize;
    let mut header = f[8..8 + header_len].to_vec();
    let at = header.windows(3).position(|w| w == [251, 0xb8, 0x0b]).expect("the weight count 3000 as a varint");
    header.splice(at..at + 3, [252, 0xff, 0xff, 0xff, 0xff]);
    let left = header.len() - at - 5;
    let mut claim = b"TBP1".to_vec();
    claim.extend_from_slice(&(header.len() as u32).to_le_bytes());
    claim.extend_from_slice(&header);
    claim.extend_from_slice(&0u32.to_le_bytes());
    let (res, peak) = counting::measure(|| decode::<ToTab>(Bytes::from(claim.clone()), &Limits::DEFAULT));
    assert!(matches!(res, Err(ProtoError::BadHeader(_))), "{res:?}");
    let per_left = peak as f64 / left as f64;
    eprintln!(
        "a weight list claiming 2^32 - 1 entries, {left} bytes left: {peak} B at peak, {per_left:.1} B per byte left"
    );
    assert!(per_left > 72.0, "{per_left} B per byte left: the failing claim is not what the bound assumes");
    assert!(peak <= checks::alloc_bound(claim.len(), &Limits::DEFAULT));
}
