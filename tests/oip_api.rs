//! `tabpool serve` with MiniLM and EfficientNet-Lite0 on one WebNN tab, locked with a key, driven
//! by what users drive it with: Triton's official Open Inference Protocol client
//! (`tests/clients/triton_client.py`: health, metadata, a batch of the two reference images as
//! JSON tensors and as binary tensors, checked here against the float64 reference) and the
//! system `curl` on `POST /v1/images/classifications` (a raw PNG body, a multipart form of two).
//! Then every kind of bad input, each a clear 4xx with its reason while the server keeps serving.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const KEY: &str = "k3y-for-tests-0123456789abcdef";
const IMAGE_MODEL: &str = "efficientnet-lite0";

/// `curl ARGS… URL` with the key (unless `keyed` is false): (status, body).
fn curl(api: &str, path: &str, args: &[&str], keyed: bool) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "300", "-o", "-", "-w", "\n%{http_code}"]);
    if keyed {
        cmd.args(["-H", &format!("Authorization: Bearer {KEY}")]);
    }
    let out = cmd.args(args).arg(format!("http://{api}{path}")).output().expect("the system curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    assert!(code != 0, "curl got no answer: {}", String::from_utf8_lossy(&out.stderr));
    (code, body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The OpenAI-style envelope's message of a refusal from `/v1/images/classifications`.
fn message(body: &str) -> String {
    json(body)["error"]["message"].as_str().unwrap_or_else(|| panic!("an error envelope: {body}")).to_string()
}

/// One image's `top` from a classification answer: (class, label, probability).
fn top_of(item: &serde_json::Value) -> Vec<(usize, String, f32)> {
    item["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["class"].as_u64().unwrap() as usize,
                t["label"].as_str().unwrap().to_string(),
                t["probability"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

/// A small PNG file that claims `width`×`height` RGB pixels: a signature, IHDR, an IDAT holding
/// an empty zlib stream, IEND (all checksums right), so only the claimed size is wrong.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    // 8-bit, RGB, deflate, adaptive filter, no interlace.
    let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_client_and_curl_classify_the_reference_images_and_bad_input_is_refused() {
    let _procs = support::process_guard();
    let python = support::pyclients();
    let refs = support::efficientnet_reference();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (_serve, api) = support::start_serve(
        &[support::ONE_TAB, &["--model", "minilm", "--model", IMAGE_MODEL, "--api-key", KEY]].concat(),
    )
    .await;
    eprintln!("serve ready with MiniLM and EfficientNet-Lite0 in {:.1} s", t.elapsed().as_secs_f64());

    // Triton's client. The input tensor is made by tabpool's own preprocessing (bit-exact with
    // the reference's Pillow resize); the client only ships it.
    let pixels: Vec<u8> = refs
        .iter()
        .flat_map(|r| tabpool::models::efficientnet::preprocess::prepare(&std::fs::read(&r.path).unwrap()).unwrap())
        .flat_map(f32::to_le_bytes)
        .collect();
    assert_eq!(pixels.len(), 2 * 3 * 224 * 224 * 4);
    let (pixels_file, out_file) = (dir.path().join("pixels.f32"), dir.path().join("triton.json"));
    std::fs::write(&pixels_file, &pixels).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/triton_client.py");
    let t = Instant::now();
    let out = Command::new(&python).args([script, &api, KEY]).args([&pixels_file, &out_file]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ALL OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("triton client: {:.1} s", t.elapsed().as_secs_f64());
    let triton = json(&std::fs::read_to_string(&out_file).unwrap());
    // Names are the /v1/models ids; the image model's input and outputs.
    let (code, models) = support::http_keyed(&api, "GET", "/v1/models", "", Some(KEY)).await;
    assert_eq!(code, 200, "{models}");
    let models = json(&models);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    let mut meta_names: Vec<&str> = triton["metadata"].as_object().unwrap().keys().map(String::as_str).collect();
    meta_names.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(meta_names, sorted_ids);
    assert!(ids.contains(&"all-MiniLM-L6-v2") && ids.contains(&IMAGE_MODEL), "{ids:?}");
    let img = &triton["metadata"][IMAGE_MODEL];
    assert_eq!(
        img["inputs"],
        serde_json::json!([{ "name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, 224] }])
    );
    assert_eq!(
        img["outputs"],
        serde_json::json!([
            { "name": "logits", "datatype": "FP32", "shape": [-1, 1000] },
            { "name": "features", "datatype": "FP32", "shape": [-1, 1280] },
        ])
    );
    let mut worst = 0f32;
    for mode in ["json", "binary"] {
        let res = &triton["results"][mode];
        let backend = res["parameters"]["backend"].as_str().unwrap_or("?").to_string();
        for (i, r) in refs.iter().enumerate() {
            let logits: Vec<f32> =
                res["logits"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let diff = support::check_vision_logits(&format!("/v2 infer ({mode}, {backend})"), &logits, r);
            eprintln!("/v2 infer {mode} on {backend}, {}: max |logit diff| {diff:.2e}", r.file);
            worst = worst.max(diff);
            let features = res["features"][i].as_array().unwrap();
            assert_eq!(features.len(), 1280);
        }
    }
    eprintln!("/v2 infer: max |logit diff| {worst:.2e} over both images, JSON and binary");

    // curl: the raw PNG body, then both as a multipart form.
    let t = Instant::now();
    let path = format!("/v1/images/classifications?model={IMAGE_MODEL}");
    for r in &refs {
        let file = format!("@{}", r.path.display());
        let (code, body) = curl(&api, &path, &["--data-binary", &file, "-H", "Content-Type: image/png"], true);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("list"), Some(IMAGE_MODEL)), "{body}");
        support::check_vision_top5("curl raw body", &top_of(&v["data"][0]), r);
    }
    let form: Vec<String> = refs.iter().map(|r| format!("image=@{}", r.path.display())).collect();
    let (code, body) =
        curl(&api, "/v1/images/classifications?top=5&embedding=true", &["-F", &form[0], "-F", &form[1]], true);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{body}");
    for (i, (item, r)) in data.iter().zip(&refs).enumerate() {
        assert_eq!(item["index"].as_u64(), Some(i as u64));
        support::check_vision_top5("curl multipart", &top_of(item), r);
        assert_eq!(item["embedding"].as_array().map(Vec::len), Some(1280), "?embedding=true");
    }
    eprintln!("curl: 2 raw + 1 multipart of 2 in {:.1} s", t.elapsed().as_secs_f64());

    // Bad input: each a clear 4xx naming the reason; the server keeps serving.
    let bad = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cat = std::fs::read(&refs[0].path).unwrap();
    let raw = |p: &Path| -> (u16, String) {
        let file = format!("@{}", p.display());
        curl(&api, "/v1/images/classifications", &["--data-binary", &file, "-H", "Content-Type: image/png"], true)
    };
    let cases: Vec<(&str, PathBuf, u16, &str)> = vec![
        ("not an image", bad("notes.png", b"just some text, no picture"), 400, "not an image"),
        ("truncated PNG", bad("half.png", &cat[..cat.len() / 2]), 400, "truncated or corrupt"),
        ("100000x100000 header", bad("huge.png", &png_claiming(100_000, 100_000)), 413, "over the limit of 50000000"),
        ("0x0 header", bad("empty.png", &png_claiming(0, 0)), 400, ""),
    ];
    for (what, file, want, reason) in &cases {
        let (code, body) = raw(file);
        eprintln!("{what}: {code} {body}");
        assert_eq!(code, *want, "{what}: {body}");
        assert!(message(&body).contains(reason), "{what}: {body}");
    }
    // The same claim with nothing after the header: refused as either (the PNG decoder wants the
    // first IDAT before it reports the size), never decoded.
    let header_only = {
        let mut png = png_claiming(100_000, 100_000);
        png.truncate(8 + 25);
        bad("header-only.png", &png)
    };
    let (code, body) = raw(&header_only);
    eprintln!("header-only 100000x100000: {code} {body}");
    assert!(code == 400 || code == 413, "{body}");
    assert!(!message(&body).is_empty(), "{body}");
    // Over the 32 MiB body limit: raw and as a form.
    let big = bad("big.bin", &vec![0u8; (32 << 20) + 1024]);
    let (code, body) = raw(&big);
    assert_eq!(code, 413, "{body}");
    assert!(message(&body).contains("32 MiB"), "{body}");
    let big_form = format!("image=@{}", big.display());
    let (code, body) = curl(&api, "/v1/images/classifications", &["-F", &big_form], true);
    assert_eq!(code, 413, "{body}");
    assert!(message(&body).contains("32 MiB"), "{body}");
    // A bad image among good ones in a form: the request is refused naming which one.
    let notes_form = format!("image=@{}", cases[0].1.display());
    let (code, body) = curl(&api, "/v1/images/classifications", &["-F", &form[0], "-F", &notes_form], true);
    assert_eq!(code, 400, "{body}");
    assert!(message(&body).contains("image 2") && message(&body).contains("not an image"), "{body}");
    // No key.
    let file = format!("@{}", refs[0].path.display());
    let (code, body) =
        curl(&api, "/v1/images/classifications", &["--data-binary", &file, "-H", "Content-Type: image/png"], false);
    assert_eq!(code, 401, "{body}");
    // A text model is not an image model.
    let (code, body) = raw_with_model(&api, &refs[0].path, "all-MiniLM-L6-v2");
    assert_eq!(code, 400, "{body}");
    let (code, body) = raw_with_model(&api, &refs[0].path, "no-such-model");
    assert_eq!(code, 404, "{body}");

    // /v2 infer refusals.
    let infer = |model: &str, name: &str, datatype: &str, shape: &[i64]| {
        let n: i64 = shape.iter().product();
        serde_json::json!({
            "model": model,
            "body": { "inputs": [{ "name": name, "datatype": datatype, "shape": shape,
                                    "data": vec![0.0f32; n.clamp(0, 1 << 20) as usize] }] },
        })
    };
    let v2_cases = [
        ("wrong shape", infer(IMAGE_MODEL, "pixels", "FP32", &[1, 3, 224, 225]), 400, "must have shape"),
        ("wrong rank", infer(IMAGE_MODEL, "pixels", "FP32", &[3, 224, 224]), 400, "must have shape"),
        ("wrong datatype", infer(IMAGE_MODEL, "pixels", "INT32", &[1, 3, 224, 224]), 400, "takes FP32, not INT32"),
        ("wrong input name", infer(IMAGE_MODEL, "image", "FP32", &[1, 3, 224, 224]), 400, "its input is \"pixels\""),
        ("unknown model", infer("no-such-model", "pixels", "FP32", &[1, 3, 224, 224]), 404, "no-such-model"),
        ("data shorter than the shape", infer(IMAGE_MODEL, "pixels", "FP32", &[2, 3, 224, 224]), 400, ""),
    ];
    for (what, case, want, reason) in &v2_cases {
        let mut body = case["body"].clone();
        if *what == "data shorter than the shape" {
            body["inputs"][0]["data"] = serde_json::json!([0.0, 1.0]);
        }
        let path = format!("/v2/models/{}/infer", case["model"].as_str().unwrap());
        let (code, resp) = support::http_keyed(&api, "POST", &path, &body.to_string(), Some(KEY)).await;
        let v = json(&resp);
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: the protocol's {{\"error\"}}: {resp}"));
        eprintln!("/v2 {what}: {code} {msg}");
        assert_eq!(code, *want, "{what}: {resp}");
        assert!(msg.contains(reason), "{what}: {resp}");
    }
    // Non-finite pixels, over the infer body limit, and no key.
    let nan = r#"{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224], "parameters": {"binary_data_size": 602112}}]}"#;
    let mut body = nan.as_bytes().to_vec();
    body.extend((0..3 * 224 * 224).flat_map(|i| if i == 7 { f32::NAN } else { 0.0 }.to_le_bytes()));
    let nan_file = bad("nan.bin", &body);
    let (code, resp) = curl(
        &api,
        &format!("/v2/models/{IMAGE_MODEL}/infer"),
        &[
            "--data-binary",
            &format!("@{}", nan_file.display()),
            "-H",
            &format!("Inference-Header-Content-Length: {}", nan.len()),
            "-H",
            "Content-Type: application/octet-stream",
        ],
        true,
    );
    assert_eq!(code, 400, "{resp}");
    assert!(json(&resp)["error"].as_str().unwrap().contains("finite"), "{resp}");
    let big = format!("@{}", big.display());
    let (code, resp) = curl(&api, &format!("/v2/models/{IMAGE_MODEL}/infer"), &["--data-binary", &big], true);
    assert_eq!(code, 413, "{resp}");
    assert!(json(&resp)["error"].as_str().unwrap().contains("32 MiB"), "{resp}");
    let body = infer(IMAGE_MODEL, "pixels", "FP32", &[1, 3, 224, 224])["body"].to_string();
    let (code, resp) = support::http(&api, "POST", &format!("/v2/models/{IMAGE_MODEL}/infer"), &body).await;
    assert_eq!(code, 401, "{resp}");
    // Probes need no key (they say nothing about data); the model routes do.
    let (code, resp) = support::http(&api, "GET", "/v2/health/ready", "").await;
    assert_eq!(code, 200, "health/ready without the key: {resp}");
    let (code, resp) = support::http(&api, "GET", &format!("/v2/models/{IMAGE_MODEL}"), "").await;
    assert_eq!(code, 401, "model metadata without the key: {resp}");

    // Still serving after all of that.
    let (code, resp) = support::http_keyed(&api, "GET", "/v2/health/ready", "", Some(KEY)).await;
    assert_eq!(code, 200, "{resp}");
    let (code, body) = raw(&refs[1].path);
    assert_eq!(code, 200, "{body}");
    support::check_vision_top5("after the refusals", &top_of(&json(&body)["data"][0]), &refs[1]);

    // /openapi.json lists the new routes.
    let (code, spec) = support::http_keyed(&api, "GET", "/openapi.json", "", Some(KEY)).await;
    assert_eq!(code, 200, "{spec}");
    let spec = json(&spec);
    let paths: Vec<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for p in ["/v2", "/v2/models/{model}", "/v2/models/{model}/infer", "/v1/images/classifications"] {
        assert!(paths.contains(&p), "/openapi.json lacks {p}: {paths:?}");
    }
}

/// A raw PNG body to `/v1/images/classifications?model=MODEL`.
fn raw_with_model(api: &str, file: &Path, model: &str) -> (u16, String) {
    let file = format!("@{}", file.display());
    let path = format!("/v1/images/classifications?model={model}");
    curl(api, &path, &["--data-binary", &file, "-H", "Content-Type: image/png"], true)
}
