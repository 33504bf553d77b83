-- Multipart uploads under way (the store's own upload ID beside the engine's), and the model files
-- teams register (their bytes stay in the files store under models/<team>/...).
CREATE TABLE multipart_uploads (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    native_id TEXT NOT NULL,  -- the upload's ID in the store
    file_size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    part_count INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,  -- when the sweeper aborts it, if it is not complete
    UNIQUE (store, key)
);
CREATE INDEX idx_multipart_uploads_expires ON multipart_uploads (expires);
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    display_name TEXT NOT NULL,
    model_type TEXT NOT NULL,
    store TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    file_hash TEXT NOT NULL,  -- sha256:<hex>, checked against the stored bytes
    model_path TEXT NOT NULL,
    status TEXT NOT NULL,  -- active | disabled
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (store, storage_key)
);
CREATE INDEX idx_models_team ON models (team, status, id);
