//! Every graph op on WebNN in a real chromium-webnn tab (npm @sparticuz/chromium 153, LiteRT /
//! XNNPACK on the CPU) against the CPU executor: the same table as the WebGPU op tests (block-dtype
//! arguments as weights, which WebNN holds dequantized to f32). Rope, CachedAttention and Sample
//! take their angles, cache rows and draws from a step's extra inputs, so WebNN lowers them only
//! inside a stateful step graph (`tests/smollm2_tab.rs` checks those against the reference);
//! standalone they must be refused as Unsupported, saying so.

use crate::support;

#[path = "../page_runtime/tests/common/op_cases.rs"]
mod op_cases;

use page_runtime::executors::cpu::CpuModel;
use shared_proto::{ExecBackend, Op};
use tabpool::browser::BrowserKind;
use tabpool::exec::TabModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_matches_the_cpu_executor_on_webnn() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(tab.caps().webnn.api_present, "navigator.ml present: {:?}", tab.caps().webnn);
    let (mut failures, mut compared, mut refused) = (Vec::new(), 0, 0);
    for (i, case) in op_cases::cases().into_iter().chain(op_cases::generation_cases()).enumerate() {
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let backend = ExecBackend::WebNn { device: "cpu".into() };
        let step_only = matches!(case.op, Op::Rope { .. } | Op::CachedAttention { .. } | Op::Sample);
        let loaded = TabModel::load(&tab, &format!("op{i}"), &g, &weights, backend, &()).await;
        if step_only {
            let err = format!("{:#}", loaded.err().expect("refused at load (its warm-up run)"));
            if !(err.contains("Unsupported") && err.contains("stateful step graph")) {
                failures.push(format!("{}: want Unsupported (step graphs only), got {err}", case.name));
            }
            refused += 1;
            continue;
        }
        let tm = loaded.unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        match tm.run(inputs).await {
            Ok((got, _)) => {
                compared += 1;
                if let Err(e) = op_cases::check(&case, &got[0], &want[0]) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    eprintln!("{compared} ops compared with the CPU executor, {refused} refused outside step graphs");
    assert!(failures.is_empty(), "WebNN op failures:\n{}", failures.join("\n"));
    host.shutdown().await;
}

/// Run time of an EfficientNet-Lite0-sized MBConv block (24 channels at 56×56, expand 6: 1×1
/// 24→144 + ReLU6, depthwise 3×3 + ReLU6, 1×1 144→24, residual, pool) on WebNN (channels-last
/// inside the graph), checked against the CPU executor; printed with the CPU's time in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbconv_block_timing_on_webnn() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    let case = op_cases::mbconv("mbconv 24@56 x6", 24, 56, 6, 1e-4);
    let (g, weights, inputs) = op_cases::split(&case);
    let cpu = CpuModel::new(g.clone(), weights.clone()).unwrap();
    let t0 = std::time::Instant::now();
    let want = cpu.run(&inputs).unwrap();
    let cpu_ms = t0.elapsed().as_secs_f64() * 1e3;
    let backend = ExecBackend::WebNn { device: "cpu".into() };
    let tm = TabModel::load(&tab, "mbconv", &g, &weights, backend, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut times = Vec::new();
    for _ in 0..7 {
        let (got, ms) = tm.run(inputs.clone()).await.unwrap_or_else(|e| panic!("{e:#}"));
        op_cases::check(&case, &got[0], &want[0]).unwrap();
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    eprintln!("{}: WebNN median {:.2} ms (min {:.2}); host CPU executor {cpu_ms:.2} ms", case.name, times[3], times[0]);
    host.shutdown().await;
}
