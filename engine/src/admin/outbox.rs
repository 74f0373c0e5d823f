//! The Emails page: what the platform "sent" into an outbox instead of a mail server, for a
//! developer to read (`orderflow dev`, where the notification service has no SMTP). The engine
//! does not know the notification service; whoever assembles the process hands the admin UI an
//! [`Outbox`] to read ([`super::AdminConfig::outbox`]), and without one there is no such page.

use std::{fmt, future::Future, pin::Pin};

use chrono::{DateTime, Utc};

/// One message in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    pub to: String,
    pub subject: String,
    pub at: DateTime<Utc>,
    /// The whole message as it would have gone out (headers and MIME parts).
    pub raw: String,
}

/// Where the admin UI reads the outbox.
pub trait Outbox: Send + Sync + fmt::Debug {
    /// The newest `limit` messages, newest first.
    fn recent(
        &self,
        limit: i64,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Vec<OutboxEmail>>> + Send + '_>>;
}

/// The `Subject:` header of a raw message (unfolded), or `""`.
pub fn subject_of(raw: &str) -> String {
    let headers = raw.split("\r\n\r\n").next().unwrap_or(raw);
    let mut lines = headers.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if let Some(value) = line.strip_prefix("Subject:") {
            let mut subject = value.trim().to_owned();
            // A folded header continues on lines that start with white space.
            while let Some(next) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
                subject.push(' ');
                subject.push_str(next.trim());
            }
            return subject;
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::subject_of;

    #[test]
    fn the_subject_is_read_from_the_headers_only() {
        let raw = "From: a\r\nSubject: Your order\r\n  is confirmed\r\nTo: b\r\n\r\nSubject: body";
        assert_eq!(subject_of(raw), "Your order is confirmed");
        assert_eq!(subject_of("From: a\r\n\r\nSubject: not a header"), "");
    }
}
