-- Outbox rows may now target an exchange (workflow lifecycle events on the topic exchange) as
-- well as a task queue through the default exchange (''), which every existing row used.
alter table outbox add column exchange text not null default '';
