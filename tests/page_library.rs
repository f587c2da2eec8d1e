//! The runtime as a library in a web page of its own (the npm package `@tabpool/runtime` built
//! into `www/pkg/npm/`): `www/examples/embed.html`, served with the MiniLM model folder from a
//! plain static server — no tabpool host, no socket — embeds the reference sentences in headless
//! Chromium, tokenised in the page, with the backend "auto" timed fastest, equal to the float64
//! reference; reloaded, it fetches no model file (Cache Storage); in the WebNN build of Chromium,
//! asked for WebNN, and in Firefox, equal to the reference too.

use std::time::{Duration, Instant};

use crate::support;
use tabpool::browser::{BrowserSession, DriverProcess, Launch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_embeds_with_the_npm_package_alone_equal_to_the_reference() {
    let _procs = support::process_guard();
    // What a site would serve: the built package with the example page, and the model's files.
    let site = tempfile::tempdir().unwrap();
    let www = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../www"));
    assert!(www.join("pkg/npm/index.js").is_file(), "the npm package is not built: bash scripts/build-page.sh");
    std::os::unix::fs::symlink(www, site.path().join("www")).unwrap();
    std::fs::create_dir(site.path().join("models")).unwrap();
    std::os::unix::fs::symlink(tabpool::models::minilm::default_dir(), site.path().join("models/minilm")).unwrap();
    let (addr, server) = tabpool::server::http::serve(site.path().to_path_buf(), [127, 0, 0, 1].into()).await.unwrap();

    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let enc = support::query_value;
    let query =
        format!("model={}&backend=auto&texts={}", enc("/models/minilm/"), enc(&serde_json::to_string(&texts).unwrap()));
    let page = format!("http://{addr}/www/examples/embed.html?{query}");
    let driver = DriverProcess::chromedriver(std::path::Path::new("/usr/bin/chromedriver")).await.unwrap();
    let launch =
        Launch::Chromium { driver_url: driver.url(), binary: "/usr/bin/chromium".into(), flags: vec![], attach: false };
    let session = BrowserSession::open(&launch, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let r = result(&session).await;
    let shot_path = std::env::temp_dir().join("tabpool-page-library.png");
    std::fs::write(&shot_path, session.screenshot().await.unwrap()).unwrap();
    // A reload fetches no model file again: Cache Storage has them.
    session.reopen(&page).await.unwrap();
    let again = result(&session).await;
    session.close().await;

    // The same page in the WebNN build of Chromium (npm @sparticuz/chromium), asked for WebNN.
    let webnn_page = page.replace("backend=auto", "backend=webnn");
    let launch = Launch::Chromium {
        driver_url: driver.url(),
        binary: tabpool::browser::BrowserKind::default_webnn_binary(),
        flags: tabpool::browser::BrowserKind::ChromiumWebnn.flags(),
        attach: true,
    };
    let session = BrowserSession::open(&launch, &webnn_page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let webnn = result(&session).await;
    session.close().await;

    // And in Firefox (WebGPU over lavapipe, no WebNN), auto.
    let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap());
    let launch = Launch::Firefox {
        geckodriver: home.join(".cargo/bin/geckodriver"),
        binary: "/usr/bin/firefox-esr".into(),
        flags: vec![],
    };
    let session = BrowserSession::open(&launch, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let firefox = result(&session).await;
    session.close().await;
    server.abort();
    let r: serde_json::Value = r;
    eprintln!(
        "in-page: {} (calibration {}), load {:.0} ms, {} texts in {:.0} ms; screenshot {}",
        r["backend"],
        r["calibration"],
        r["load_ms"].as_f64().unwrap(),
        texts.len(),
        r["embed_ms"].as_f64().unwrap(),
        shot_path.display()
    );
    // "auto" timed every backend the tab has (SwiftShader WebGPU and the wasm CPU executor in
    // Debian's Chromium) and kept the fastest.
    let timed: Vec<(&str, f64)> = r["calibration"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["backend"].as_str()?, c["ms"].as_f64()?)))
        .collect();
    assert!(timed.iter().any(|(b, _)| *b == "wasm-cpu") && timed.iter().any(|(b, _)| *b == "webgpu"), "{r}");
    let fastest = timed.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    assert_eq!(r["backend"], fastest);
    check_vectors(&r, &refs);
    assert_eq!(r["model_fetches"], 3, "model.safetensors, tokenizer.json and config.json: {}", r["model_fetches"]);
    check_vectors(&again, &refs);
    assert_eq!(again["model_fetches"], 0, "the reload fetched model files again");
    // Kept by content: one entry per file named by its SHA-256 (and one per URL pointing at it).
    let keys: Vec<&str> = again["cache_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        use sha2::Digest;
        let bytes = std::fs::read(tabpool::models::minilm::default_dir().join(file)).unwrap();
        let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert!(keys.iter().any(|k| k.ends_with(&format!("/.tabpool-content/sha256-{sha}"))), "{file}: {keys:?}");
    }
    assert_eq!(keys.len(), 6, "3 files by content + 3 URLs: {keys:?}");
    eprintln!("reload: load {:.0} ms, no model file fetched", again["load_ms"].as_f64().unwrap());
    assert!(webnn["backend"].as_str().unwrap().starts_with("webnn-"), "{}", webnn["calibration"]);
    check_vectors(&webnn, &refs);
    check_vectors(&firefox, &refs);
    eprintln!(
        "Firefox: {} (calibration {}), load {:.0} ms, {} texts in {:.0} ms",
        firefox["backend"],
        firefox["calibration"],
        firefox["load_ms"].as_f64().unwrap(),
        refs.len(),
        firefox["embed_ms"].as_f64().unwrap()
    );
    eprintln!(
        "WebNN build: {} (calibration {}), load {:.0} ms, {} texts in {:.0} ms",
        webnn["backend"],
        webnn["calibration"],
        webnn["load_ms"].as_f64().unwrap(),
        refs.len(),
        webnn["embed_ms"].as_f64().unwrap()
    );
}

/// The page's result (it sets its title to `done {json}` or `error {json}`), within 180 s.
async fn result(session: &BrowserSession) -> serde_json::Value {
    let t = Instant::now();
    let title = loop {
        let title = session.title().await;
        if title.starts_with("done ") || title.starts_with("error ") {
            break title;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "the page did not finish: {title:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (status, json) = title.split_once(' ').unwrap();
    let r: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(status, "done", "{r}");
    r
}

/// Every vector of the page's result within the acceptance bar of the float64 reference.
fn check_vectors(r: &serde_json::Value, refs: &[support::RefSentence]) {
    let vectors = r["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), refs.len());
    for (v, reference) in vectors.iter().zip(refs) {
        let v: Vec<f32> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        support::check_against_reference(&v, reference);
    }
}

/// `npm pack` packs exactly the package's files (ES module, its wasm, TypeScript declarations,
/// README, package.json with `exports`), nothing else from the build folder.
#[test]
fn npm_pack_packs_the_module_its_wasm_and_declarations() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../www/pkg/npm");
    let out = std::process::Command::new("npm")
        .args(["pack", "--dry-run", "--json"])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("npm: {e} (scripts/setup.sh installs Node.js)"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v[0];
    let mut files: Vec<&str> = p["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "index.d.ts",
            "index.js",
            "package.json",
            "tabpool_runtime.d.ts",
            "tabpool_runtime.js",
            "tabpool_runtime_bg.wasm",
            "tabpool_runtime_bg.wasm.d.ts"
        ]
    );
    assert_eq!(p["name"], "@tabpool/runtime");
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    let pkg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/package.json")).unwrap()).unwrap();
    assert_eq!(pkg["exports"]["."]["import"], "./index.js");
    assert_eq!(pkg["exports"]["."]["types"], "./index.d.ts");
    eprintln!("npm pack: {} bytes packed, {} unpacked", p["size"], p["unpackedSize"]);
}

/// `www/examples/chat.html` with the npm package and the SmolLM2 GGUF, from a plain static server
/// in headless Debian Chromium: the chat template and tokenizer in the page give the reference's
/// prompt ids, the stream in the page (KV cache in the tab) gives its greedy ids; a second turn
/// aborted after three pieces ends with an AbortError.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_chats_with_smollm2_alone_equal_to_the_reference() {
    let _procs = support::process_guard();
    let site = tempfile::tempdir().unwrap();
    let www = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../www"));
    std::os::unix::fs::symlink(www, site.path().join("www")).unwrap();
    std::fs::create_dir(site.path().join("models")).unwrap();
    std::os::unix::fs::symlink(tabpool::models::smollm2::default_path(), site.path().join("models/smollm2.gguf"))
        .unwrap();
    let (addr, server) = tabpool::server::http::serve(site.path().to_path_buf(), [127, 0, 0, 1].into()).await.unwrap();
    let case = &support::smollm2_reference()[0];
    let enc = support::query_value;
    let page = format!(
        "http://{addr}/www/examples/chat.html?model={}&say={}&maxTokens=24",
        enc("/models/smollm2.gguf"),
        enc(&case.user)
    );
    let driver = DriverProcess::chromedriver(std::path::Path::new("/usr/bin/chromedriver")).await.unwrap();
    let launch =
        Launch::Chromium { driver_url: driver.url(), binary: "/usr/bin/chromium".into(), flags: vec![], attach: false };
    let session = BrowserSession::open(&launch, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let r = result(&session).await;
    let shot_path = std::env::temp_dir().join("tabpool-page-chat.png");
    std::fs::write(&shot_path, session.screenshot().await.unwrap()).unwrap();
    session.close().await;
    server.abort();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    eprintln!(
        "in-page chat on {}: load {:.0} ms, first token {:.0} ms, {:.1} tok/s, {:?}; screenshot {}",
        r["backend"],
        r["load_ms"].as_f64().unwrap(),
        r["ttft_ms"].as_f64().unwrap(),
        r["decode_tok_s"].as_f64().unwrap_or(0.0),
        r["text"],
        shot_path.display()
    );
    assert_eq!(ids(&r["prompt_ids"]), case.prompt_ids, "the chat template and tokenizer in the page");
    let want: Vec<u32> = case.greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
    assert_eq!(ids(&r["ids"]), want, "greedy ids in the page");
    assert_eq!(r["text"], case.text.trim_end_matches("<|im_end|>"), "{r}");
    assert_eq!(r["abort_after_3"], true, "{r}");
}
