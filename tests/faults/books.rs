//! The books after a scenario, read from where each truth lives: the order service's and the
//! inventory's own databases, the engine's workflows, the Stripe sandbox's ledger and the SMTP
//! server's inbox. Every difference is a finding; the scenario fails on any.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    time::Duration,
};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    shop::{COMMON, Placed, SCARCE},
    system::{Service, System},
};

/// How long the system gets to settle once the faults stop (retries back off up to 30 s and a
/// lost attempt times out after 30 s).
fn settle_within() -> Duration {
    Duration::from_secs(
        std::env::var("FAULTS_SETTLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240),
    )
}

/// What a scenario prints, and `docs/reliability.md` records.
#[derive(Debug, Default)]
pub struct Figures {
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: BTreeMap<String, usize>,
    /// Orders whose customer asked to cancel them right after placing them.
    pub cancel_asked: usize,
    pub faults: Vec<String>,
    pub charged_minor: i64,
    pub refunded_minor: i64,
    pub emails: usize,
    /// Emails the SMTP server received again under a Message-ID it already had.
    pub resent: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub problems: Vec<String>,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cancelled: usize = self.cancelled.values().sum();
        writeln!(
            f,
            "orders {}: confirmed {}, cancelled {} {:?} (customers asked to cancel {})",
            self.orders, self.confirmed, cancelled, self.cancelled, self.cancel_asked
        )?;
        writeln!(
            f,
            "faults injected {}: {}",
            self.faults.len(),
            self.faults.join("; ")
        )?;
        writeln!(
            f,
            "stripe: charged {} refunded {} (net {}); emails {} ({} resent with their Message-ID)",
            self.charged_minor,
            self.refunded_minor,
            self.charged_minor - self.refunded_minor,
            self.emails,
            self.resent
        )?;
        write!(f, "lost {}, duplicated {}", self.lost, self.duplicated)?;
        for p in &self.problems {
            write!(f, "\n  PROBLEM: {p}")?;
        }
        Ok(())
    }
}

struct Order {
    status: String,
    saga_status: Option<String>,
    total: i64,
    items: Vec<(String, i64)>,
    workflow_id: Option<Uuid>,
    cancel_code: Option<String>,
}

/// id, status, saga status, total, items, workflow id, cancel code.
type OrderRow = (
    Uuid,
    String,
    Option<String>,
    i64,
    Value,
    Option<Uuid>,
    Option<String>,
);

async fn orders(sys: &System) -> anyhow::Result<HashMap<Uuid, Order>> {
    let db = sys.service_db(Service::Order)?;
    let rows: Vec<OrderRow> = sqlx::query_as(
        "select id, status, saga_status, total_minor, items, workflow_id, cancel_code
             from orders",
    )
    .fetch_all(&db)
    .await?;
    db.close().await;
    Ok(rows
        .into_iter()
        .map(
            |(id, status, saga_status, total, items, workflow_id, cancel_code)| {
                let items = items
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| {
                        (
                            l["product_id"].as_str().unwrap_or_default().to_owned(),
                            l["quantity"].as_i64().unwrap_or_default(),
                        )
                    })
                    .collect();
                (
                    id,
                    Order {
                        status,
                        saga_status,
                        total,
                        items,
                        workflow_id,
                        cancel_code,
                    },
                )
            },
        )
        .collect())
}

/// Everything that still moves: orders without an end, sagas running, units held, emails owed.
async fn still_moving(sys: &System) -> anyhow::Result<Option<String>> {
    let orders = orders(sys).await?;
    let open = orders
        .values()
        .filter(|o| {
            // An order cancelled before its saga started has none.
            o.status == "pending"
                || (o.workflow_id.is_some()
                    && !matches!(
                        o.saga_status.as_deref(),
                        Some("completed" | "compensated" | "cancelled")
                    ))
        })
        .count();
    let running = sys.sagas_in_flight().await?;
    let inv = sys.service_db(Service::Inventory)?;
    let held: i64 =
        sqlx::query_scalar("select count(*) from reservations where status = 'reserved'")
            .fetch_one(&inv)
            .await?;
    inv.close().await;
    let confirmed = orders.values().filter(|o| o.status == "confirmed").count();
    let emails = sys.smtp.messages()?.len();
    Ok(
        (open > 0 || running > 0 || held > 0 || emails < confirmed).then(|| {
            format!(
                "{open} orders open, {running} sagas running, {held} reservations held, \
             {emails} of {confirmed} emails"
            )
        }),
    )
}

/// Waits until nothing moves, then checks every book against the orders the customers placed.
pub async fn check(sys: &System, placed: &[Placed], figures: &mut Figures) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + settle_within();
    let settled = loop {
        // The scenario may have left a dependency restarting: an error is asked again.
        let state = match still_moving(sys).await {
            Ok(None) => break Ok(()),
            Ok(Some(state)) => state,
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() > deadline {
            break Err(state);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if let Err(state) = settled {
        figures
            .problems
            .push(format!("not settled after {:?}: {state}", settle_within()));
    }
    let problems = &mut figures.problems;
    let (mut lost, mut duplicated) = (0, 0);
    figures.orders = placed.len();

    // Orders: each placed once, none unknown, each ended as its saga did.
    let orders = orders(sys).await?;
    let placed_ids: HashSet<Uuid> = placed.iter().map(|p| p.id).collect();
    if placed_ids.len() != placed.len() {
        problems.push("two POSTs answered with one order id".into());
    }
    for id in orders.keys().filter(|id| !placed_ids.contains(id)) {
        duplicated += 1;
        problems.push(format!(
            "order {id} in the database that no customer placed"
        ));
    }
    let workflows: HashMap<Uuid, (String, Option<String>)> =
        sqlx::query_as::<_, (Uuid, String, Option<String>)>(
            "select id, status, reason from workflows",
        )
        .fetch_all(&sys.engine_db)
        .await?
        .into_iter()
        .map(|(id, s, r)| (id, (s, r)))
        .collect();
    for p in placed {
        let Some(o) = orders.get(&p.id) else {
            lost += 1;
            problems.push(format!("order {} was accepted but is not stored", p.id));
            continue;
        };
        if o.total != p.total_minor {
            problems.push(format!(
                "order {} was placed for {} and is stored for {}",
                p.id, p.total_minor, o.total
            ));
        }
        figures.cancel_asked += usize::from(p.cancel_asked);
        let saga = o.workflow_id.and_then(|w| workflows.get(&w));
        match (o.status.as_str(), saga.map(|s| s.0.as_str())) {
            ("confirmed", Some("completed")) => figures.confirmed += 1,
            ("cancelled", Some("compensated" | "cancelled") | None) => {
                *figures
                    .cancelled
                    .entry(o.cancel_code.clone().unwrap_or_else(|| "none".into()))
                    .or_default() += 1;
            }
            (status, saga) => {
                lost += 1;
                let reason = o
                    .workflow_id
                    .and_then(|w| workflows.get(&w))
                    .and_then(|s| s.1.clone());
                problems.push(format!(
                    "order {} is {status} with saga {saga:?} (reason {reason:?})",
                    p.id
                ));
            }
        }
    }
    let sagas_of_orders: HashSet<Uuid> = orders.values().filter_map(|o| o.workflow_id).collect();
    for (id, (status, reason)) in &workflows {
        if !sagas_of_orders.contains(id) {
            duplicated += 1;
            problems.push(format!(
                "saga {id} ({status}, {reason:?}) belongs to no order"
            ));
        }
    }

    // Stripe: each confirmed order charged its total exactly once and never refunded; every
    // charge of a cancelled order refunded exactly once; no charge for anything else.
    let ledger = sys.sandbox.sandbox.ledger();
    let order_of_intent: HashMap<&str, Uuid> = ledger
        .payment_intents
        .iter()
        .filter_map(|pi| Some((pi.id.as_str(), pi.metadata.get("order_id")?.parse().ok()?)))
        .collect();
    let mut charges_per_order: HashMap<Uuid, Vec<&orderflow_stripe_sandbox::ledger::Charge>> =
        HashMap::new();
    for c in &ledger.charges {
        figures.charged_minor += c.amount;
        match order_of_intent.get(c.payment_intent.as_str()) {
            Some(order) if orders.contains_key(order) => {
                charges_per_order.entry(*order).or_default().push(c)
            }
            _ => {
                duplicated += 1;
                problems.push(format!("charge {} belongs to no order", c.id));
            }
        }
    }
    for r in &ledger.refunds {
        figures.refunded_minor += r.amount;
    }
    let mut expected_net = 0;
    for (id, o) in &orders {
        let charges = charges_per_order
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if o.status == "confirmed" {
            expected_net += o.total;
            match charges {
                [c] if c.amount == o.total && c.amount_refunded == 0 => {}
                [] => {
                    lost += 1;
                    problems.push(format!("confirmed order {id} was never charged"));
                }
                cs => {
                    duplicated += cs.len().saturating_sub(1);
                    problems.push(format!(
                        "confirmed order {id} (total {}): charges {cs:?}",
                        o.total
                    ));
                }
            }
        } else {
            for c in charges {
                let refunds = ledger.refunds_of(&c.payment_intent);
                if refunds.len() != 1 || c.amount_refunded != c.amount {
                    if refunds.is_empty() {
                        lost += 1;
                    } else {
                        duplicated += refunds.len() - 1;
                    }
                    problems.push(format!(
                        "{} order {id}: charge {} of {} refunded {} in {} refunds",
                        o.status,
                        c.id,
                        c.amount,
                        c.amount_refunded,
                        refunds.len()
                    ));
                }
            }
        }
    }
    if figures.charged_minor - figures.refunded_minor != expected_net {
        problems.push(format!(
            "Stripe kept {} net, the confirmed orders total {expected_net}",
            figures.charged_minor - figures.refunded_minor
        ));
    }

    // Stock: nothing held, sold = units of confirmed orders, initial = on hand + reserved + sold.
    let inv = sys.service_db(Service::Inventory)?;
    let stock: Vec<(String, i32, i32, i32)> =
        sqlx::query_as("select id, on_hand, reserved, sold from products order by id")
            .fetch_all(&inv)
            .await?;
    let reservations: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from reservations group by status")
            .fetch_all(&inv)
            .await?;
    inv.close().await;
    for (product, initial) in [(COMMON.0, COMMON.2), (SCARCE.0, SCARCE.2)] {
        let Some((_, on_hand, reserved, sold)) = stock.iter().find(|s| s.0 == product) else {
            problems.push(format!("product {product} is gone"));
            continue;
        };
        let (on_hand, reserved, sold) =
            (i64::from(*on_hand), i64::from(*reserved), i64::from(*sold));
        let ordered: i64 = orders
            .values()
            .filter(|o| o.status == "confirmed")
            .flat_map(|o| &o.items)
            .filter(|(p, _)| p == product)
            .map(|(_, q)| q)
            .sum();
        if on_hand + reserved + sold != initial || reserved != 0 || sold != ordered {
            if sold > ordered {
                duplicated += 1;
            } else {
                lost += 1;
            }
            problems.push(format!(
                "{product}: initial {initial}, on hand {on_hand}, reserved {reserved}, sold {sold}, \
                 confirmed orders bought {ordered}"
            ));
        }
    }
    if let Some((_, n)) = reservations.iter().find(|r| r.0 == "reserved") {
        lost += *n as usize;
        problems.push(format!("{n} reservations left behind"));
    }

    // Email: one confirmation per confirmed order, none for a cancelled one. A confirmation is
    // one Message-ID: after a crash between the SMTP server taking a message and the service
    // storing that it did, the retry sends it again under the same Message-ID, for the
    // receiving side to drop (no SMTP server can dedupe for the sender); those are counted.
    let mail = sys.smtp.messages()?;
    figures.emails = mail.len();
    for (id, o) in &orders {
        let copies: Vec<&str> = mail
            .iter()
            .filter(|m| m.contains(&id.to_string()))
            .map(|m| message_id(m))
            .collect();
        let distinct: HashSet<&str> = copies.iter().copied().collect();
        figures.resent += copies.len() - distinct.len();
        match (o.status.as_str(), distinct.len()) {
            ("confirmed", 1) | ("cancelled", 0) => {}
            ("confirmed", 0) => {
                lost += 1;
                problems.push(format!("no confirmation for order {id}"));
            }
            (status, n) => {
                duplicated += n.saturating_sub(1).max(1);
                problems.push(format!(
                    "{n} confirmations (Message-IDs {distinct:?}) for {status} order {id}"
                ));
            }
        }
    }
    figures.lost = lost;
    figures.duplicated = duplicated;
    Ok(())
}

/// The `Message-ID` header of a stored message.
fn message_id(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim())
        })
        .unwrap_or_default()
}
