//! Every graph op on WebNN in a real chromium-webnn tab (npm @sparticuz/chromium 153, LiteRT /
//! XNNPACK on the CPU) against the CPU executor: the same table as the WebGPU op tests.

#[path = "support/mod.rs"]
mod support;

#[path = "../page_runtime/tests/common/op_cases.rs"]
mod op_cases;

use page_runtime::executors::cpu::CpuModel;
use shared_proto::ExecBackend;
use tabpool::browser::BrowserKind;
use tabpool::exec::TabModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_matches_the_cpu_executor_on_webnn() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(tab.caps().webnn.api_present, "navigator.ml present: {:?}", tab.caps().webnn);
    let mut failures = Vec::new();
    for (i, case) in op_cases::cases().into_iter().enumerate() {
        let g = op_cases::graph(&case);
        let want = CpuModel::new(g.clone(), vec![]).unwrap().run(&case.args).unwrap();
        let backend = ExecBackend::WebNn { device: "cpu".into() };
        let tm = TabModel::load(&tab, &format!("op{i}"), &g, &[], backend, &()).await.unwrap();
        match tm.run(case.args.clone()).await {
            Ok((got, _)) => {
                if let Err(e) = op_cases::check(&case, &got[0], &want[0]) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    assert!(failures.is_empty(), "WebNN op failures:\n{}", failures.join("\n"));
    host.shutdown().await;
}
