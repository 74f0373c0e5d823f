//! The REST API driven through `router()` without a socket, on a fresh Postgres database per
//! test. No engine loops run here, so a started saga stays `running` with its first task in the
//! outbox; worker results are applied by hand through the `Applier` where a test needs them.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use orderflow_core::{ActivityError, Command, Event, History, TaskSpec, WorkflowId};
use orderflow_engine::{
    api::{AppState, router},
    apply::{Applier, Outcome},
};
use orderflow_queue::rabbit::RabbitQueue;
use orderflow_testkit::{TestEnv, api_auth, operator_token, order_input};
use orderflow_workflows::order::contracts::INVENTORY_RESERVE;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const PROBLEM: &str = "application/problem+json";

/// One answer of the router, with its body parsed as JSON when it is JSON.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts an RFC 9457 problem with this status and, for client errors that name one, field.
    fn assert_problem(&self, status: StatusCode, field: Option<&str>) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header(header::CONTENT_TYPE),
            PROBLEM,
            "{status} must be problem+json"
        );
        assert_eq!(self.json["status"], status.as_u16(), "body: {}", self.text);
        assert!(self.json["title"].is_string(), "body: {}", self.text);
        assert!(self.json["detail"].is_string(), "body: {}", self.text);
        assert_eq!(self.json["field"].as_str(), field, "body: {}", self.text);
    }

    fn detail(&self) -> &str {
        self.json["detail"].as_str().unwrap_or_default()
    }
}

/// The router on a fresh database, and the applier behind it for injecting worker results.
struct Api {
    env: TestEnv,
    applier: Applier,
    app: Router,
}

impl Api {
    async fn new() -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let applier = env.applier(Arc::new(orderflow_workflows::registry()));
        let app = router(
            AppState::standalone(env.pool.clone(), applier.clone(), env.queue()),
            api_auth(),
        );
        Ok(Self { env, applier, app })
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder().method(method).uri(uri);
        // The operator `tester` unless the test says who (an empty `authorization`: nobody).
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            req = req.header(
                "authorization",
                format!("Bearer {}", operator_token("tester")),
            );
        }
        for (name, value) in headers {
            let nobody = name.eq_ignore_ascii_case("authorization") && value.is_empty();
            if !nobody {
                req = req.header(*name, *value);
            }
        }
        let res = self.app.clone().oneshot(req.body(body)?).await?;
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = to_bytes(res.into_body(), usize::MAX).await?;
        let text = String::from_utf8(bytes.to_vec())?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            text,
            json,
        })
    }

    async fn get(&self, uri: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, uri, &[], Body::empty()).await
    }

    async fn post(&self, uri: &str, body: &Value) -> anyhow::Result<Reply> {
        self.post_raw(uri, &[], body.to_string()).await
    }

    /// A POST by operator `who`: the actor of what it does is `operator:<who>`.
    async fn post_as(&self, who: &str, uri: &str, body: &Value) -> anyhow::Result<Reply> {
        let auth = format!("Bearer {}", operator_token(who));
        self.post_raw(uri, &[("authorization", &auth)], body.to_string())
            .await
    }

    async fn post_raw(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> anyhow::Result<Reply> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, uri, &all, body.into()).await
    }

    /// Starts an order saga through the API with these business keys; returns its id.
    async fn start(&self, business_keys: Value) -> anyhow::Result<Uuid> {
        let res = self
            .post(
                "/api/v1/workflows",
                &start_body(order_input(), business_keys),
            )
            .await?;
        assert_eq!(res.status, StatusCode::CREATED, "body: {}", res.text);
        Ok(res.json["id"].as_str().unwrap_or_default().parse()?)
    }

    async fn history(&self, id: Uuid) -> anyhow::Result<History> {
        let res = self.get(&format!("/api/v1/workflows/{id}/history")).await?;
        assert_eq!(res.status, StatusCode::OK, "body: {}", res.text);
        Ok(serde_json::from_value(res.json)?)
    }

    /// The task the workflow is waiting on: the last `schedule_activity` in its history.
    async fn in_flight_task(&self, id: Uuid) -> anyhow::Result<TaskSpec> {
        let history = self.history(id).await?;
        history
            .events
            .iter()
            .flat_map(|e| &e.commands)
            .rev()
            .find_map(|c| match c {
                Command::ScheduleActivity(spec) => Some(spec.clone()),
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("workflow {id} scheduled nothing"))
    }

    /// Applies one event as the intake would for a worker result, and commits.
    async fn apply(&self, id: Uuid, event: Event) -> anyhow::Result<Outcome> {
        let mut outcomes = self
            .env
            .committer(&self.applier)
            .apply(vec![(WorkflowId(id), event)], None)
            .await?;
        outcomes.pop().ok_or_else(|| anyhow::anyhow!("no outcome"))
    }
}

fn start_body(input: Value, business_keys: Value) -> Value {
    json!({ "type": "order", "input": input, "business_keys": business_keys })
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/workflows

#[tokio::test]
async fn start_answers_201_with_location_and_the_running_workflow() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let order_id = Uuid::new_v4().to_string();
    let body = start_body(
        order_input(),
        json!({ "order_id": order_id, "user_id": "u-1" }),
    );

    let res = api.post("/api/v1/workflows", &body).await?;

    assert_eq!(res.status, StatusCode::CREATED, "body: {}", res.text);
    assert_eq!(res.header(header::CONTENT_TYPE), "application/json");
    let id = res.json["id"].as_str().expect("id").to_owned();
    assert_eq!(
        res.header(header::LOCATION),
        format!("/api/v1/workflows/{id}")
    );
    assert_eq!(res.json["type"], "order");
    assert_eq!(res.json["version"], latest_order_version());
    assert_eq!(res.json["status"], "running");
    assert_eq!(res.json["reason"], Value::Null);
    assert_eq!(
        res.json["business_keys"],
        json!({ "order_id": order_id, "user_id": "u-1" })
    );
    assert_eq!(res.json["last_seq"], 1);
    let steps = res.json["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["reserve", "charge", "create_order", "notify"]);
    let activities: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["activity"].as_str())
        .collect();
    assert_eq!(
        activities,
        [
            "inventory.reserve",
            "payment.charge",
            "order.create",
            "notification.send"
        ]
    );
    let kinds: Vec<&str> = steps.iter().filter_map(|s| s["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["compensatable", "compensatable", "pivot", "retriable"]
    );
    assert_eq!(steps[0]["status"], "running");
    assert_eq!(steps[0]["attempts"], 1);
    assert!(
        steps[1..]
            .iter()
            .all(|s| s["status"] == "pending" && s["attempts"] == 0)
    );

    // The Location answers with the same workflow.
    let got = api.get(res.header(header::LOCATION)).await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json, res.json);
    Ok(())
}

#[tokio::test]
async fn start_with_a_repeated_idempotency_key_returns_the_first_workflow() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let key = [("idempotency-key", "checkout-42")];
    let body = start_body(order_input(), json!({ "order_id": "o-42" }));

    let first = api
        .post_raw("/api/v1/workflows", &key, body.to_string())
        .await?;
    assert_eq!(first.status, StatusCode::CREATED, "body: {}", first.text);

    // Same key and same body, even with other whitespace: the first workflow, 200.
    let again = api
        .post_raw(
            "/api/v1/workflows",
            &key,
            serde_json::to_string_pretty(&body)?,
        )
        .await?;
    assert_eq!(again.status, StatusCode::OK, "body: {}", again.text);
    assert_eq!(again.json["id"], first.json["id"]);
    assert_eq!(
        again.header(header::LOCATION),
        first.header(header::LOCATION)
    );

    // Same key, another body: refused.
    let other = start_body(order_input(), json!({ "order_id": "o-42" }));
    let conflict = api
        .post_raw("/api/v1/workflows", &key, other.to_string())
        .await?;
    conflict.assert_problem(StatusCode::CONFLICT, None);
    assert!(
        conflict.detail().contains("Idempotency-Key"),
        "detail: {}",
        conflict.detail()
    );

    let all = api.get("/api/v1/workflows").await?;
    assert_eq!(ids(&all.json), [first.json["id"].as_str().expect("id")]);
    Ok(())
}

#[tokio::test]
async fn start_rejects_bad_requests_with_problems_naming_the_field() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let path = "/api/v1/workflows";

    api.post_raw(path, &[], "{\"type\": \"order\",")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));
    api.post_raw(path, &[], "")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));
    api.post_raw(path, &[], "[1, 2]")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));

    // A value of the wrong type names no field serde can report; the body is to blame.
    api.post(path, &json!({ "type": 5, "input": order_input() }))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));

    let no_type = api.post(path, &json!({ "input": order_input() })).await?;
    no_type.assert_problem(StatusCode::BAD_REQUEST, Some("type"));
    assert!(
        no_type.detail().contains("type"),
        "detail: {}",
        no_type.detail()
    );

    let extra = json!({ "type": "order", "input": order_input(), "priority": 1 });
    api.post(path, &extra)
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("priority"));

    let unknown = api
        .post(path, &json!({ "type": "refund", "input": order_input() }))
        .await?;
    unknown.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("type"));
    assert!(
        unknown.detail().contains("refund"),
        "detail: {}",
        unknown.detail()
    );

    let mut input = order_input();
    input.as_object_mut().expect("object").remove("items");
    let missing = api.post(path, &start_body(input, json!({}))).await?;
    missing.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("input"));
    assert!(
        missing.detail().contains("items"),
        "detail: {}",
        missing.detail()
    );

    let mut input = order_input();
    input["coupon"] = json!("FREE");
    let unknown_field = api.post(path, &start_body(input, json!({}))).await?;
    unknown_field.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("input"));
    assert!(
        unknown_field.detail().contains("coupon"),
        "detail: {}",
        unknown_field.detail()
    );

    let body = start_body(order_input(), json!({})).to_string();
    let long = "k".repeat(256);
    api.post_raw(path, &[("idempotency-key", &long)], body.clone())
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("Idempotency-Key"));
    api.post_raw(path, &[("idempotency-key", "")], body)
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("Idempotency-Key"));

    // Nothing was started by any of them.
    let all = api.get(path).await?;
    assert_eq!(all.json["items"], json!([]));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/workflows/{id} and /history

#[tokio::test]
async fn get_answers_400_for_a_bad_id_and_404_for_an_unknown_one() -> anyhow::Result<()> {
    let api = Api::new().await?;

    let bad = api.get("/api/v1/workflows/not-a-uuid").await?;
    bad.assert_problem(StatusCode::BAD_REQUEST, Some("id"));
    assert!(
        bad.detail().contains("not-a-uuid"),
        "detail: {}",
        bad.detail()
    );

    let unknown = Uuid::now_v7();
    let missing = api.get(&format!("/api/v1/workflows/{unknown}")).await?;
    missing.assert_problem(StatusCode::NOT_FOUND, None);
    assert!(
        missing.detail().contains(&unknown.to_string()),
        "detail: {}",
        missing.detail()
    );
    Ok(())
}

#[tokio::test]
async fn history_is_the_replay_format() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;

    let res = api.get(&format!("/api/v1/workflows/{id}/history")).await?;
    assert_eq!(res.status, StatusCode::OK, "body: {}", res.text);
    let first = &res.json["events"][0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["event"]["type"], "workflow_started");
    assert_eq!(first["event"]["workflow_type"], "order");
    let scheduled = first["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .any(|c| {
            c["type"] == "schedule_activity"
                && c["activity"] == INVENTORY_RESERVE
                && c["attempt"] == 1
        });
    assert!(scheduled, "commands: {}", first["commands"]);

    let history: History = serde_json::from_value(res.json)?;
    assert_eq!(history.workflow_id, WorkflowId(id));
    assert_eq!(history.workflow_type, "order");
    assert_eq!(history.version, latest_order_version());
    assert_eq!(history.events.len(), 1);
    assert!(matches!(
        history.events[0].event,
        Event::WorkflowStarted { .. }
    ));

    let unknown = api
        .get(&format!("/api/v1/workflows/{}/history", Uuid::now_v7()))
        .await?;
    unknown.assert_problem(StatusCode::NOT_FOUND, None);
    api.get("/api/v1/workflows/42/history")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("id"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/workflows

#[tokio::test]
async fn list_pages_newest_first_and_filters() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let mut started = Vec::new();
    for n in 0..5 {
        started.push(
            api.start(json!({ "order_id": format!("order-{n}"), "user_id": "user-a" }))
                .await?,
        );
    }
    let newest_first: Vec<String> = started.iter().rev().map(Uuid::to_string).collect();

    // Pages of 2, 2 and 1, following the cursor, with no overlap and nothing missed.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut uri = "/api/v1/workflows?limit=2".to_owned();
    loop {
        let page = api.get(&uri).await?;
        assert_eq!(page.status, StatusCode::OK, "body: {}", page.text);
        sizes.push(ids(&page.json).len());
        seen.extend(ids(&page.json));
        match page.json["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/workflows?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(sizes.len() < 5, "the cursor does not end");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, newest_first);

    let all = api.get("/api/v1/workflows").await?;
    assert_eq!(ids(&all.json), newest_first);
    assert_eq!(all.json["next_cursor"], Value::Null);
    let item = &all.json["items"][0];
    assert_eq!(item["type"], "order");
    assert_eq!(item["status"], "running");
    assert_eq!(item["business_keys"]["order_id"], "order-4");

    // Business keys match on any key's value.
    let by_order = api.get("/api/v1/workflows?business_key=order-2").await?;
    assert_eq!(ids(&by_order.json), [started[2].to_string()]);
    let by_user = api.get("/api/v1/workflows?business_key=user-a").await?;
    assert_eq!(ids(&by_user.json).len(), 5);
    let by_none = api.get("/api/v1/workflows?business_key=order-9").await?;
    assert_eq!(by_none.json["items"], json!([]));

    let by_type = api.get("/api/v1/workflows?type=order&limit=500").await?;
    assert_eq!(ids(&by_type.json).len(), 5);
    let other_type = api.get("/api/v1/workflows?type=refund").await?;
    assert_eq!(other_type.json["items"], json!([]));

    let stop = json!({ "reason": "test" });
    let res = api
        .post_as(
            "ops",
            &format!("/api/v1/workflows/{}/terminate", started[1]),
            &stop,
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    let terminated = api.get("/api/v1/workflows?status=terminated").await?;
    assert_eq!(ids(&terminated.json), [started[1].to_string()]);
    let running = api
        .get("/api/v1/workflows?status=running&type=order")
        .await?;
    assert_eq!(ids(&running.json).len(), 4);
    assert!(!ids(&running.json).contains(&started[1].to_string()));

    let after = api
        .get("/api/v1/workflows?created_after=2000-01-01T00:00:00Z")
        .await?;
    assert_eq!(ids(&after.json).len(), 5);
    let before = api
        .get("/api/v1/workflows?created_before=2000-01-01T00:00:00Z")
        .await?;
    assert_eq!(before.json["items"], json!([]));
    Ok(())
}

#[tokio::test]
async fn list_rejects_bad_query_parameters() -> anyhow::Result<()> {
    let api = Api::new().await?;

    let status = api.get("/api/v1/workflows?status=sleeping").await?;
    status.assert_problem(StatusCode::BAD_REQUEST, Some("status"));
    assert!(
        status.detail().contains("sleeping"),
        "detail: {}",
        status.detail()
    );
    for limit in ["0", "501", "abc", "-1"] {
        let res = api.get(&format!("/api/v1/workflows?limit={limit}")).await?;
        res.assert_problem(StatusCode::BAD_REQUEST, Some("limit"));
    }
    api.get("/api/v1/workflows?cursor=page-2")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("cursor"));
    api.get("/api/v1/workflows?created_after=yesterday")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("created_after"));
    api.get("/api/v1/workflows?limit=1&limit=2")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("limit"));
    api.get("/api/v1/workflows?sort=asc")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("sort"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/workflows/{id}/cancel and /terminate

#[tokio::test]
async fn cancel_waits_for_the_in_flight_step_then_compensates() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let cancel = format!("/api/v1/workflows/{id}/cancel");

    let res = api
        .post_as(
            "alice",
            &cancel,
            &json!({ "reason": "customer changed their mind" }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    assert_eq!(res.json["id"], id.to_string());
    assert_eq!(res.json["seq"], 2);
    // `reserve` is out with a worker, so the undo waits for it to settle.
    assert_eq!(res.json["status"], "running");

    let wf = api.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(wf.json["status"], "running");
    let reason = wf.json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cancelled by operator:alice: customer changed their mind"),
        "reason: {reason}"
    );

    let history = api.history(id).await?;
    let last = history.events.last().expect("events");
    assert_eq!(last.seq, 2);
    assert_eq!(
        last.event,
        Event::CancelRequested {
            actor: "operator:alice".into(),
            reason: "customer changed their mind".into()
        }
    );

    // A second cancel while the first one waits is refused.
    api.post(&cancel, &json!({ "reason": "again" }))
        .await?
        .assert_problem(StatusCode::CONFLICT, None);

    // Once `reserve` succeeds, its compensation is scheduled.
    let task = api.in_flight_task(id).await?;
    let outcome = api
        .apply(
            id,
            Event::ActivityCompleted {
                task_id: task.task_id,
                output: json!({}),
            },
        )
        .await?;
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    let wf = api.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(wf.json["status"], "compensating");
    assert_eq!(wf.json["steps"][0]["status"], "compensating");
    assert_eq!(api.in_flight_task(id).await?.activity, "inventory.release");
    Ok(())
}

#[tokio::test]
async fn cancel_rejects_bad_bodies_and_settled_workflows() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let cancel = format!("/api/v1/workflows/{id}/cancel");

    api.post(&cancel, &json!({}))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("reason"));
    api.post(&cancel, &json!({ "reason": "  " }))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("reason"));
    // The actor is the caller, never a field of the body.
    api.post(&cancel, &json!({ "reason": "x", "actor": "mallory" }))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("actor"));
    api.post(&cancel, &json!({ "reason": "x", "force": true }))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("force"));
    api.post_raw(&cancel, &[], "")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));
    api.post_raw(&cancel, &[], "{reason:")
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("body"));
    api.post("/api/v1/workflows/nope/cancel", &json!({ "reason": "x" }))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("id"));
    api.post(
        &format!("/api/v1/workflows/{}/cancel", Uuid::now_v7()),
        &json!({ "reason": "x" }),
    )
    .await?
    .assert_problem(StatusCode::NOT_FOUND, None);

    // None of the refusals was recorded.
    assert_eq!(api.history(id).await?.events.len(), 1);

    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/terminate"),
            &json!({ "reason": "stop" }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    let late = api.post(&cancel, &json!({ "reason": "too late" })).await?;
    late.assert_problem(StatusCode::CONFLICT, None);
    assert!(
        late.detail().contains("terminated"),
        "detail: {}",
        late.detail()
    );
    Ok(())
}

#[tokio::test]
async fn terminate_stops_the_workflow_once() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let terminate = format!("/api/v1/workflows/{id}/terminate");

    let res = api
        .post_as("bob", &terminate, &json!({ "reason": "fraud suspected" }))
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    assert_eq!(res.json["status"], "terminated");

    let wf = api.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(wf.json["status"], "terminated");
    assert_eq!(
        wf.json["reason"],
        "terminated by operator:bob: fraud suspected"
    );

    let history = api.history(id).await?;
    let last = history.events.last().expect("events");
    assert_eq!(
        last.event,
        Event::TerminateRequested {
            actor: "operator:bob".into(),
            reason: "fraud suspected".into()
        }
    );
    assert!(
        last.commands
            .iter()
            .any(|c| matches!(c, Command::Finish { .. })),
        "{:?}",
        last.commands
    );

    let again = api.post(&terminate, &json!({ "reason": "again" })).await?;
    again.assert_problem(StatusCode::CONFLICT, None);
    assert_eq!(api.history(id).await?.events.len(), 2);

    // The default caller of these tests is the operator `tester`.
    let other = api.start(json!({})).await?;
    let res = api
        .post(
            &format!("/api/v1/workflows/{other}/terminate"),
            &json!({ "reason": "cleanup" }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    let last = api.history(other).await?.events.pop().expect("events");
    assert_eq!(
        last.event,
        Event::TerminateRequested {
            actor: "operator:tester".into(),
            reason: "cleanup".into()
        }
    );

    api.post(
        &format!("/api/v1/workflows/{}/terminate", Uuid::now_v7()),
        &json!({ "reason": "x" }),
    )
    .await?
    .assert_problem(StatusCode::NOT_FOUND, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/workflows/{id}/retry

#[tokio::test]
async fn retry_runs_a_waiting_step_now() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let retry = format!("/api/v1/workflows/{id}/retry");
    let why = json!({ "reason": "the warehouse is back" });

    // The first attempt is still out: nothing waits to be retried.
    let early = api.post(&retry, &why).await?;
    early.assert_problem(StatusCode::CONFLICT, None);
    assert!(
        early.detail().contains("reserve"),
        "detail: {}",
        early.detail()
    );

    let task = api.in_flight_task(id).await?;
    assert_eq!(
        (task.activity.as_str(), task.attempt),
        (INVENTORY_RESERVE, 1)
    );
    let error = ActivityError::retryable("unavailable", "warehouse API answered 503");
    let outcome = api
        .apply(
            id,
            Event::ActivityFailed {
                task_id: task.task_id,
                error,
            },
        )
        .await?;
    assert!(
        matches!(outcome, Outcome::Applied { ignored: None, .. }),
        "{outcome:?}"
    );
    let wf = api.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(wf.json["steps"][0]["status"], "retrying");
    assert_eq!(wf.json["steps"][0]["last_error"]["code"], "unavailable");

    let res = api.post_as("carol", &retry, &why).await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    assert_eq!(res.json["status"], "running");

    let wf = api.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(wf.json["steps"][0]["status"], "running");
    assert_eq!(wf.json["steps"][0]["attempts"], 2);
    let history = api.history(id).await?;
    let last = history.events.last().expect("events");
    assert_eq!(
        last.event,
        Event::RetryRequested {
            actor: "operator:carol".into(),
            reason: "the warehouse is back".into()
        }
    );
    let next = api.in_flight_task(id).await?;
    assert_eq!(
        (next.activity.as_str(), next.attempt),
        (INVENTORY_RESERVE, 2)
    );

    // The retry consumed the wait: a second one has nothing to do.
    api.post(&retry, &why)
        .await?
        .assert_problem(StatusCode::CONFLICT, None);
    api.post(&retry, &json!({}))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("reason"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/workflows/{id}/signals/{name}

#[tokio::test]
async fn signals_are_recorded_in_the_history() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;

    let payload = json!({ "address": "Main St 1" });
    let res = api
        .post_as(
            "dave",
            &format!("/api/v1/workflows/{id}/signals/address.changed"),
            &json!({ "payload": payload }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    assert_eq!(res.json["status"], "running");
    let last = api.history(id).await?.events.pop().expect("events");
    assert_eq!(
        last.event,
        Event::SignalReceived {
            name: "address.changed".into(),
            payload,
            actor: "operator:dave".into()
        }
    );

    // An empty body is a signal without payload.
    let res = api
        .post_raw(&format!("/api/v1/workflows/{id}/signals/ping"), &[], "")
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    let last = api.history(id).await?.events.pop().expect("events");
    assert_eq!(
        last.event,
        Event::SignalReceived {
            name: "ping".into(),
            payload: Value::Null,
            actor: "operator:tester".into()
        }
    );

    let bad = api
        .post(
            &format!("/api/v1/workflows/{id}/signals/bad%20name%21"),
            &json!({}),
        )
        .await?;
    bad.assert_problem(StatusCode::BAD_REQUEST, Some("name"));
    let long = "s".repeat(65);
    api.post(
        &format!("/api/v1/workflows/{id}/signals/{long}"),
        &json!({}),
    )
    .await?
    .assert_problem(StatusCode::BAD_REQUEST, Some("name"));
    api.post(
        &format!("/api/v1/workflows/{id}/signals/ping"),
        &json!({ "payload": 1, "urgent": true }),
    )
    .await?
    .assert_problem(StatusCode::BAD_REQUEST, Some("urgent"));
    api.post(
        &format!("/api/v1/workflows/{}/signals/ping", Uuid::now_v7()),
        &json!({}),
    )
    .await?
    .assert_problem(StatusCode::NOT_FOUND, None);
    api.post("/api/v1/workflows/x/signals/ping", &json!({}))
        .await?
        .assert_problem(StatusCode::BAD_REQUEST, Some("id"));

    let res = api
        .post(
            &format!("/api/v1/workflows/{id}/terminate"),
            &json!({ "reason": "done" }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);
    api.post(&format!("/api/v1/workflows/{id}/signals/ping"), &json!({}))
        .await?
        .assert_problem(StatusCode::CONFLICT, None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Counts, probes, metrics, routing

#[tokio::test]
async fn counts_group_workflows_by_status() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let empty = api.get("/api/v1/workflow-counts").await?;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json, json!({}));

    let a = api.start(json!({})).await?;
    api.start(json!({})).await?;
    let res = api
        .post(
            &format!("/api/v1/workflows/{a}/terminate"),
            &json!({ "reason": "x" }),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "body: {}", res.text);

    let counts = api.get("/api/v1/workflow-counts").await?;
    assert_eq!(counts.json, json!({ "running": 1, "terminated": 1 }));
    Ok(())
}

#[tokio::test]
async fn probes_and_metrics_answer() -> anyhow::Result<()> {
    let api = Api::new().await?;

    let health = api.get("/health").await?;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.text, "ok");

    let ready = api.get("/ready").await?;
    assert_eq!(ready.status, StatusCode::OK, "body: {}", ready.text);
    assert_eq!(ready.json, json!({ "database": true, "broker": true }));

    api.get(&format!("/api/v1/workflows/{}", Uuid::now_v7()))
        .await?;
    let metrics = api.get("/metrics").await?;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text.contains("http_request_duration_seconds"),
        "metrics: {}",
        metrics.text
    );
    // Labelled by the matched route, not the raw path, so ids do not explode the series.
    assert!(
        metrics.text.contains(r#"route="/health""#),
        "metrics: {}",
        metrics.text
    );
    assert!(
        metrics.text.contains(r#"route="/api/v1/workflows/{id}""#),
        "metrics: {}",
        metrics.text
    );
    Ok(())
}

#[tokio::test]
async fn ready_answers_503_when_the_broker_is_unreachable() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let applier = env.applier(Arc::new(orderflow_workflows::registry()));
    // Port 1 on localhost refuses connections at once.
    let app = router(
        AppState::standalone(
            env.pool.clone(),
            applier,
            RabbitQueue::new(
                "amqp://guest:guest@127.0.0.1:1/%2f",
                env.topology.clone(),
                Duration::ZERO,
            ),
        ),
        api_auth(),
    );

    let res = app
        .oneshot(Request::get("/ready").body(Body::empty())?)
        .await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&to_bytes(res.into_body(), usize::MAX).await?)?;
    assert_eq!(body, json!({ "database": true, "broker": false }));
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() -> anyhow::Result<()> {
    let api = Api::new().await?;

    api.get("/nope")
        .await?
        .assert_problem(StatusCode::NOT_FOUND, None);
    api.get("/api/v1/nope")
        .await?
        .assert_problem(StatusCode::NOT_FOUND, None);
    api.get("/api/v2/workflows")
        .await?
        .assert_problem(StatusCode::NOT_FOUND, None);

    let delete = api
        .send(Method::DELETE, "/api/v1/workflows", &[], Body::empty())
        .await?;
    delete.assert_problem(StatusCode::METHOD_NOT_ALLOWED, None);
    assert_eq!(delete.header(header::ALLOW), "POST,GET,HEAD");
    let id = Uuid::now_v7();
    api.get(&format!("/api/v1/workflows/{id}/cancel"))
        .await?
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, None);
    api.send(Method::PUT, "/health", &[], Body::empty())
        .await?
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, None);
    Ok(())
}

#[tokio::test]
async fn unreadable_bodies_are_problems_too() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let huge = format!(r#"{{"reason": "{}"}}"#, "x".repeat(3 << 20));

    let res = api.post_raw("/api/v1/workflows", &[], huge.clone()).await?;
    res.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, None);
    api.post_raw(&format!("/api/v1/workflows/{id}/cancel"), &[], huge.clone())
        .await?
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, None);
    api.post_raw(&format!("/api/v1/workflows/{id}/signals/ping"), &[], huge)
        .await?
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, None);

    // A header value that is not visible ASCII cannot be an idempotency key.
    let req = Request::post("/api/v1/workflows")
        .header(
            "authorization",
            format!("Bearer {}", operator_token("tester")),
        )
        .header("content-type", "application/json")
        .header(
            "idempotency-key",
            header::HeaderValue::from_bytes(b"caf\xc3\xa9")?,
        )
        .body(Body::from(start_body(order_input(), json!({})).to_string()))?;
    let res = api.app.clone().oneshot(req).await?;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&to_bytes(res.into_body(), usize::MAX).await?)?;
    assert_eq!(body["field"], "Idempotency-Key");
    Ok(())
}

#[tokio::test]
async fn concurrent_starts_with_one_idempotency_key_make_one_workflow() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let body = start_body(order_input(), json!({})).to_string();
    let key = [("idempotency-key", "double-click")];

    let (a, b) = tokio::join!(
        api.post_raw("/api/v1/workflows", &key, body.clone()),
        api.post_raw("/api/v1/workflows", &key, body),
    );
    let (a, b) = (a?, b?);

    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CREATED],
        "{} / {}",
        a.text,
        b.text
    );
    assert_eq!(a.json["id"], b.json["id"]);
    let all = api.get("/api/v1/workflows").await?;
    assert_eq!(ids(&all.json).len(), 1);
    Ok(())
}

/// The order saga version new workflows start on (the registry's pin).
fn latest_order_version() -> u32 {
    orderflow_workflows::registry()
        .latest("order")
        .map(|d| d.version())
        .expect("the order saga is registered")
}

// ---------------------------------------------------------------------------------------------
// Who may call: every route of the OpenAPI document, anonymous and with the wrong role

/// A token signed with the test secret carrying exactly `claims` (a shop token, an expired one).
fn signed(claims: &Value) -> String {
    orderflow_auth::KeyRing::new(orderflow_testkit::API_SECRET)
        .sign(claims)
        .expect("signs")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Every (method, path) of the API's own OpenAPI document, with its parameters filled in. The
/// document is the route list: a route added to the API and its document is checked here
/// without anyone remembering to.
async fn documented_routes(api: &Api) -> anyhow::Result<Vec<(Method, String, String)>> {
    let doc = api.get("/api/v1/openapi.json").await?;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let mut routes = vec![(
        Method::GET,
        "/api/v1/openapi.json".to_owned(),
        "/api/v1/openapi.json".to_owned(),
    )];
    let id = Uuid::now_v7().to_string();
    for (path, ops) in doc.json["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            let method: Method = method.to_uppercase().parse()?;
            let uri = path.replace("{id}", &id).replace("{name}", "ping");
            assert!(
                !uri.contains('{'),
                "a parameter this test cannot fill: {path}"
            );
            routes.push((method, path.clone(), uri));
        }
    }
    assert!(routes.len() >= 11, "{routes:?}");
    Ok(routes)
}

#[tokio::test]
async fn every_route_refuses_anonymous_and_wrong_role_callers() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let routes = documented_routes(&api).await?;
    let other_key = orderflow_auth::engine::issue(
        &orderflow_auth::KeyRing::new("some-other-secret-some-other-secret-9999"),
        orderflow_auth::engine::EngineRole::Operator,
        "eve",
        Duration::from_secs(600),
    )?;
    let expired = signed(&json!({
        "iss": orderflow_auth::ISSUER, "sub": "ann", "role": "operator",
        "iat": now() - 7200, "exp": now() - 3600,
    }));
    let unauthenticated = [
        ("", "no token"),
        ("Bearer", "an empty bearer"),
        ("Basic YWRtaW46b3JkZXJmbG93LWRldg==", "basic auth"),
        ("Bearer not-a-jwt", "garbage"),
        (&*format!("Bearer {other_key}"), "another deployment's key"),
        (&*format!("Bearer {expired}"), "an expired token"),
    ];
    let user = Uuid::now_v7().to_string();
    let customer = signed(&json!({
        "iss": orderflow_auth::ISSUER, "sub": user, "role": "customer",
        "iat": now(), "exp": now() + 600,
    }));
    let shop_admin = signed(&json!({
        "iss": orderflow_auth::ISSUER, "sub": user, "role": "admin",
        "iat": now(), "exp": now() + 600,
    }));
    let service = orderflow_testkit::service_token("order");
    let body = r#"{"reason":"x"}"#;
    for (method, route, uri) in &routes {
        let json = [("content-type", "application/json")];
        for (auth, what) in &unauthenticated {
            // An empty value sends no Authorization header at all.
            let mut headers = vec![("authorization", *auth)];
            headers.extend_from_slice(&json);
            let res = api
                .send(method.clone(), uri, &headers, Body::from(body))
                .await?;
            res.assert_problem(StatusCode::UNAUTHORIZED, Some("Authorization"));
            assert_eq!(
                res.header(header::WWW_AUTHENTICATE),
                "Bearer",
                "{method} {route} with {what}"
            );
        }
        for (token, what) in [(&customer, "a customer"), (&shop_admin, "a shop admin")] {
            let auth = format!("Bearer {token}");
            let res = api
                .send(
                    method.clone(),
                    uri,
                    &[("authorization", &auth), json[0]],
                    Body::from(body),
                )
                .await?;
            assert_eq!(
                res.status,
                StatusCode::FORBIDDEN,
                "{method} {route} as {what}: {}",
                res.text
            );
            res.assert_problem(StatusCode::FORBIDDEN, None);
        }
        // A service reaches its own routes only.
        let auth = format!("Bearer {service}");
        let res = api
            .send(
                method.clone(),
                uri,
                &[("authorization", &auth), json[0]],
                Body::from(body),
            )
            .await?;
        let for_services = orderflow_engine::api::auth::SERVICE_ROUTES
            .iter()
            .any(|(m, r)| *m == method.as_str() && r == route);
        if for_services {
            assert!(
                res.status != StatusCode::UNAUTHORIZED && res.status != StatusCode::FORBIDDEN,
                "{method} {route} as a service: {}",
                res.text
            );
        } else {
            res.assert_problem(StatusCode::FORBIDDEN, None);
        }
    }
    // Nothing any of them sent was recorded.
    let (n,): (i64,) = sqlx::query_as("select count(*) from history")
        .fetch_one(&api.env.pool)
        .await?;
    assert_eq!(n, 0);
    // Probes and scrapers need no token.
    for open in ["/health", "/ready", "/metrics"] {
        let res = api
            .send(Method::GET, open, &[("authorization", "")], Body::empty())
            .await?;
        assert_eq!(res.status, StatusCode::OK, "{open}: {}", res.text);
    }
    Ok(())
}

#[tokio::test]
async fn a_service_starts_and_cancels_as_itself() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let auth = format!("Bearer {}", orderflow_testkit::service_token("order"));
    let res = api
        .post_raw(
            "/api/v1/workflows",
            &[("authorization", &auth)],
            start_body(order_input(), json!({})).to_string(),
        )
        .await?;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
    let id: Uuid = res.json["id"].as_str().unwrap_or_default().parse()?;
    let res = api
        .post_raw(
            &format!("/api/v1/workflows/{id}/cancel"),
            &[("authorization", &auth)],
            json!({ "reason": "the customer cancelled" }).to_string(),
        )
        .await?;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    let last = api.history(id).await?.events.pop().expect("events");
    assert_eq!(
        last.event,
        Event::CancelRequested {
            actor: "service:order".into(),
            reason: "the customer cancelled".into()
        }
    );
    Ok(())
}

#[tokio::test]
async fn bodies_that_are_not_json_are_refused_with_415() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let id = api.start(json!({})).await?;
    let start = start_body(order_input(), json!({})).to_string();
    let cancel = format!("/api/v1/workflows/{id}/cancel");
    for (uri, body) in [
        ("/api/v1/workflows", start.as_str()),
        (
            &*format!("/api/v1/workflows/{id}/signals/ping"),
            r#"{"payload":1}"#,
        ),
        (cancel.as_str(), r#"{"reason":"x"}"#),
    ] {
        for kind in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ] {
            // What a page on another site can send without a preflight, or no type at all.
            let headers: &[(&str, &str)] = if kind.is_empty() {
                &[]
            } else {
                &[("content-type", kind)]
            };
            let res = api
                .send(Method::POST, uri, headers, Body::from(body.to_owned()))
                .await?;
            res.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("Content-Type"));
        }
        let res = api
            .send(
                Method::POST,
                uri,
                &[("content-type", "application/json; charset=utf-8")],
                Body::from(body.to_owned()),
            )
            .await?;
        assert!(res.status.is_success(), "{uri}: {}", res.text);
    }
    // Only the accepted signal and cancel were recorded, after the start.
    assert_eq!(api.history(id).await?.events.len(), 3);
    Ok(())
}
