//! Message templates (`services/notification/templates/`), compiled into the binary and rendered
//! with minijinja. HTML templates are autoescaped, so an order line cannot inject markup.

use std::sync::LazyLock;

use minijinja::{Environment, context};
use orderflow_workflows::{
    order::contracts::{Money, OrderSagaInput},
    returns::contracts::ReturnSagaInput,
};
use serde::Serialize;

/// The stored name of the order confirmation template.
pub const ORDER_CONFIRMATION: &str = "order_confirmation";

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        (
            "order_confirmation.subject.txt",
            include_str!("../templates/order_confirmation.subject.txt"),
        ),
        (
            "order_confirmation.txt",
            include_str!("../templates/order_confirmation.txt"),
        ),
        (
            "order_confirmation.html",
            include_str!("../templates/order_confirmation.html"),
        ),
        (
            "order_confirmation.sms.txt",
            include_str!("../templates/order_confirmation.sms.txt"),
        ),
        // The return saga's emails: one text each, short enough to live here.
        (
            "return_instructions.txt",
            "Hello,\n\nwe received your request to return order {{ order_ref }} ({{ total }}).\nPlease send the parcel back to our warehouse within 14 days; we refund you as soon as it arrives.\n",
        ),
        (
            "return_expired.txt",
            "Hello,\n\nyour return of order {{ order_ref }} has ended: we did not receive the parcel in time, or could not refund it. The order stands; reply to this email if you think this is a mistake.\n",
        ),
        (
            "return_refunded.txt",
            "Hello,\n\nyour parcel for order {{ order_ref }} arrived. We refunded {{ total }} to your card.\n",
        ),
        (
            "return.html",
            "<p>{% for line in lines %}{{ line }}<br>{% endfor %}</p>\n",
        ),
    ] {
        env.add_template(name, source)
            .expect("the bundled templates compile");
    }
    env
});

/// Why a message could not be rendered (a template bug: no retry fixes it).
#[derive(Debug, thiserror::Error)]
#[error("rendering template `{template}`: {source}")]
pub struct RenderError {
    template: String,
    source: minijinja::Error,
}

/// One message in every form a channel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub template: &'static str,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The short form for SMS and push.
    pub short: String,
}

#[derive(Serialize)]
struct Line<'a> {
    product_id: &'a str,
    quantity: u32,
}

/// The order confirmation for a saga input.
pub fn order_confirmation(input: &OrderSagaInput) -> Result<Rendered, RenderError> {
    let order_id = input.order_id.to_string();
    let ctx = context! {
        order_id => &order_id,
        // The id's last 8 hex digits: enough for a subject line and a phone screen.
        order_ref => order_id[order_id.len() - 8..].to_uppercase(),
        items => input.items.iter().map(|i| Line { product_id: &i.product_id, quantity: i.quantity }).collect::<Vec<_>>(),
        total => format_money(&input.total),
    };
    let render = |name: &str| {
        ENV.get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|source| RenderError {
                template: name.to_owned(),
                source,
            })
    };
    Ok(Rendered {
        template: ORDER_CONFIRMATION,
        subject: render("order_confirmation.subject.txt")?.trim().to_owned(),
        text: render("order_confirmation.txt")?,
        html: render("order_confirmation.html")?,
        short: render("order_confirmation.sms.txt")?.trim().to_owned(),
    })
}

/// The return saga's three emails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnMessage {
    Instructions,
    Expired,
    Refunded,
}

impl ReturnMessage {
    /// The stored template name.
    pub fn template(self) -> &'static str {
        match self {
            Self::Instructions => "return_instructions",
            Self::Expired => "return_expired",
            Self::Refunded => "return_refunded",
        }
    }
}

/// One of the return saga's emails for its input.
pub fn return_message(
    message: ReturnMessage,
    input: &ReturnSagaInput,
) -> Result<Rendered, RenderError> {
    let order_id = input.order_id.to_string();
    let order_ref = order_id[order_id.len() - 8..].to_uppercase();
    let total = format_money(&input.total);
    let render = |name: &str, ctx: minijinja::Value| {
        ENV.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|source| RenderError {
                template: name.to_owned(),
                source,
            })
    };
    let template = message.template();
    let text = render(
        &format!("{template}.txt"),
        context! { order_ref => &order_ref, total => &total },
    )?;
    let html = render(
        "return.html",
        context! { lines => text.lines().collect::<Vec<_>>() },
    )?;
    let (subject, short) = match message {
        ReturnMessage::Instructions => (
            format!("Your return of order {order_ref}"),
            format!("OrderFlow: send order {order_ref} back within 14 days."),
        ),
        ReturnMessage::Expired => (
            format!("Your return of order {order_ref} has ended"),
            format!("OrderFlow: the return of order {order_ref} has ended."),
        ),
        ReturnMessage::Refunded => (
            format!("We refunded order {order_ref}"),
            format!("OrderFlow: order {order_ref} refunded, {total}."),
        ),
    };
    Ok(Rendered {
        template,
        subject,
        text,
        html,
        short,
    })
}

/// `2599 EUR` as `25.99 EUR`, with the currency's number of decimals (ISO 4217 minor units).
pub fn format_money(m: &Money) -> String {
    let decimals: u32 = match m.currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if m.amount_minor < 0 { "-" } else { "" };
    let abs = m.amount_minor.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{abs} {}", m.currency);
    }
    let unit = 10u64.pow(decimals);
    format!(
        "{sign}{}.{:0width$} {}",
        abs / unit,
        abs % unit,
        m.currency,
        width = decimals as usize
    )
}

#[cfg(test)]
mod tests {
    use orderflow_workflows::order::contracts::OrderItem;
    use uuid::Uuid;

    use super::*;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money {
            amount_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn money_uses_the_currency_decimals() {
        assert_eq!(format_money(&money(2599, "EUR")), "25.99 EUR");
        assert_eq!(format_money(&money(5, "USD")), "0.05 USD");
        assert_eq!(format_money(&money(1500, "JPY")), "1500 JPY");
        assert_eq!(format_money(&money(1234, "KWD")), "1.234 KWD");
        assert_eq!(format_money(&money(-250, "EUR")), "-2.50 EUR");
    }

    #[test]
    fn the_confirmation_names_the_order_and_escapes_html() {
        let input = OrderSagaInput {
            order_id: Uuid::parse_str("0195f0a4-0000-7000-8000-000000000042").unwrap(),
            user_id: Uuid::nil(),
            items: vec![OrderItem {
                product_id: "<b>mug</b>".into(),
                quantity: 2,
            }],
            total: money(2599, "EUR"),
            payment_method: "pm_card_visa".into(),
            email: "buyer@example.com".into(),
        };
        let r = order_confirmation(&input).unwrap();
        assert_eq!(r.subject, "Your order 00000042 is confirmed");
        assert!(r.text.contains("2 x <b>mug</b>"), "{}", r.text);
        assert!(r.text.contains("Total: 25.99 EUR"));
        assert!(r.html.contains("&lt;b&gt;mug&lt;&#x2f;b&gt;"), "{}", r.html);
        assert_eq!(
            r.short,
            "OrderFlow: order 00000042 confirmed, total 25.99 EUR."
        );
    }

    #[test]
    fn the_return_emails_name_the_order_and_the_amount() {
        let input = ReturnSagaInput {
            order_id: Uuid::parse_str("0195f0a4-0000-7000-8000-000000000042").unwrap(),
            order_workflow_id: Uuid::nil(),
            user_id: Uuid::nil(),
            items: vec![],
            total: money(2599, "EUR"),
            email: "buyer@example.com".into(),
        };
        let r = return_message(ReturnMessage::Refunded, &input).unwrap();
        assert_eq!(r.template, "return_refunded");
        assert_eq!(r.subject, "We refunded order 00000042");
        assert!(r.text.contains("We refunded 25.99 EUR"), "{}", r.text);
        let r = return_message(ReturnMessage::Instructions, &input).unwrap();
        assert!(r.text.contains("within 14 days"), "{}", r.text);
        assert!(r.html.starts_with("<p>Hello,<br>"), "{}", r.html);
        let r = return_message(ReturnMessage::Expired, &input).unwrap();
        assert!(r.text.contains("has ended"), "{}", r.text);
    }
}
