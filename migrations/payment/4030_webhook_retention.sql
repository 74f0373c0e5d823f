-- Retention of the webhook log (services/payment/src/purge.rs): events received before the
-- cutoff are deleted oldest first, which this index finds without reading the whole table.
-- Payments themselves are business records and are never purged.
create index stripe_events_received_at on stripe_events (received_at);
