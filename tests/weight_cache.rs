//! Weights are content-addressed end to end: a tab keeps what it received in its browser's Cache
//! Storage by hash, and a model loaded again in that tab — on another backend (calibration), or
//! after its device was lost (the `reload_model` recovery) — is read back by the tab; the host
//! sends nothing it holds. Each load still answers the float64 reference.

use crate::support;

use std::time::Instant;

use shared_proto::ExecBackend;
use tabpool::browser::BrowserKind;
use tabpool::exec::TabModel;
use tabpool::models::minilm::MiniLm;

async fn check(tm: &TabModel, model: &MiniLm) {
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = model.batch(&texts).unwrap();
    let (out, _) = tm.run(batch.inputs).await.unwrap_or_else(|e| panic!("{e:#}"));
    let flat = out[0].to_f32().unwrap();
    for (v, r) in flat.chunks_exact(384).zip(&refs) {
        support::check_against_reference(v, r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_is_sent_each_weight_once() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let model = MiniLm::load(None).unwrap();
    let all: u64 = model.weights.iter().map(|w| w.data.len() as u64).sum();
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    let webnn = ExecBackend::WebNn { device: "cpu".into() };

    let t = Instant::now();
    let first = TabModel::load(&tab, "a", &model.graph, &model.weights, webnn.clone(), &()).await.unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!((first.sent_bytes, first.weight_bytes), (all, all), "a fresh tab holds nothing");
    check(&first, &model).await;

    // The same weights on another backend of the same tab (as calibration does): nothing sent.
    let t = Instant::now();
    let cpu = TabModel::load(&tab, "b", &model.graph, &model.weights, ExecBackend::Cpu, &()).await.unwrap();
    let cached_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!((cpu.sent_bytes, cpu.weight_bytes), (0, all), "every weight came from the tab's cache");
    check(&cpu, &model).await;
    cpu.unload().await.unwrap();

    // After the device is lost the model is loaded again (recovery's reload_model): nothing sent.
    assert!(tab.lose_device(std::time::Duration::from_secs(30)).await.unwrap() >= 1);
    let err = first.run(model.batch(&["x"]).unwrap().inputs).await.expect_err("the old model is gone");
    assert!(format!("{err:#}").contains("DeviceLost"), "{err:#}");
    let again = TabModel::load(&tab, "a", &model.graph, &model.weights, webnn, &()).await.unwrap();
    assert_eq!(again.sent_bytes, 0, "reloaded from the tab's cache");
    check(&again, &model).await;
    eprintln!("load with every weight sent: {first_ms:.0} ms; from the tab's cache: {cached_ms:.0} ms (wasm-cpu)");

    // A model whose weights differ by one byte gets exactly that weight sent.
    let mut changed = model.weights.clone();
    let i = changed.len() - 1;
    let mut bytes = changed[i].data.to_vec();
    bytes[0] ^= 1;
    changed[i].data = bytes.into();
    let mut graph = model.graph.clone();
    graph.weights[i].hash = shared_proto::content_hash(&changed[i].data);
    let tm = TabModel::load(&tab, "c", &graph, &changed, ExecBackend::Cpu, &()).await.unwrap();
    assert_eq!(tm.sent_bytes, changed[i].data.len() as u64, "only the changed weight travels");
    host.shutdown().await;
}
