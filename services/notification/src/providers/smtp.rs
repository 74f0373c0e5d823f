//! Email over SMTP with lettre: a pooled async transport, STARTTLS or implicit TLS as the URL
//! says (`smtp://host:25`, `smtp://host:587?tls=required`, `smtps://user:pass@host`).

use std::time::Duration;

use async_trait::async_trait;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, header::ContentType},
};
use serde_json::json;

use super::{Delivery, DeliveryError, Email, EmailProvider};

/// Why the SMTP provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error("SMTP URL: {0}")]
    Url(#[from] lettre::transport::smtp::Error),
    #[error("sender address `{0}`: {1}")]
    From(String, lettre::address::AddressError),
}

/// Sends through one SMTP server.
#[derive(Clone)]
pub struct SmtpEmail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport holds the credentials; the sender is enough to tell providers apart.
        f.debug_struct("SmtpEmail")
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl SmtpEmail {
    /// A provider for the server at `url`, sending as `from` (`Shop <orders@shop.example>`);
    /// one SMTP conversation may take at most `timeout`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, SmtpConfigError> {
        let from = parse_from(from)?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
            .timeout(Some(timeout))
            .build();
        Ok(Self { transport, from })
    }
}

pub(crate) fn parse_from(from: &str) -> Result<Mailbox, SmtpConfigError> {
    from.parse()
        .map_err(|e| SmtpConfigError::From(from.to_owned(), e))
}

/// The RFC 5322 message for `email`: text and, if given, HTML alternatives.
pub(crate) fn build_message(from: &Mailbox, email: &Email) -> Result<Message, DeliveryError> {
    let to: Mailbox = email.to.parse().map_err(|e| {
        DeliveryError::Permanent(format!("recipient `{}` is not an address: {e}", email.to))
    })?;
    let domain = from.email.domain().to_owned();
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(&email.subject)
        .message_id(Some(format!("<{}@{domain}>", email.id)));
    let built = match &email.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            html.clone(),
        )),
        None => builder
            .header(ContentType::TEXT_PLAIN)
            .body(email.text.clone()),
    };
    built.map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))
}

#[async_trait]
impl EmailProvider for SmtpEmail {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, email: &Email) -> Result<Delivery, DeliveryError> {
        let message = build_message(&self.from, email)?;
        match self.transport.send(message).await {
            Ok(res) => {
                let reply: Vec<&str> = res.message().collect();
                Ok(Delivery {
                    // Servers usually answer `250 2.0.0 Ok: queued as <id>`.
                    provider_message_id: reply.first().map(|s| (*s).to_owned()),
                    detail: json!({ "code": res.code().to_string(), "reply": reply }),
                })
            }
            // A 5xx reply means this message will never be accepted as it is; anything else
            // (4xx, connection refused, timeout, TLS trouble) may pass on a later attempt. But
            // 503, "bad sequence of commands", is about our connection, not the message: a
            // pooled connection left mid-conversation by a cancelled send (the worker lost its
            // broker connection) answers the next MAIL with `503 nested MAIL command`. lettre
            // drops a connection after an error, so the next attempt gets a clean one.
            Err(e) if e.is_permanent() && !bad_sequence(&e) => {
                Err(DeliveryError::Permanent(e.to_string()))
            }
            Err(e) => Err(DeliveryError::Transient(e.to_string())),
        }
    }
}

/// Whether the server refused a command for coming out of order (503).
fn bad_sequence(e: &lettre::transport::smtp::Error) -> bool {
    e.status().is_some_and(|code| code.to_string() == "503")
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::TcpListener,
    };
    use uuid::Uuid;

    use super::*;

    /// An SMTP server that answers MAIL with `reply`, as a server does to a connection some
    /// earlier conversation left mid-transaction.
    async fn server_answering_mail_with(reply: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 test ESMTP\r\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                    "EHLO" | "HELO" => "250 test\r\n",
                    "MAIL" => reply,
                    "QUIT" => "221 bye\r\n",
                    _ => "250 ok\r\n",
                };
                if write.write_all(answer.as_bytes()).await.is_err() || line.starts_with("QUIT") {
                    break;
                }
            }
        });
        url
    }

    async fn send_through(url: &str) -> Result<Delivery, DeliveryError> {
        let smtp = SmtpEmail::new(url, "Shop <orders@shop.example>", Duration::from_secs(5))
            .expect("a valid provider");
        smtp.send(&Email {
            id: Uuid::new_v4(),
            to: "ann@example.com".into(),
            subject: "Your order".into(),
            text: "Thanks".into(),
            html: None,
        })
        .await
    }

    #[tokio::test]
    async fn a_bad_sequence_reply_is_retried_not_given_up() {
        let url = server_answering_mail_with("503 5.5.1 Error: nested MAIL command\r\n").await;
        let err = send_through(&url).await.unwrap_err();
        assert!(matches!(err, DeliveryError::Transient(_)), "{err:?}");
    }

    #[tokio::test]
    async fn another_permanent_reply_is_given_up() {
        let url = server_answering_mail_with("550 5.7.1 sender rejected\r\n").await;
        let err = send_through(&url).await.unwrap_err();
        assert!(matches!(err, DeliveryError::Permanent(_)), "{err:?}");
    }
}
