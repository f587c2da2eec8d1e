//! The history database's schema, as an ordered list of migrations. A database records the
//! version it is at (`schema_version`); opening it applies the missing steps in one transaction.
//! Append a step to change the schema; never edit a released one.

/// (version, SQL). Versions are 1, 2, … in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE runs (
    run_id      VARCHAR PRIMARY KEY,   -- one pool start
    started_at  TIMESTAMP NOT NULL,
    hostname    VARCHAR,
    version     VARCHAR,               -- tabpool version
    config      VARCHAR                -- the pool configuration, JSON
);
-- One row per batch run on a tab (a hedged batch: one row per replica it ran on).
CREATE TABLE executions (
    ts             TIMESTAMP NOT NULL,  -- when the batch finished
    run_id         VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    browser_kind   VARCHAR NOT NULL,
    backend        VARCHAR NOT NULL,
    tab            UBIGINT NOT NULL,
    batch_rows     INTEGER NOT NULL,    -- texts in the batch
    tokens         INTEGER NOT NULL,    -- real (unpadded) tokens in the batch
    latency_ms     DOUBLE NOT NULL,     -- tab round trip of the batch
    queue_ms       DOUBLE NOT NULL,     -- mean queue wait of its requests
    success        BOOLEAN NOT NULL,
    error_category VARCHAR,             -- connection | crash | timeout | device_lost | model_error | bad_input
    hedge          BOOLEAN NOT NULL     -- the duplicate run of a hedged batch
);
-- Tab lifecycle: launched (with its capabilities), launch_failed, retired, replaced.
CREATE TABLE tab_events (
    ts           TIMESTAMP NOT NULL,
    run_id       VARCHAR NOT NULL,
    tab          UBIGINT,
    browser_kind VARCHAR NOT NULL,
    event        VARCHAR NOT NULL,
    detail       VARCHAR,
    capabilities VARCHAR              -- JSON
);
CREATE TABLE breaker_transitions (
    ts           TIMESTAMP NOT NULL,
    run_id       VARCHAR NOT NULL,
    tab          UBIGINT NOT NULL,
    browser_kind VARCHAR NOT NULL,
    scope        VARCHAR NOT NULL,    -- 'tab', or the model of a (tab, model) breaker
    from_state   VARCHAR NOT NULL,
    to_state     VARCHAR NOT NULL,
    reason       VARCHAR
);
CREATE TABLE health_samples (
    ts                TIMESTAMP NOT NULL,
    run_id            VARCHAR NOT NULL,
    tab               UBIGINT NOT NULL,
    browser_kind      VARCHAR NOT NULL,
    health            UTINYINT NOT NULL,   -- 0..100
    breaker           VARCHAR NOT NULL,
    missed_heartbeats INTEGER NOT NULL,
    in_flight         INTEGER NOT NULL
);
CREATE TABLE scaling_decisions (
    ts           TIMESTAMP NOT NULL,
    run_id       VARCHAR NOT NULL,
    action       VARCHAR NOT NULL,    -- grow | shrink | hold | launch-failed | load-failed | coordinated
    browser_kind VARCHAR,
    tab          UBIGINT,
    tabs_after   INTEGER NOT NULL,
    reason       VARCHAR NOT NULL
);
CREATE TABLE recoveries (
    ts           TIMESTAMP NOT NULL,
    run_id       VARCHAR NOT NULL,
    tab          UBIGINT NOT NULL,
    browser_kind VARCHAR NOT NULL,
    category     VARCHAR NOT NULL,
    step         VARCHAR NOT NULL,    -- reload_page | restart_browser | reload_model | retired
    ok           BOOLEAN NOT NULL,
    ms           DOUBLE NOT NULL,
    detail       VARCHAR
);
"#,
    ),
    (
        2,
        r#"
-- What routing reads, and what people query first: per (model, kind, backend) outcomes.
CREATE VIEW backend_summary AS
SELECT model, browser_kind, backend,
       count(*) FILTER (WHERE success)                       AS ok,
       count(*) FILTER (WHERE NOT success)                   AS failed,
       avg(latency_ms / batch_rows) FILTER (WHERE success)   AS mean_ms_per_text,
       sum(batch_rows) FILTER (WHERE success)                AS texts,
       max(ts)                                               AS last_seen
FROM executions
GROUP BY ALL;
"#,
    ),
    (
        3,
        r#"
-- One row per generation stream through the pool (text generation models). A stream that lost
-- its replica mid-way and was replayed on another is still one row, with `replays` > 0 and the
-- tab that finished it.
CREATE TABLE generations (
    ts             TIMESTAMP NOT NULL,  -- when the stream ended
    run_id         VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    browser_kind   VARCHAR,             -- NULL when no replica ever took it
    backend        VARCHAR,
    tab            UBIGINT,
    prompt_tokens  INTEGER NOT NULL,
    generated      INTEGER NOT NULL,    -- tokens streamed to the client
    queue_ms       DOUBLE NOT NULL,     -- admission → placed on a replica
    ttft_ms        DOUBLE,              -- admission → first token (NULL: none)
    decode_tok_s   DOUBLE,              -- tokens after the first, per second after the first
    finish         VARCHAR NOT NULL,    -- stop | length | cancelled | failed
    replays        INTEGER NOT NULL,    -- replicas lost mid-stream and replayed elsewhere
    error_category VARCHAR
);
"#,
    ),
    (
        4,
        r#"
-- Prompt tokens of the stream's last leg whose KV rows came from its replica's prefix cache
-- (not prefilled again); 0 in rows written before. (DuckDB adds no column with NOT NULL.)
ALTER TABLE generations ADD COLUMN cached_tokens INTEGER DEFAULT 0;
"#,
    ),
];

/// The version a fresh database ends at.
pub fn latest() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}
