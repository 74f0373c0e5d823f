//! The notification service's domain words, checked where they are made.

use serde::Serialize;

/// How a message reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    /// The stored name (the `channel` columns' check constraints list them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Email, Self::Sms, Self::Push]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Where one message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Not delivered yet; a transient failure leaves it here for the next attempt.
    Pending,
    /// The provider took it.
    Sent,
    /// The provider refused it for good.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Sent, Self::Failed]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Why a contact detail was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContact {
    #[error("a phone number is in E.164 form: `+`, country code and number, 8 to 16 characters")]
    Phone,
    #[error("a push token is 1 to 4096 printable ASCII characters")]
    PushToken,
}

/// A phone number in E.164 form.
pub fn parse_phone(s: &str) -> Result<String, InvalidContact> {
    let digits = s.strip_prefix('+').ok_or(InvalidContact::Phone)?;
    let ok = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| s.to_owned()).ok_or(InvalidContact::Phone)
}

/// A device's push token.
pub fn parse_push_token(s: &str) -> Result<String, InvalidContact> {
    let ok = (1..=4096).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned()).ok_or(InvalidContact::PushToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_e164() {
        assert!(parse_phone("+4915112345678").is_ok());
        for bad in [
            "4915112345678",
            "+0151123456",
            "+49 151 123",
            "+12345",
            "+1234567890123456",
        ] {
            assert_eq!(parse_phone(bad), Err(InvalidContact::Phone), "{bad}");
        }
    }

    #[test]
    fn push_tokens_are_printable() {
        assert!(parse_push_token("abc:DEF-123").is_ok());
        assert!(parse_push_token("").is_err());
        assert!(parse_push_token("a b").is_err());
    }
}
