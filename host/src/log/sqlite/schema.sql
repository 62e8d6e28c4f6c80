-- The embedded log's tables, created when missing each time the log opens.
-- Changing a table here changes the file format of every data directory.

CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant, seq);
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    attempts TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tenant, plugin, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redrives (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantines (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ahead (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
