-- The schema as telehealth created it before schema versions existed (PRAGMA user_version 0),
-- copied statement for statement from main at 81bbee9: telehealth/store.py SCHEMA,
-- telehealth/audit.py _SCHEMA, telehealth/accounts.py SCHEMA, signaling/history.py SCHEMA.
-- tests/test_upgrade.py builds a database with it. Do not edit: it is history.

-- telehealth/store.py
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    starts_at REAL,
    started_at REAL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS people (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms(id),
    role TEXT NOT NULL CHECK (role IN ('therapist', 'partner')),
    ordinal INTEGER NOT NULL,
    name BLOB,
    phone BLOB
);
CREATE INDEX IF NOT EXISTS people_room ON people(room_id);
CREATE TABLE IF NOT EXISTS links (
    token_hash TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES people(id),
    room_id TEXT NOT NULL REFERENCES rooms(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS links_person ON links(person_id);
-- The disruption ledger of a session: opaque ids, causes, steps and times, no names.
CREATE TABLE IF NOT EXISTS ledgers (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    rows TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- telehealth/audit.py
CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        room_id TEXT,
        person_id TEXT,
        actor TEXT,
        detail TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS audit_head (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        count INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
INSERT OR IGNORE INTO audit_head (only, count, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- telehealth/accounts.py
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('therapist', 'ops')),
    display_name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until REAL
);
CREATE TABLE IF NOT EXISTS user_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC'
);
CREATE INDEX IF NOT EXISTS user_sessions_user ON user_sessions(user_id);
CREATE TABLE IF NOT EXISTS room_owners (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE
);

-- signaling/history.py
CREATE TABLE IF NOT EXISTS quality_history (
    room_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    session_seconds REAL NOT NULL,
    usable_seconds REAL NOT NULL,
    -- {"links": {"<id>|<id>": [[t, code], ...]}}: one entry per change of a link's code.
    series TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quality_history_ended ON quality_history(ended_at);
