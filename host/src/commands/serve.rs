//! `tabpool serve`: launch tabs and keep them until Ctrl-C (the CLI's signal handling shuts the
//! host down cleanly).

use crate::Host;
use crate::browser::BrowserKind;

pub async fn run(host: &mut Host, tabs: u32, kind: BrowserKind) -> anyhow::Result<()> {
    for _ in 0..tabs {
        let tab = host.launch(kind).await?;
        println!("tab {} ready — {}", tab.id(), super::adapter_line(tab.caps()));
    }
    println!("tabpool serve: {tabs} tab(s) ready; Ctrl-C to stop");
    std::future::pending::<()>().await;
    Ok(())
}
