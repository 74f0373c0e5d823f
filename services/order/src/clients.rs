//! Calls to the other services' public REST APIs (never their tables): the inventory prices an
//! order, the user service knows the caller's email, the engine starts and cancels sagas. The
//! engine is called as the service `order` (a service token signed with the deployment's key,
//! fresh for each call: signing costs microseconds and a token never outlives a key rotation).

use std::{collections::HashMap, time::Duration};

use orderflow_service_kit::auth::JwtKeys;
use orderflow_workflows::order::contracts::{Money, OrderSagaInput};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// Why a call to another service did not give an answer we can use.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service is down, slow or answered 5xx: worth retrying later.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    /// The service refused the request (4xx): retrying the same request will not help.
    #[error("{service} refused the request ({status}): {detail}")]
    Refused {
        service: &'static str,
        status: u16,
        detail: String,
    },
}

impl CallError {
    fn from_reqwest(service: &'static str, e: &reqwest::Error) -> Self {
        Self::Unavailable {
            service,
            detail: e.to_string(),
        }
    }
}

/// Turns a response into its JSON body, or the error its status means.
async fn json_of<T: serde::de::DeserializeOwned>(
    service: &'static str,
    res: reqwest::Response,
) -> Result<T, CallError> {
    let status = res.status();
    if status.is_success() {
        return res
            .json()
            .await
            .map_err(|e| CallError::from_reqwest(service, &e));
    }
    let detail = res.text().await.unwrap_or_default();
    let detail: String = detail.chars().take(500).collect();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(CallError::Unavailable { service, detail })
    } else {
        Err(CallError::Refused {
            service,
            status: status.as_u16(),
            detail,
        })
    }
}

/// One shared HTTP client (connection pool) for all calls.
#[derive(Clone, Debug)]
pub struct Clients {
    http: reqwest::Client,
    inventory_url: String,
    user_url: String,
    engine_url: String,
    /// Signs the service token the engine is called with.
    keys: JwtKeys,
}

/// The name the order service calls the engine by: the actor of the cancels it asks for.
pub const ENGINE_CALLER: &str = "order";

/// A product's price as the inventory publishes it.
#[derive(Clone, Debug, Deserialize)]
pub struct Priced {
    pub id: String,
    pub price: Money,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct Me {
    email: String,
}

#[derive(Deserialize)]
struct Started {
    id: Uuid,
}

impl Clients {
    pub fn new(
        inventory_url: &str,
        user_url: &str,
        engine_url: &str,
        keys: JwtKeys,
        timeout: Duration,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()?;
        let trim = |u: &str| u.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            inventory_url: trim(inventory_url),
            user_url: trim(user_url),
            engine_url: trim(engine_url),
            keys,
        })
    }

    /// A fresh service token for the engine.
    fn engine_token(&self) -> Result<String, CallError> {
        self.keys
            .service_token(ENGINE_CALLER)
            .map_err(|e| CallError::Unavailable {
                service: "engine",
                detail: format!("cannot sign the service token: {e}"),
            })
    }

    /// Prices of the named products that exist, by id.
    pub async fn prices(&self, ids: &[&str]) -> Result<HashMap<String, Money>, CallError> {
        const SERVICE: &str = "inventory";
        let res = self
            .http
            .get(format!("{}/api/v1/products", self.inventory_url))
            .query(&[("ids", ids.join(","))])
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(SERVICE, &e))?;
        let page: Page<Priced> = json_of(SERVICE, res).await?;
        Ok(page.items.into_iter().map(|p| (p.id, p.price)).collect())
    }

    /// The caller's email, asked with the caller's own token.
    pub async fn email(&self, bearer: &str) -> Result<String, CallError> {
        const SERVICE: &str = "user";
        let res = self
            .http
            .get(format!("{}/api/v1/users/me", self.user_url))
            .bearer_auth(bearer)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(SERVICE, &e))?;
        let me: Me = json_of(SERVICE, res).await?;
        Ok(me.email)
    }

    /// Starts the order saga. The Idempotency-Key `order:<id>` makes a repeated start (after a
    /// timeout, a crash, or from two replicas) return the same workflow.
    pub async fn start_saga(&self, input: &OrderSagaInput) -> Result<Uuid, CallError> {
        let key = format!("order:{}", input.order_id);
        self.start_workflow("order", input, input.order_id, input.user_id, &key)
            .await
    }

    /// Starts the return saga of an order. The Idempotency-Key `return:<order id>` makes one
    /// return per order: a repeated request gets the same workflow.
    pub async fn start_return(
        &self,
        input: &orderflow_workflows::returns::contracts::ReturnSagaInput,
    ) -> Result<Uuid, CallError> {
        let key = format!("return:{}", input.order_id);
        let saga = orderflow_workflows::returns::RETURN_SAGA;
        self.start_workflow(saga, input, input.order_id, input.user_id, &key)
            .await
    }

    /// Starts a workflow of `workflow_type` about an order, as this service, under `key`.
    async fn start_workflow(
        &self,
        workflow_type: &str,
        input: &impl serde::Serialize,
        order_id: Uuid,
        user_id: Uuid,
        key: &str,
    ) -> Result<Uuid, CallError> {
        const SERVICE: &str = "engine";
        let body = json!({
            "type": workflow_type,
            "input": input,
            "business_keys": {
                "order_id": order_id.to_string(),
                "user_id": user_id.to_string(),
            },
        });
        let res = self
            .http
            .post(format!("{}/api/v1/workflows", self.engine_url))
            .bearer_auth(self.engine_token()?)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(SERVICE, &e))?;
        let started: Started = json_of(SERVICE, res).await?;
        Ok(started.id)
    }

    /// Asks the engine to cancel (compensate) a saga on the owner's behalf. The engine records
    /// the order service as the actor; the customer is named in the reason.
    pub async fn cancel_saga(&self, workflow: Uuid, user: Uuid) -> Result<(), CallError> {
        const SERVICE: &str = "engine";
        let res = self
            .http
            .post(format!(
                "{}/api/v1/workflows/{workflow}/cancel",
                self.engine_url
            ))
            .bearer_auth(self.engine_token()?)
            .json(&json!({ "reason": format!("cancelled by the customer user:{user}") }))
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(SERVICE, &e))?;
        json_of::<serde_json::Value>(SERVICE, res).await.map(|_| ())
    }
}
