-- Users of the shop. Passwords are stored only as argon2id PHC strings (algorithm, parameters and
-- salt inside), so parameters can be raised later without a schema change.
create table users (
    id            uuid primary key,
    -- Stored as given after trimming; uniqueness is case-insensitive (see the index below) because
    -- mail providers treat the local part case-insensitively in practice.
    email         text not null,
    password_hash text not null,
    name          text not null default '',
    role          text not null default 'customer' check (role in ('customer', 'admin')),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

create unique index users_email_key on users (lower(email));
