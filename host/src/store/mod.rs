//! The pool's memory: every execution, tab lifecycle event, breaker transition, health sample,
//! scaling decision and recovery, in a DuckDB file (`schema.rs`). Writes go through a
//! [`Recorder`]: a bounded channel to one writer thread that batches rows into appenders, so the
//! request path never waits on the database. Routing reads the history back at start
//! ([`Store::history`]); reports query it (`crate::report`).

pub mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use duckdb::types::{TimeUnit, Value};
use duckdb::{Connection, params};

use crate::policy::routing::History;

/// (model, browser kind, backend).
pub type HistKey = (String, String, String);

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// `$TABPOOL_HISTORY`, else `<data dir>/tabpool/history.duckdb` (`~/.local/share` on Linux).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("TABPOOL_HISTORY") {
            return PathBuf::from(p);
        }
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("tabpool").join("history.duckdb")
    }

    /// Open (creating it and its folder if needed) and bring the schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            // Folders we create are private: the history names tabs, kinds and timings.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        // Readable by its owner only (the `tabpool` binary also runs with umask 077, which
        // covers the write-ahead log DuckDB creates beside it later).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
        let store = Store { path: path.to_path_buf(), conn: Mutex::new(conn) };
        store.migrate()?;
        Ok(store)
    }

    /// Open an existing database for reading only (reports); its schema must be known.
    pub fn open_read_only(path: &Path) -> anyhow::Result<Store> {
        anyhow::ensure!(
            path.is_file(),
            "no history database at {} (a pool records one while it serves; see --history)",
            path.display()
        );
        let cfg = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly)?;
        let conn = Connection::open_with_flags(path, cfg).map_err(|e| open_error(path, e))?;
        let store = Store { path: path.to_path_buf(), conn: Mutex::new(conn) };
        let v = store.schema_version()?;
        anyhow::ensure!(
            v == schema::latest(),
            "{} is at schema version {v}, this tabpool reads {} (open it once with `tabpool serve --history` to migrate)",
            path.display(),
            schema::latest()
        );
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().expect("store connection")
    }

    /// The schema version recorded in the file (0: empty).
    pub fn schema_version(&self) -> anyhow::Result<i32> {
        let conn = self.conn();
        let exists: i64 = conn.query_row(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'",
            [],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Ok(0);
        }
        Ok(conn.query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))?)
    }

    /// Apply the migrations this file lacks, all in one transaction. A file from a newer
    /// tabpool is refused rather than written with an older schema.
    fn migrate(&self) -> anyhow::Result<()> {
        let have = self.schema_version()?;
        anyhow::ensure!(
            have <= schema::latest(),
            "{} has schema version {have}, newer than this tabpool's {}: upgrade tabpool or use another --history file",
            self.path.display(),
            schema::latest()
        );
        if have == schema::latest() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)",
        )?;
        for (v, sql) in schema::MIGRATIONS.iter().filter(|(v, _)| *v > have) {
            tx.execute_batch(sql).with_context(|| format!("schema migration {v}"))?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", params![v])?;
            tracing::info!(version = v, path = %self.path.display(), "history schema migrated");
        }
        tx.commit()?;
        Ok(())
    }

    /// Register one pool start; its id tags every row the run writes.
    pub fn start_run(&self, config: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let run_id = format!("{}-{}", now.as_millis(), std::process::id());
        let hostname = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok();
        self.conn().execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
            params![run_id, now, hostname, env!("CARGO_PKG_VERSION"), config],
        )?;
        Ok(run_id)
    }

    /// Measured outcomes per (model, kind, backend) over the last `days`, as routing keeps them.
    /// Failed launches count against backend "launch" of their kind for every model.
    pub fn history(&self, days: f64) -> anyhow::Result<HashMap<HistKey, History>> {
        let conn = self.conn();
        let since = format!("now()::TIMESTAMP - INTERVAL {} SECOND", (days * 86_400.0).round() as i64);
        let mut out: HashMap<HistKey, History> = HashMap::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT model, browser_kind, backend,
                    count(*) FILTER (WHERE success),
                    count(*) FILTER (WHERE NOT success AND coalesce(error_category, '') <> 'bad_input'),
                    coalesce(avg(latency_ms / batch_rows) FILTER (WHERE success), 0)
             FROM executions WHERE ts >= {since} GROUP BY ALL"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                History {
                    successes: r.get::<_, i64>(3)? as u64,
                    failures: r.get::<_, i64>(4)? as u64,
                    mean_latency_ms: r.get(5)?,
                },
            ))
        })?;
        for row in rows {
            let (k, h) = row?;
            out.insert(k, h);
        }
        Ok(out)
    }
}

fn open_error(path: &Path, e: duckdb::Error) -> anyhow::Error {
    let msg = e.to_string();
    if msg.contains("lock") {
        anyhow::anyhow!(
            "the history database {} is in use by another process ({msg}). Use another --history file, \
             or read the running pool's report at GET /report on its API",
            path.display()
        )
    } else {
        anyhow::anyhow!("opening the history database {}: {msg}", path.display())
    }
}

/// One row for the history, stamped when it is recorded. Serialized (tagged by `type`, its
/// table's name) for the live event stream, so events carry the history rows' fields.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Execution {
        model: String,
        kind: String,
        backend: String,
        tab: u64,
        batch_rows: u32,
        tokens: u32,
        latency_ms: f64,
        queue_ms: f64,
        error: Option<String>,
        hedge: bool,
    },
    Tab {
        tab: Option<u64>,
        kind: String,
        event: String,
        detail: String,
        capabilities: Option<String>,
    },
    Breaker {
        tab: u64,
        kind: String,
        scope: String,
        from: String,
        to: String,
        reason: String,
    },
    Health {
        tab: u64,
        kind: String,
        health: u8,
        breaker: String,
        missed_heartbeats: u32,
        in_flight: u32,
    },
    Scaling {
        action: String,
        kind: Option<String>,
        tab: Option<u64>,
        tabs_after: u32,
        reason: String,
    },
    Recovery {
        tab: u64,
        kind: String,
        category: String,
        step: String,
        ok: bool,
        ms: f64,
        detail: String,
    },
    Generation {
        model: String,
        /// Where it ended: (browser kind, backend, tab); `None` if never placed.
        place: Option<(String, String, u64)>,
        prompt_tokens: u32,
        generated: u32,
        queue_ms: f64,
        ttft_ms: Option<f64>,
        decode_tok_s: Option<f64>,
        finish: String,
        replays: u32,
        error: Option<String>,
        /// Prompt tokens the prefix cache gave the last leg.
        cached_tokens: u32,
    },
}

enum Msg {
    Row(Duration, Record),
    Flush(std::sync::mpsc::Sender<anyhow::Result<()>>),
}

/// The writer side: cheap `record` calls from the pool; one thread appends in batches.
pub struct Recorder {
    run_id: String,
    tx: Mutex<Option<SyncSender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<RecorderStats>,
}

#[derive(Debug, Default)]
pub struct RecorderStats {
    pub written: AtomicU64,
    /// Rows refused because the writer fell a whole channel behind (never blocks serving).
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub flushes: AtomicU64,
    /// CPU time the writer thread spent appending (what recording costs the host, directly).
    pub writer_cpu_ns: AtomicU64,
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Rows the channel holds before `record` drops (and counts) new ones.
const CHANNEL_ROWS: usize = 65_536;
/// The writer appends at least this often while rows arrive (each append commits: a fixed cost
/// of about 2 ms measured here, so fewer, larger appends are cheaper).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const FLUSH_ROWS: usize = 4_096;

impl Recorder {
    /// A writer thread over its own connection to `store`'s database, tagging rows with `run_id`.
    pub fn start(store: &Store, run_id: String) -> anyhow::Result<Recorder> {
        let conn = store.conn().try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_ROWS);
        let stats = Arc::new(RecorderStats::default());
        let (st, run) = (stats.clone(), run_id.clone());
        let thread =
            std::thread::Builder::new().name("tabpool-recorder".into()).spawn(move || writer(conn, rx, &run, &st))?;
        Ok(Recorder { run_id, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), stats })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    /// Queue a row; never blocks (a full channel drops the row and counts it).
    pub fn record(&self, rec: Record) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let tx = self.tx.lock().expect("recorder");
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(Msg::Row(now, rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait until everything recorded so far is in the database.
    pub fn flush(&self) -> anyhow::Result<()> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // A clone of the sender, so the lock is not held while `send` blocks on a full channel:
        // `record` (on the request path) takes the same lock and must never wait behind a flush.
        let tx = self.tx.lock().expect("recorder").clone().context("the recorder is closed")?;
        tx.send(Msg::Flush(done_tx)).map_err(|_| anyhow::anyhow!("the recorder thread is gone"))?;
        drop(tx);
        done_rx.recv().map_err(|_| anyhow::anyhow!("the recorder thread is gone"))?
    }

    /// Write what is queued and stop the writer.
    pub fn close(&self) {
        let _ = self.flush();
        self.tx.lock().expect("recorder").take();
        if let Some(t) = self.thread.lock().expect("recorder").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(conn: Connection, rx: Receiver<Msg>, run_id: &str, stats: &RecorderStats) {
    let mut rows: Vec<(Duration, Record)> = Vec::new();
    let mut waiting: Vec<std::sync::mpsc::Sender<anyhow::Result<()>>> = Vec::new();
    let mut last = Instant::now();
    loop {
        let open = match rx.recv_timeout(FLUSH_EVERY) {
            Ok(Msg::Row(t, r)) => {
                rows.push((t, r));
                true
            }
            Ok(Msg::Flush(done)) => {
                waiting.push(done);
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        // Take whatever else is already queued, then write if it is time.
        while rows.len() < FLUSH_ROWS {
            match rx.try_recv() {
                Ok(Msg::Row(t, r)) => rows.push((t, r)),
                Ok(Msg::Flush(done)) => waiting.push(done),
                Err(_) => break,
            }
        }
        if !rows.is_empty()
            && (!waiting.is_empty() || !open || rows.len() >= FLUSH_ROWS || last.elapsed() >= FLUSH_EVERY)
        {
            let cpu = thread_cpu_ns();
            let appended = append(&conn, run_id, &rows);
            stats.writer_cpu_ns.fetch_add(thread_cpu_ns().saturating_sub(cpu), Ordering::Relaxed);
            match appended {
                Ok(()) => {
                    stats.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("history: {} rows not written: {e:#}", rows.len());
                }
            }
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            rows.clear();
            last = Instant::now();
        }
        if rows.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(Ok(()));
            }
        }
        if !open && rows.is_empty() {
            return;
        }
    }
}

fn ts(t: Duration) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, t.as_micros() as i64)
}

/// Append `rows` table by table (one appender each), then flush them.
fn append(conn: &Connection, run: &str, rows: &[(Duration, Record)]) -> anyhow::Result<()> {
    let mut apps: HashMap<&'static str, duckdb::Appender<'_>> = HashMap::new();
    for (t, rec) in rows {
        let table = match rec {
            Record::Execution { .. } => "executions",
            Record::Tab { .. } => "tab_events",
            Record::Breaker { .. } => "breaker_transitions",
            Record::Health { .. } => "health_samples",
            Record::Scaling { .. } => "scaling_decisions",
            Record::Recovery { .. } => "recoveries",
            Record::Generation { .. } => "generations",
        };
        if !apps.contains_key(table) {
            apps.insert(table, conn.appender(table)?);
        }
        let app = apps.get_mut(table).expect("inserted");
        match rec {
            Record::Execution { model, kind, backend, tab, batch_rows, tokens, latency_ms, queue_ms, error, hedge } => {
                app.append_row(params![
                    ts(*t),
                    run,
                    model,
                    kind,
                    backend,
                    tab,
                    batch_rows,
                    tokens,
                    latency_ms,
                    queue_ms,
                    error.is_none(),
                    error,
                    hedge
                ])?
            }
            Record::Tab { tab, kind, event, detail, capabilities } => {
                app.append_row(params![ts(*t), run, tab, kind, event, detail, capabilities])?
            }
            Record::Breaker { tab, kind, scope, from, to, reason } => {
                app.append_row(params![ts(*t), run, tab, kind, scope, from, to, reason])?
            }
            Record::Health { tab, kind, health, breaker, missed_heartbeats, in_flight } => {
                app.append_row(params![ts(*t), run, tab, kind, health, breaker, missed_heartbeats, in_flight])?
            }
            Record::Scaling { action, kind, tab, tabs_after, reason } => {
                app.append_row(params![ts(*t), run, action, kind, tab, tabs_after, reason])?
            }
            Record::Recovery { tab, kind, category, step, ok, ms, detail } => {
                app.append_row(params![ts(*t), run, tab, kind, category, step, ok, ms, detail])?
            }
            Record::Generation {
                model,
                place,
                prompt_tokens,
                generated,
                queue_ms,
                ttft_ms,
                decode_tok_s,
                finish,
                replays,
                error,
                cached_tokens,
            } => {
                let (kind, backend, tab) = match place {
                    Some((k, b, t)) => (Some(k), Some(b), Some(t)),
                    None => (None, None, None),
                };
                app.append_row(params![
                    ts(*t),
                    run,
                    model,
                    kind,
                    backend,
                    tab,
                    prompt_tokens,
                    generated,
                    queue_ms,
                    ttft_ms,
                    decode_tok_s,
                    finish,
                    replays,
                    error,
                    cached_tokens
                ])?
            }
        }
    }
    for (_, mut a) in apps {
        a.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(model: &str, kind: &str, ms: f64, error: Option<&str>) -> Record {
        Record::Execution {
            model: model.into(),
            kind: kind.into(),
            backend: "webnn-cpu".into(),
            tab: 1,
            batch_rows: 4,
            tokens: 40,
            latency_ms: ms,
            queue_ms: 1.0,
            error: error.map(str::to_string),
            hedge: false,
        }
    }

    #[test]
    fn a_new_file_gets_the_latest_schema_and_records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/h.duckdb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), schema::latest());
            let run = store.start_run("min_tabs = 1").unwrap();
            let rec = Recorder::start(&store, run).unwrap();
            for _ in 0..10 {
                rec.record(exec("m", "chromium-webnn", 40.0, None));
            }
            rec.record(exec("m", "chromium-webnn", 0.0, Some("crash")));
            rec.record(exec("m", "chromium-webnn", 0.0, Some("bad_input"))); // not the tab's fault
            rec.record(Record::Breaker {
                tab: 1,
                kind: "chromium-webnn".into(),
                scope: "tab".into(),
                from: "Closed".into(),
                to: "Open".into(),
                reason: "failure rate 60%".into(),
            });
            rec.close();
            assert_eq!(rec.stats().written.load(Ordering::Relaxed), 13);
        }
        let store = Store::open(&path).unwrap();
        let h = store.history(30.0).unwrap();
        let got = h[&("m".to_string(), "chromium-webnn".to_string(), "webnn-cpu".to_string())];
        assert_eq!((got.successes, got.failures), (10, 1));
        assert!((got.mean_latency_ms - 10.0).abs() < 1e-9, "40 ms over 4 texts: {got:?}");
        let n: i64 = store.conn().query_row("SELECT count(*) FROM breaker_transitions", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_runs_row_holds_no_credentials_of_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("h.duckdb")).unwrap();
        let cfg = crate::pool::PoolConfig::from_toml(crate::pool::config::tests::WITH_SECRET).unwrap();
        // As the pool starts a run (`Shared::new`).
        let run = store.start_run(&serde_json::to_string(&cfg).unwrap_or_default()).unwrap();
        let row: String =
            store.conn().query_row("SELECT config FROM runs WHERE run_id = ?", [&run], |r| r.get(0)).unwrap();
        assert!(!row.contains("s3cret"), "{row}");
        assert!(row.contains("http://***@grid:4444"), "the kind is still there, its URL redacted: {row}");
    }

    #[test]
    fn an_old_file_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.duckdb");
        {
            // A version-1 database, as an earlier tabpool left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)").unwrap();
            conn.execute_batch(schema::MIGRATIONS[0].1).unwrap();
            conn.execute_batch("INSERT INTO schema_version (version) VALUES (1)").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), schema::latest());
        let n: i64 = store.conn().query_row("SELECT count(*) FROM backend_summary", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the view a later migration adds is there");
        store.conn().execute_batch("INSERT INTO schema_version (version) VALUES (999)").unwrap();
        drop(store);
        let err = Store::open(&path).err().expect("a newer schema is refused").to_string();
        assert!(err.contains("newer than this tabpool"), "{err}");
    }

    #[test]
    fn a_locked_file_is_named_with_the_fix() {
        // DuckDB locks a file per process; within one process a second open shares it, so the
        // lock case is covered end to end in tests/history.rs. Here: a missing file for reports.
        let err = Store::open_read_only(Path::new("/nonexistent/h.duckdb")).err().unwrap().to_string();
        assert!(err.contains("no history database"), "{err}");
    }
}
