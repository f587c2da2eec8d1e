//! `tabpool serve`: launch tabs and keep them until Ctrl-C (the CLI's signal handling shuts the
//! host down cleanly).

use crate::Host;

pub async fn run(host: &mut Host, tabs: u32) -> anyhow::Result<()> {
    for _ in 0..tabs {
        let tab = host.launch_tab().await?;
        println!("tab {} ready — {}", tab.id(), super::adapter_line(tab.caps()));
    }
    println!("tabpool serve: {tabs} tab(s) ready; Ctrl-C to stop");
    std::future::pending::<()>().await;
    Ok(())
}
