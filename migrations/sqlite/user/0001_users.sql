-- The user service on SQLite (`orderflow dev`): the `users` table of migrations/user/, plus the
-- refresh sessions and failed-login counters that Redis holds when the service runs on Postgres.
-- Differences, and why:
-- * Ids are 16-byte blobs and times integer microseconds since the epoch, as in the engine's
--   SQLite tables: blobs sort like the UUIDs, and integers compare correctly where sqlx's text
--   timestamps (with a varying number of fractional digits) would not.
-- * SQLite's lower() folds ASCII letters only, so two addresses differing only in the case of a
--   non-ASCII letter are two accounts here. Addresses are ASCII in practice.
create table users (
    id            blob primary key,
    email         text not null,
    password_hash text not null,
    name          text not null default '',
    role          text not null default 'customer' check (role in ('customer', 'admin')),
    created_at    integer not null,
    updated_at    integer not null
);

-- Named as on Postgres: the store recognises a taken email by this name.
create unique index users_email_key on users (lower(email));

-- One row per refresh session. Only the SHA-256 of the token is kept, so a copy of the file
-- cannot be replayed as tokens. Expiry is checked on read (SQLite has no TTL); expired rows are
-- removed when their user opens a new session. Not tied to `users` by a foreign key, like the
-- Redis keys it stands in for: users are never deleted.
create table sessions (
    token_hash text primary key,
    user_id    blob not null,
    expires_at integer not null
);
create index sessions_user on sessions (user_id);

-- Failed logins per email (lowercased) in a fixed window that starts at the first failure.
create table login_failures (
    email          text primary key,
    failures       integer not null,
    window_ends_at integer not null
);
