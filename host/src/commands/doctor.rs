//! `tabpool doctor`: what this machine has (browser, driver, built page) and, from one real tab,
//! what WebGPU and WebNN report.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{adapter_line, webnn_line};
use crate::browser::BrowserKind;
use crate::exec::calibrate_tab;
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

/// MiniLM timed on every backend `tab` offers (then unloaded): the figures as JSON, a line each
/// in `lines`.
async fn calibrate(
    tab: &crate::Tab,
    model: &anyhow::Result<crate::models::minilm::MiniLm>,
    lines: &mut Vec<String>,
) -> Value {
    let m = match model {
        Ok(m) => m,
        Err(e) => {
            lines.push(format!("  calibration skipped: {e:#}"));
            return json!({ "error": format!("{e:#}") });
        }
    };
    match calibrate_tab(tab, m, &()).await {
        Ok((measured, loaded)) => {
            for tm in loaded.into_iter().flatten() {
                let _ = tm.unload().await;
            }
            for m in &measured {
                lines.push(match m.median_ms {
                    Some(v) => format!(
                        "  calibration {:<10} {v:8.2} ms (MiniLM, 1 sentence of 16 tokens, median of 3)",
                        m.backend
                    ),
                    None => format!("  calibration {:<10} failed: {}", m.backend, m.error.as_deref().unwrap_or("?")),
                });
            }
            json!(measured)
        }
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

/// `doctor --grid URL`: the Grid's nodes (availability, slots in use, session timeout, what
/// their stereotypes offer), then one tab per free slot offering what `caps` ask for, all held at
/// once so that each lands on a slot of its own: its node, what the browser there reports
/// (WebGPU, WebNN, cores) and its MiniLM calibration. The host must be reachable from the nodes
/// (`--bind`/`--advertise`). Err when the Grid cannot be read or no tab started.
pub async fn run_grid(
    cfg: HostConfig,
    url: &str,
    caps: serde_json::Map<String, Value>,
    json_out: bool,
) -> anyhow::Result<()> {
    use crate::browser::KindSpec;
    use crate::browser::grid::GridClient;
    let mut kind = KindSpec::remote("grid", url, BrowserKind::Chromium);
    kind.capabilities = caps;
    kind.validate()?;
    let client = GridClient::new(kind.url.as_ref().expect("remote"));
    let view = client.view().await?;
    let free = view.free_for(&kind.asked_capabilities());
    let mut lines = vec![view.describe()];
    let mut tabs = Vec::new();
    let mut host = Host::start(cfg).await?;
    let model = crate::models::minilm::MiniLm::load(None);
    let mut held = Vec::new();
    for _ in 0..free {
        let t = Instant::now();
        let tab = match host.launch_spec(&kind).await {
            Ok(tab) => tab,
            Err(e) => {
                lines.push(format!("tab FAILED {e:#}"));
                tabs.push(json!({ "error": format!("{e:#}") }));
                continue;
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let session = host.webdriver_session(tab.id()).await.and_then(|(s, _)| s);
        let node = match (client.view().await, &session) {
            (Ok(v), Some(s)) => v.session(s).map(|(n, _)| n.uri.clone()),
            _ => None,
        };
        let caps = tab.caps().clone();
        let unmet = crate::browser::grid::unmet(&kind.asked_capabilities(), &caps);
        if let Some(why) = &unmet {
            lines.push(format!("tab {} LACKS what its node advertises: {why}", tab.id()));
        }
        lines.push(format!(
            "tab {} on node {}: joined in {ms:.0} ms; {} cores; WebGPU {}; WebNN {}",
            tab.id(),
            node.as_deref().unwrap_or("?"),
            caps.hardware_concurrency,
            adapter_line(&caps),
            webnn_line(&caps)
        ));
        let calibration = calibrate(&tab, &model, &mut lines).await;
        tabs.push(json!({ "tab": tab.id(), "node": node, "session": session, "start_ms": ms, "unmet": unmet, "capabilities": caps, "calibration": calibration }));
        held.push(tab);
    }
    host.shutdown().await;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "grid": view, "free_slots": free, "tabs": tabs }))?);
    } else {
        for l in &lines {
            println!("{}", l.trim_end());
        }
    }
    anyhow::ensure!(
        !held.is_empty(),
        "no tab could be started on the grid ({free} free slot(s) offering {})",
        Value::Object(kind.asked_capabilities())
    );
    Ok(())
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

    let mut tabs = serde_json::Map::new();
    let mut any_tab = false;
    let mut lines = Vec::new();
    if driver.is_ok() && www.is_ok() {
        let mut host = Host::start(cfg).await?;
        let model = crate::models::minilm::MiniLm::load(None);
        for kind in BrowserKind::LOCAL {
            let name = kind.name();
            if let Err(e) = host.browser_binary(kind) {
                tabs.insert(name.into(), json!({ "error": format!("{e:#}") }));
                lines.push(format!("{name:<15} MISSING  {e:#}"));
                continue;
            }
            let t = Instant::now();
            match host.launch(kind).await {
                Ok(tab) => {
                    any_tab = true;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let caps = tab.caps().clone();
                    lines.push(format!("{name:<15} ok       tab started and joined in {ms:.0} ms"));
                    lines.push(format!("  browser     {}", caps.user_agent));
                    lines.push(format!("  cores       {} (navigator.hardwareConcurrency)", caps.hardware_concurrency));
                    lines.push(format!("  threads     {} (the tab's CPU executor)", caps.threads));
                    lines.push(format!("  activations {} (its 4/8-bit Linear's)", caps.activations));
                    lines.push(format!("  WebGPU      {}", adapter_line(&caps)));
                    for (n, v) in &caps.webgpu.limits {
                        lines.push(format!("    {n:<36} {v}"));
                    }
                    lines.push(format!("  WebNN       {}", webnn_line(&caps)));
                    let calibration = calibrate(&tab, &model, &mut lines).await;
                    tabs.insert(
                        name.into(),
                        json!({ "start_ms": ms, "capabilities": caps, "calibration": calibration }),
                    );
                }
                Err(e) => {
                    lines.push(format!("{name:<15} FAILED   {e:#}"));
                    tabs.insert(name.into(), json!({ "error": format!("{e:#}") }));
                }
            }
        }
        host.shutdown().await;
    }
    report["tabs"] = serde_json::Value::Object(tabs);

    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let line = |name: &str, v: &Value| match v.get("error") {
            Some(e) => println!("{name:<15} MISSING  {}", e.as_str().unwrap_or_default()),
            None => println!(
                "{name:<15} ok       {} {}",
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
        for l in &lines {
            println!("{l}");
        }
    }
    anyhow::ensure!(any_tab, "no browser tab could be started (see above)");
    Ok(())
}
