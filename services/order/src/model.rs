//! Checked order input and the order's states. Each input type's only constructor validates,
//! so a [`NewOrder`] is known good before anything is stored.

use serde::{Deserialize, Serialize};

/// Why an input was refused: the field (a path like `items[1].quantity`) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        detail: detail.into(),
    }
}

/// Most lines in one order, and most units of one line.
pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i64 = 1000;

/// `POST /orders` as sent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub items: Vec<ItemRequest>,
    pub shipping_address: ShippingAddress,
    /// A Stripe payment method (`pm_card_visa` in test mode).
    pub payment_method: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    pub product_id: String,
    /// Signed so that `-1` is answered "must be at least 1", not a type error.
    pub quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
}

/// One checked line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub product_id: String,
    pub quantity: u32,
}

/// A checked order request.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub lines: Vec<Line>,
    pub shipping_address: ShippingAddress,
    pub payment_method: String,
}

/// The inventory's product id rule: alphanumeric first, then alphanumerics, `.`, `_`, `-`; at
/// most 64 characters. Checked here too so a malformed id is the caller's 400, not a failed call.
pub fn valid_product_id(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String, Invalid> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

impl ShippingAddress {
    fn checked(self) -> Result<Self, Invalid> {
        let f = |name: &str| format!("shipping_address.{name}");
        let country = text(&f("country"), &self.country, 2, true)?.to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid(
                f("country"),
                "must be a two-letter ISO 3166 code like DE",
            ));
        }
        Ok(Self {
            name: text(&f("name"), &self.name, 200, true)?,
            line1: text(&f("line1"), &self.line1, 200, true)?,
            line2: self
                .line2
                .map(|l| text(&f("line2"), &l, 200, false))
                .transpose()?
                .filter(|l| !l.is_empty()),
            city: text(&f("city"), &self.city, 100, true)?,
            postal_code: text(&f("postal_code"), &self.postal_code, 20, true)?,
            country,
        })
    }
}

impl NewOrder {
    pub fn parse(req: OrderRequest) -> Result<Self, Invalid> {
        if req.items.is_empty() {
            return Err(invalid("items", "an order needs at least one item"));
        }
        if req.items.len() > MAX_LINES {
            return Err(invalid(
                "items",
                format!("at most {MAX_LINES} lines per order"),
            ));
        }
        let mut lines: Vec<Line> = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.into_iter().enumerate() {
            if !valid_product_id(&item.product_id) {
                return Err(invalid(
                    format!("items[{i}].product_id"),
                    format!("`{}` is not a product id", item.product_id),
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(invalid(
                    format!("items[{i}].quantity"),
                    format!("must be from 1 to {MAX_QUANTITY}"),
                ));
            }
            // One line per product keeps reservations and totals unambiguous.
            if lines.iter().any(|l| l.product_id == item.product_id) {
                return Err(invalid(
                    format!("items[{i}].product_id"),
                    format!("`{}` appears twice; add the quantities", item.product_id),
                ));
            }
            lines.push(Line {
                product_id: item.product_id,
                quantity: u32::try_from(item.quantity).unwrap_or(1),
            });
        }
        let payment_method = text("payment_method", &req.payment_method, 255, true)?;
        Ok(Self {
            lines,
            shipping_address: req.shipping_address.checked()?,
            payment_method,
        })
    }
}

/// Where an order is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stored; its saga is starting or running.
    Pending,
    /// The saga passed its pivot: stock reserved, payment taken, the order stands.
    Confirmed,
    /// The saga compensated or was cancelled; `cancel_code` says why.
    Cancelled,
}

/// Why an order was cancelled.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CancelCode {
    OutOfStock,
    PaymentDeclined,
    CancelledByUser,
    CancelledByOperator,
    /// Anything else that made the saga give up (a step that kept failing).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(items: serde_json::Value) -> OrderRequest {
        serde_json::from_value(serde_json::json!({
            "items": items,
            "shipping_address": {"name": "Ann", "line1": "1 Main St", "city": "Berlin",
                                  "postal_code": "10115", "country": "de"},
            "payment_method": "pm_card_visa",
        }))
        .unwrap()
    }

    fn field(items: serde_json::Value) -> String {
        NewOrder::parse(req(items)).unwrap_err().field
    }

    #[test]
    fn items_are_checked_line_by_line() {
        assert_eq!(field(serde_json::json!([])), "items");
        assert_eq!(
            field(serde_json::json!([{"product_id": "a", "quantity": 0}])),
            "items[0].quantity"
        );
        assert_eq!(
            field(serde_json::json!([{"product_id": "a", "quantity": 1},
                                     {"product_id": "b", "quantity": -2}])),
            "items[1].quantity"
        );
        assert_eq!(
            field(serde_json::json!([{"product_id": "bad id", "quantity": 1}])),
            "items[0].product_id"
        );
        assert_eq!(
            field(serde_json::json!([{"product_id": "a", "quantity": 1},
                                     {"product_id": "a", "quantity": 1}])),
            "items[1].product_id"
        );
        let ok = NewOrder::parse(req(
            serde_json::json!([{"product_id": "sku-1", "quantity": 2}]),
        ))
        .unwrap();
        assert_eq!(ok.shipping_address.country, "DE");
    }
}
