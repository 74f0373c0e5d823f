-- As migrations/payment/4030_webhook_retention.sql: the webhook log's retention finds the oldest
-- events by this index.
create index stripe_events_received_at on stripe_events (received_at);
