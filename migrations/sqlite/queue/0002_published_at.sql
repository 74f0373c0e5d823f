-- When each message was published (microseconds since the epoch): workers measure a task's
-- schedule-to-start latency from it, and the queue reports the age of its oldest message.
alter table messages add column published_at integer;
