//! The inventory's domain types. Each constructor checks its value, so a `Sku` or a `Price` in
//! hand is always valid (parse, don't validate); the database's check constraints say the same.

use std::fmt;

use chrono::{DateTime, Utc};
use orderflow_workflows::order::contracts::Money;
use serde::Serialize;

/// Why a value is not a valid product field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error(
        "a product id is 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    Sku,
    #[error("a currency is an ISO 4217 code of three capital letters")]
    Currency,
    #[error("a price is a non-negative amount in minor units")]
    NegativePrice,
    #[error("a name is 1 to 200 characters")]
    Name,
    #[error("stock is a count from 0 to {max}", max = i32::MAX)]
    Stock,
}

/// A product id (stock keeping unit), the `product_id` of the order saga's items.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && s.len() <= 64 {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue::Sku)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A price: integer minor units and an ISO currency, never a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    amount_minor: i64,
    currency: String,
}

impl Price {
    pub fn new(amount_minor: i64, currency: &str) -> Result<Self, InvalidValue> {
        if amount_minor < 0 {
            return Err(InvalidValue::NegativePrice);
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(InvalidValue::Currency);
        }
        Ok(Self {
            amount_minor,
            currency: currency.to_owned(),
        })
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn to_money(&self) -> Money {
        Money {
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
        }
    }
}

/// A product name: 1 to 200 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let s = s.trim();
        if s.is_empty() || s.chars().count() > 200 {
            return Err(InvalidValue::Name);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A count of units; Postgres stores it as `integer`.
pub fn stock_count(n: i64) -> Result<i32, InvalidValue> {
    i32::try_from(n)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or(InvalidValue::Stock)
}

/// Where a product's units are. `on_hand + reserved + sold` only changes by an admin's stock
/// update; reservations and their settlement move units between the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Stock {
    /// Free to reserve.
    pub on_hand: i32,
    /// Held by sagas that have not settled.
    pub reserved: i32,
    /// Taken by completed sagas.
    pub sold: i32,
}

/// A product as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub stock: Stock,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What happened to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Holding its units until its saga settles or it expires.
    Reserved,
    /// Its saga completed: the units are sold.
    Committed,
    /// Its units went back on hand (compensation, expiry, an unsuccessful saga).
    Released,
}

impl ReservationStatus {
    /// The stored name (the `status` column's check constraint lists them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Reserved, Self::Committed, Self::Released]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_checked() {
        assert!(Sku::parse("sku-1").is_ok());
        assert!(Sku::parse("A.b_c-9").is_ok());
        for bad in ["", "-x", "a b", "é", &"x".repeat(65)] {
            assert_eq!(Sku::parse(bad), Err(InvalidValue::Sku), "{bad:?}");
        }
    }

    #[test]
    fn prices_are_minor_units_with_a_currency() {
        assert!(Price::new(0, "EUR").is_ok());
        assert_eq!(Price::new(-1, "EUR"), Err(InvalidValue::NegativePrice));
        for bad in ["eur", "EU", "EURO", "E1R"] {
            assert_eq!(Price::new(1, bad), Err(InvalidValue::Currency), "{bad}");
        }
    }

    #[test]
    fn names_and_counts_are_bounded() {
        assert_eq!(ProductName::parse("  Mug ").unwrap().as_str(), "Mug");
        assert_eq!(ProductName::parse("   "), Err(InvalidValue::Name));
        assert_eq!(stock_count(-1), Err(InvalidValue::Stock));
        assert_eq!(
            stock_count(i64::from(i32::MAX) + 1),
            Err(InvalidValue::Stock)
        );
        assert_eq!(stock_count(7), Ok(7));
    }
}
