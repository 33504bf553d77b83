-- Multipart uploads under way (the store's own upload ID beside the engine's), and the model files
-- teams register (their bytes stay in the files store under models/<team>/...).
CREATE TABLE multipart_uploads (
    id text COLLATE "C" PRIMARY KEY,
    team text COLLATE "C" NOT NULL,
    store text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    native_id text NOT NULL,  -- the upload's ID in the store
    file_size bigint NOT NULL,
    part_size bigint NOT NULL,
    part_count integer NOT NULL,
    created double precision NOT NULL,
    expires double precision NOT NULL,  -- when the sweeper aborts it, if it is not complete
    UNIQUE (store, key)
);
CREATE INDEX multipart_uploads_expires ON multipart_uploads (expires);
CREATE TABLE models (
    id text COLLATE "C" PRIMARY KEY,
    team text COLLATE "C" NOT NULL,
    display_name text NOT NULL,
    model_type text NOT NULL,
    store text COLLATE "C" NOT NULL,
    storage_key text COLLATE "C" NOT NULL,
    file_size bigint NOT NULL,
    file_hash text NOT NULL,  -- sha256:<hex>, checked against the stored bytes
    model_path text NOT NULL,
    status text NOT NULL,  -- active | disabled
    created double precision NOT NULL,
    updated double precision NOT NULL,
    UNIQUE (store, storage_key)
);
CREATE INDEX models_team ON models (team, status, id);
