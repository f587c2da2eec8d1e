//! Speech through `tabpool serve`, as OpenAI's users send it: the official `openai` Python
//! client's `audio.transcriptions.create` (`tests/clients/openai_audio.py`) on both reference clips
//! in every response format (ids equal to the reference's), with a prompt, on a longer clip of two
//! windows, and the refusals — a language other than English, not audio, an unknown model, a
//! truncated file, zero samples, silence, over 25 MiB, over 30 minutes — after which the server
//! still answers. Real headless tabs; the tab's model is the one `status` shows.

use crate::support;

use std::process::Command;

const KEY: &str = "k3y-for-tests-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_transcribes_through_serve() {
    let _procs = support::process_guard();
    let (_serve, api) =
        support::start_serve(&[support::ONE_TAB, &["--model", "whisper", "--api-key", KEY]].concat()).await;
    let python = support::pyclients();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/openai_audio.py");
    let out = Command::new(&python).args([script, &format!("http://{api}/v1"), KEY, data]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ALL OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // /v2: the raw path, log-mel windows in, ids out; each row on its own.
    let (code, body) = support::http_keyed(&api, "GET", "/v2/models/whisper-tiny.en", "", Some(KEY)).await;
    assert!(code == 200 && body.contains("\"mel\"") && body.contains("\"ids\""), "{code} {body}");
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{data}/whisper/whisper_tiny_en.json")).unwrap())
            .unwrap();
    let cases = refj["cases"].as_array().unwrap();
    let mut mels = Vec::new();
    for c in cases {
        let bytes = std::fs::read(format!("{data}/whisper/{}", c["file"].as_str().unwrap())).unwrap();
        let samples = tabpool::models::whisper::audio::decode(&bytes).unwrap().samples;
        mels.extend(tabpool::models::whisper::audio::log_mel(&samples).data);
    }
    let req = serde_json::json!({ "id": "two", "inputs": [{ "name": "mel", "datatype": "FP32", "shape": [2, 80, 3000], "data": mels }] });
    let (code, body) =
        support::http_keyed(&api, "POST", "/v2/models/whisper-tiny.en/infer", &req.to_string(), Some(KEY)).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "two");
    let (ids, texts) = (&v["outputs"][0], &v["outputs"][1]);
    let width = ids["shape"][1].as_u64().unwrap() as usize;
    for (i, c) in cases.iter().enumerate() {
        let row: Vec<i64> =
            ids["data"].as_array().unwrap()[i * width..(i + 1) * width].iter().map(|x| x.as_i64().unwrap()).collect();
        let got: Vec<i64> = row.into_iter().filter(|&x| x >= 0).collect();
        let want: Vec<i64> = c["token_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(got, want, "/v2 ids of {}", c["file"]);
        assert_eq!(texts["data"][i], c["transcript"]);
    }
    let bad = r#"{"inputs": [{"name": "mel", "datatype": "FP32", "shape": [1, 80, 100], "data": [0.0]}]}"#;
    let (code, body) = support::http_keyed(&api, "POST", "/v2/models/whisper-tiny.en/infer", bad, Some(KEY)).await;
    assert_eq!(code, 400, "{body}");

    // The model is listed, and status shows its replica and what it served.
    let (code, body) = support::http_keyed(&api, "GET", "/v1/models", "", Some(KEY)).await;
    assert!(code == 200 && body.contains("whisper-tiny.en"), "{code} {body}");
    let (code, body) = support::http_keyed(&api, "GET", "/status", "", Some(KEY)).await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&status["models"]).unwrap());
    let m = status["models"].as_array().unwrap().iter().find(|m| m["name"] == "whisper-tiny.en").expect("listed");
    assert!(m["served"].as_u64().unwrap() >= 14, "{m}");
}

/// A pool of two tabs, Whisper on both: a three-window transcription whose tab drops its socket
/// mid-run is run again on the other tab (and the lost one recovered), and its transcript is the
/// one an undisturbed run gave — every window its clip's reference text. Embeddings still answered
/// during the transcription show the two families sharing tabs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_whose_tab_is_lost_is_answered_from_the_other_tab() {
    use std::time::{Duration, Instant};
    use tabpool::policy::routing::ModelType;
    use tabpool::pool::speech::Audio;
    use tabpool::pool::{ModelSpec, Pool};

    let _procs = support::process_guard();
    let pool = Pool::with_host(support::host().await, two_webnn_tabs()).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::of_type(ModelType::Audio)).await.unwrap();
    let embed = pool.load(ModelSpec::minilm()).await.unwrap();
    // Both tabs hold Whisper (a tab lost while loading gets it once recovered).
    let t = Instant::now();
    while pool.replica_count("whisper-tiny.en") != Some(2) {
        assert!(t.elapsed() < Duration::from_secs(120), "one replica: {}", pool.metrics().render());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (samples, want) = three_windows();

    let undisturbed = pool.transcribe(None, Audio::Samples(samples.clone()), vec![], None).await.unwrap();
    let texts: Vec<&str> = undisturbed.transcript.windows.iter().map(|w| w.text.trim()).collect();
    assert_eq!(texts, want);

    let t = Instant::now();
    let run = pool.transcribe(None, Audio::Samples(samples.clone()), vec![], None);
    let kill = async {
        // Wait until a tab runs the transcription, then cut its socket.
        let victim = loop {
            if let Some(tab) = pool.metrics().tabs.iter().find(|t| t.streams > 0) {
                break tab.id;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the transcription never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(pool.disconnect_tab(victim));
        // The other family keeps being served meanwhile.
        let e = pool.embed_with(&embed, &["a sentence during recovery"], None).await.unwrap();
        assert_eq!(e.vectors[0].len(), 384);
        victim
    };
    let (done, victim) = tokio::join!(run, kill);
    let done = done.unwrap();
    eprintln!(
        "lost tab {victim}; answered by tab {} after {} attempts in {:.1} s",
        done.tab,
        done.attempts,
        t.elapsed().as_secs_f64()
    );
    assert_ne!(done.tab, victim);
    assert_eq!(done.attempts, 2);
    assert_eq!(done.transcript.ids, undisturbed.transcript.ids, "token-identical after the loss");
    // The lost tab comes back with both parts loaded.
    let t = Instant::now();
    while pool.replica_count("whisper-tiny.en") != Some(2) {
        assert!(t.elapsed() < Duration::from_secs(180), "not recovered: {}", pool.metrics().render());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.shutdown().await;
}

/// Speech split over two tabs in the pool (`[generation] shards = 2`, strategy component — what
/// `serve --shards 2 --strategy component` sets): one replica, its encoder in one tab and its
/// decoder in the other. A three-window transcription gives each window its clip's reference
/// text; the decoder's tab lost mid-run is replaced while the request runs (its session replayed,
/// the same request answered on its first attempt); the encoder's tab lost mid-run loses the
/// replica, and the request is answered once the pool has rebuilt the split. Token-identical to
/// the undisturbed run both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_replica_survives_losing_either_tab() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tabpool::policy::routing::ModelType;
    use tabpool::policy::sharding::Strategy;
    use tabpool::pool::speech::Audio;
    use tabpool::pool::{ModelSpec, Pool};

    let _procs = support::process_guard();
    let mut cfg = two_webnn_tabs();
    cfg.generation.shards = 2;
    cfg.generation.strategy = Strategy::Component;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::of_type(ModelType::Audio)).await.unwrap();
    let name = "whisper-tiny.en";
    assert_eq!(pool.replica_count(name), Some(1));
    // Which tab holds which part, as the status shows it.
    let parts = |pool: &Pool| -> Vec<(u64, String)> {
        let m = pool.metrics();
        let model = m.models.iter().find(|x| x.name == name).unwrap().clone();
        assert_eq!(model.pipelines.len(), 1, "one split replica");
        assert_eq!(model.pipelines[0].strategy, "component");
        model.pipelines[0].tabs.iter().map(|t| (t.tab, t.parts.clone())).collect()
    };
    let before = parts(&pool);
    assert_eq!(before.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(), ["encoder", "decoder"]);
    assert_ne!(before[0].0, before[1].0);

    let (samples, want) = three_windows();
    let undisturbed = pool
        .transcribe(None, Audio::Samples(samples.clone()), vec![], None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pool.metrics().render()));
    let texts: Vec<&str> = undisturbed.transcript.windows.iter().map(|w| w.text.trim()).collect();
    assert_eq!(texts, want);
    assert!(undisturbed.backend.ends_with("×2 component"), "{}", undisturbed.backend);
    // One clip alone: the reference's ids.
    let (clip, ids) = reference_clip(1);
    let one = pool.transcribe(None, Audio::Samples(Arc::new(clip)), vec![], None).await.unwrap();
    assert_eq!(one.transcript.ids, ids);

    // Cut `victim`'s socket 0.8 s into a transcription; its answer.
    let cut_during = async |victim: u64| {
        let t = Instant::now();
        let run = pool.transcribe(None, Audio::Samples(samples.clone()), vec![], None);
        let kill = async {
            while !pool.metrics().tabs.iter().any(|t| t.streams > 0) {
                assert!(t.elapsed() < Duration::from_secs(30), "the transcription never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert!(pool.disconnect_tab(victim));
        };
        let (done, ()) = tokio::join!(run, kill);
        let done = done.unwrap();
        eprintln!(
            "cut tab {victim}: answered after {} attempt(s), {} tab(s) replaced, in {:.1} s",
            done.attempts,
            done.transcript.tabs_replaced,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(done.transcript.ids, undisturbed.transcript.ids, "token-identical after losing tab {victim}");
        done
    };

    // The decoder's tab: replaced in flight, the same attempt.
    let done = cut_during(before[1].0).await;
    assert_eq!(done.attempts, 1);
    assert!(done.transcript.tabs_replaced >= 1);
    let after = parts(&pool);
    assert_eq!(after[0].0, before[0].0, "the encoder stayed");
    assert!(pool.metrics().tabs.iter().any(|t| t.id == after[1].0), "the decoder is in a live tab");

    // The encoder's tab (the replica's own): the replica is lost and rebuilt, the request run again.
    let done = cut_during(after[0].0).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(pool.replica_count(name), Some(1));
    assert_eq!(parts(&pool).len(), 2);
    pool.shutdown().await;
}

/// Two chromium-webnn tabs, no hedging, no scaling: the pool the speech recovery tests use.
fn two_webnn_tabs() -> tabpool::pool::PoolConfig {
    use tabpool::browser::{BrowserKind, KindSpec};
    let mut cfg = tabpool::pool::PoolConfig {
        min_tabs: 2,
        max_tabs: 2,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        hedge: false,
        ..Default::default()
    };
    cfg.scaling.enabled = false;
    cfg
}

/// Reference clip `i`: its samples and its reference ids.
fn reference_clip(i: usize) -> (Vec<f32>, Vec<u32>) {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper");
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{data}/whisper_tiny_en.json")).unwrap()).unwrap();
    let case = &refj["cases"][i];
    let f = case["file"].as_str().unwrap();
    let samples =
        tabpool::models::whisper::audio::decode(&std::fs::read(format!("{data}/{f}")).unwrap()).unwrap().samples;
    let ids = case["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    (samples, ids)
}

/// Three windows — clip 0, clip 1, clip 0, each starting a 30-s window — and each window's
/// reference text.
fn three_windows() -> (std::sync::Arc<Vec<f32>>, Vec<String>) {
    use tabpool::models::whisper::audio::N_SAMPLES;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper");
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{data}/whisper_tiny_en.json")).unwrap()).unwrap();
    let mut samples = Vec::new();
    for i in [0, 1, 0] {
        samples.resize(samples.len().div_ceil(N_SAMPLES) * N_SAMPLES, 0.0);
        samples.extend(reference_clip(i).0);
    }
    let want = [0, 1, 0].iter().map(|&i| refj["cases"][i]["transcript"].as_str().unwrap().to_string()).collect();
    (std::sync::Arc::new(samples), want)
}
