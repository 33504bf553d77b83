-- Devices waiting to be paired (identity/pairing.py): a row from start to the poll that collects the
-- keys, or until swept a while after it expires. The device code is kept only as its hash.
CREATE TABLE pairings (
    device_hash TEXT PRIMARY KEY,  -- SHA-256 of the device code
    user_code TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    interval INTEGER NOT NULL,
    last_poll REAL,
    team TEXT,  -- team, user, device_name, confirmed: set when a member confirms it
    user TEXT,
    device_name TEXT,
    confirmed REAL
);
CREATE INDEX idx_pairings_expires ON pairings (expires);
