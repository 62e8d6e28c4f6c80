-- The embedded log's tables, created when missing each time the log opens.
-- Changing a table here changes the file format of every data directory.

-- Every event, as its CloudEvents JSON, at its position (never reused:
-- AUTOINCREMENT), read per tenant in order through events_by_tenant.
-- emitted_by is the plugin of the tenant whose commit appended the event
-- (NULL for a published event); a file from before the column has it added
-- when it opens (see `migrate` in mod.rs), NULL for its older events.
-- dedupe is the published event's ingest key: its (tenant, source, id),
-- each preceded by its length (see `ingest_key` in mod.rs), unique among
-- the events, so that an append is one insert and a
-- duplicate is the insert's conflict. NULL for emitted events (not
-- de-duplicated), for an event whose key a later copy took over after
-- the duplicate window, and for events of a file from before the column,
-- whose keys stay in ingest_keys.
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    emitted_by TEXT,
    dedupe BLOB
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_dedupe ON events (dedupe)
    WHERE dedupe IS NOT NULL;
-- A plugin's emitted events, newest first; published events (most of the
-- log) are not in it.
CREATE INDEX IF NOT EXISTS events_by_emitter ON events (tenant, emitted_by, seq)
    WHERE emitted_by IS NOT NULL;
-- Event ingest keys kept apart from their events: the keys of events
-- retention deleted within the duplicate window (they must still refuse
-- a duplicate), and every key of a file from before events.dedupe. An
-- append of one of these keys within the window is a duplicate; the rows
-- go once they are older than the window. The writer looks here only
-- while a row may still be within the window.
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, id)
) WITHOUT ROWID;
-- The events each plugin gave up on, with their own copy of the event and
-- the failed attempts as JSON.
CREATE TABLE IF NOT EXISTS dead_letters (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    attempts TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
-- Each plugin's key-value state, written in the commit of its cursor.
CREATE TABLE IF NOT EXISTS state (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tenant, plugin, key)
) WITHOUT ROWID;
-- Dead letters an operator asked to deliver again.
CREATE TABLE IF NOT EXISTS redrives (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
-- Quarantined plugins, so that another process can see and lift them.
CREATE TABLE IF NOT EXISTS quarantines (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
-- Events past its cursor that a plugin finished while an earlier event of
-- another partition key waits for its retry.
CREATE TABLE IF NOT EXISTS ahead (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
-- Each plugin's position: the last event it is finished with.
CREATE TABLE IF NOT EXISTS cursors (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
-- The one-row transaction with which the writer probes whether the log can
-- be written again.
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
