-- Devices waiting to be paired (identity/pairing.py): a row from start to the poll that collects the
-- keys, or until swept a while after it expires. The device code is kept only as its hash.
CREATE TABLE pairings (
    device_hash text COLLATE "C" PRIMARY KEY,  -- SHA-256 of the device code
    user_code text COLLATE "C" NOT NULL UNIQUE,
    created double precision NOT NULL,
    expires double precision NOT NULL,
    "interval" integer NOT NULL,
    last_poll double precision,
    team text COLLATE "C",  -- team, user, device_name, confirmed: set when a member confirms it
    "user" text COLLATE "C",
    device_name text,
    confirmed double precision
);
CREATE INDEX pairings_expires ON pairings (expires);
