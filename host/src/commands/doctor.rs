//! `tabpool doctor`: what this machine has (browser, driver, built page) and, from one real tab,
//! what WebGPU and WebNN report.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{adapter_line, webnn_line};
use crate::host::{CHROMEDRIVER_NAMES, CHROMIUM_NAMES};
use crate::{Host, HostConfig, paths};

fn version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn found(r: &anyhow::Result<std::path::PathBuf>) -> Value {
    match r {
        Ok(p) => json!({ "path": p, "version": version(p) }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

/// Returns Err when a tab could not be started (after printing everything it found).
pub async fn run(cfg: HostConfig, json_out: bool) -> anyhow::Result<()> {
    let chromium = paths::find_binary(cfg.chromium.as_deref(), CHROMIUM_NAMES);
    let driver = paths::find_binary(cfg.chromedriver.as_deref(), CHROMEDRIVER_NAMES);
    let www = paths::www_dir(cfg.www.as_deref());
    let page = match &www {
        Ok(dir) => {
            let wasm = dir.join(paths::PAGE_WASM);
            json!({ "dir": dir, "wasm": wasm, "wasm_bytes": std::fs::metadata(&wasm).map(|m| m.len()).ok() })
        }
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let mut report = json!({ "chromium": found(&chromium), "chromedriver": found(&driver), "page": page });

    let tab_result = if chromium.is_ok() && driver.is_ok() && www.is_ok() {
        let mut host = Host::start(cfg).await?;
        let t = Instant::now();
        let r = host.launch_tab().await;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        let out = r.map(|tab| (tab.caps().clone(), start_ms));
        host.shutdown().await;
        out
    } else {
        Err(anyhow::anyhow!("not launching a tab: see the missing pieces above"))
    };
    match &tab_result {
        Ok((caps, ms)) => report["tab"] = json!({ "start_ms": ms, "capabilities": caps }),
        Err(e) => report["tab"] = json!({ "error": format!("{e:#}") }),
    }

    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let line = |name: &str, v: &Value| match v.get("error") {
            Some(e) => println!("{name:<13} MISSING  {}", e.as_str().unwrap_or_default()),
            None => println!(
                "{name:<13} ok       {} {}",
                v["path"].as_str().or(v["dir"].as_str()).unwrap_or_default(),
                v["version"]
                    .as_str()
                    .map(str::to_string)
                    .or(v["wasm_bytes"].as_u64().map(|b| format!("({b} bytes of wasm)")))
                    .unwrap_or_default()
            ),
        };
        line("chromium", &report["chromium"]);
        line("chromedriver", &report["chromedriver"]);
        line("page", &report["page"]);
        match &tab_result {
            Ok((caps, ms)) => {
                println!("tab           ok       started and joined in {ms:.0} ms");
                println!("  browser     {}", caps.user_agent);
                println!("  cores       {} (navigator.hardwareConcurrency)", caps.hardware_concurrency);
                println!("  WebGPU      {}", adapter_line(caps));
                for (name, v) in &caps.webgpu.limits {
                    println!("    {name:<36} {v}");
                }
                if !caps.webgpu.features.is_empty() {
                    println!("    features: {}", caps.webgpu.features.join(", "));
                }
                println!("  WebNN       {}", webnn_line(caps));
            }
            Err(e) => println!("tab           FAILED   {e:#}"),
        }
    }
    tab_result.map(|_| ())
}
