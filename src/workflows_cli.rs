//! `orderflow workflows list|show|retry|cancel|terminate|resolve`: the admin UI's everyday operations from
//! a shell, through the engine's REST API (so the same checks apply and every action lands in the
//! saga's history with the operator as its actor). The CLI is an operator: it sends
//! `--token` (`ORDERFLOW_ENGINE_TOKEN`), or, where the deployment's signing secret is at hand
//! (`ORDERFLOW_JWT_SECRET`), signs a short-lived operator token for `--operator` (`$USER`).

use std::fmt::Write as _;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::{Client, Response};
use serde_json::{Value, json};

/// Where the API is and what to do.
#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    /// The engine's REST API.
    #[arg(
        long,
        env = "ORDERFLOW_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// An operator's bearer token for the engine API (role `operator`).
    #[arg(
        long,
        env = "ORDERFLOW_ENGINE_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Without `--token`: the deployment's signing secret, to sign an operator token for
    /// `--operator` valid for five minutes.
    #[arg(
        long,
        env = "ORDERFLOW_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,
    /// Who signs in with `--jwt-secret`: recorded as `operator:<name>` in the saga's history
    /// (default `$USER`).
    #[arg(long, env = "USER", default_value = "cli", global = true)]
    pub operator: String,
    #[command(subcommand)]
    pub command: WorkflowsCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Workflows newest first, filtered.
    List {
        /// running, compensating, completed, compensated, needs_attention, cancelled, terminated.
        #[arg(long)]
        status: Option<String>,
        /// Workflow type, e.g. `order`.
        #[arg(long = "type")]
        workflow_type: Option<String>,
        /// A business key value (order id, user id).
        #[arg(long)]
        business_key: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        created_after: Option<String>,
        /// Created before (RFC 3339).
        #[arg(long)]
        created_before: Option<String>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One workflow: status, reason and each step's state.
    Show { id: String },
    /// Run the waiting or stuck step now.
    Retry(Action),
    /// Undo the saga: compensate every completed step.
    Cancel(Action),
    /// Stop the saga where it stands, compensating nothing.
    Terminate(Action),
    /// Mark a step's failing compensation as repaired by hand; the saga goes on compensating.
    Resolve {
        #[command(flatten)]
        action: Action,
        /// The step whose compensation kept failing (the one the saga's reason names).
        #[arg(long)]
        step: String,
    },
}

/// An operator action on one workflow.
#[derive(Debug, Args)]
pub struct Action {
    pub id: String,
    /// Why; recorded in the saga's history with the token's operator as the actor.
    #[arg(long)]
    pub reason: String,
}

pub async fn run(args: WorkflowsArgs) -> anyhow::Result<()> {
    let client = authenticated(&args)?;
    let out = execute(&client, &args).await?;
    print!("{out}");
    Ok(())
}

/// An HTTP client that sends the operator's token on every request.
pub fn authenticated(args: &WorkflowsArgs) -> anyhow::Result<Client> {
    let token = match (&args.token, &args.jwt_secret) {
        (Some(t), _) => t.clone(),
        (None, Some(secret)) => orderflow_auth::engine::issue(
            &orderflow_auth::KeyRing::new(secret),
            orderflow_auth::engine::EngineRole::Operator,
            &args.operator,
            std::time::Duration::from_secs(300),
        )?,
        (None, None) => bail!(
            "the engine API needs an operator token: set ORDERFLOW_ENGINE_TOKEN (--token), or \
             ORDERFLOW_JWT_SECRET to sign one (`orderflow dev` prints one)"
        ),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a valid header value")?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(Client::builder().default_headers(headers).build()?)
}

/// Runs the command and returns what it prints.
pub async fn execute(client: &Client, args: &WorkflowsArgs) -> anyhow::Result<String> {
    let base = format!("{}/api/v1", args.api.trim_end_matches('/'));
    match &args.command {
        WorkflowsCommand::List {
            status,
            workflow_type,
            business_key,
            created_after,
            created_before,
            cursor,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            let optional = [
                ("status", status),
                ("type", workflow_type),
                ("business_key", business_key),
                ("created_after", created_after),
                ("created_before", created_before),
                ("cursor", cursor),
            ];
            query.extend(
                optional
                    .into_iter()
                    .filter_map(|(k, v)| v.clone().map(|v| (k, v))),
            );
            let res = client
                .get(format!("{base}/workflows"))
                .query(&query)
                .send()
                .await
                .with_context(|| format!("reaching the engine at {}", args.api))?;
            let body = ok_json(res).await?;
            if args.json {
                return Ok(format!("{:#}\n", body));
            }
            Ok(list_table(&body))
        }
        WorkflowsCommand::Show { id } => {
            let res = client
                .get(format!("{base}/workflows/{id}"))
                .send()
                .await
                .with_context(|| format!("reaching the engine at {}", args.api))?;
            let body = ok_json(res).await?;
            if args.json {
                return Ok(format!("{:#}\n", body));
            }
            Ok(detail(&body))
        }
        WorkflowsCommand::Retry(a) => act(client, &base, args, "retry", a).await,
        WorkflowsCommand::Cancel(a) => act(client, &base, args, "cancel", a).await,
        WorkflowsCommand::Terminate(a) => act(client, &base, args, "terminate", a).await,
        WorkflowsCommand::Resolve { action, step } => {
            let extra = json!({ "step": step });
            act_with(client, &base, args, "resolve", action, extra).await
        }
    }
}

async fn act(
    client: &Client,
    base: &str,
    args: &WorkflowsArgs,
    action: &str,
    a: &Action,
) -> anyhow::Result<String> {
    act_with(client, base, args, action, a, json!({})).await
}

/// [`act`] with more fields in the request body (`resolve`'s step). The engine records the
/// authenticated caller as the actor.
async fn act_with(
    client: &Client,
    base: &str,
    args: &WorkflowsArgs,
    action: &str,
    a: &Action,
    extra: Value,
) -> anyhow::Result<String> {
    let res = client
        .post(format!("{base}/workflows/{}/{action}", a.id))
        .json(&{
            let mut body = json!({ "reason": a.reason });
            if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
                body.extend(extra);
            }
            body
        })
        .send()
        .await
        .with_context(|| format!("reaching the engine at {}", args.api))?;
    let body = ok_json(res).await?;
    if args.json {
        return Ok(format!("{:#}\n", body));
    }
    Ok(format!(
        "{action}: recorded as event #{} of {}; the saga is {}\n",
        body["seq"],
        a.id,
        body["status"].as_str().unwrap_or("?")
    ))
}

/// The body of a 2xx answer; otherwise the problem's detail (and field) as the error.
async fn ok_json(res: Response) -> anyhow::Result<Value> {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let detail = body["detail"].as_str().unwrap_or("no detail");
    match body["field"].as_str() {
        Some(field) => bail!("{status}: {field}: {detail}"),
        None => bail!("{status}: {detail}"),
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn list_table(body: &Value) -> String {
    let mut out = format!(
        "{:<36}  {:<8}  {:<15}  {:<24}  REASON\n",
        "ID", "TYPE", "STATUS", "CREATED"
    );
    for w in body["items"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<36}  {:<8}  {:<15}  {:<24}  {}",
            text(w, "id"),
            text(w, "type"),
            text(w, "status"),
            text(w, "created_at")
                .get(..23)
                .unwrap_or(text(w, "created_at")),
            text(w, "reason"),
        );
    }
    if let Some(next) = body["next_cursor"].as_str() {
        let _ = writeln!(out, "more: --cursor {next}");
    }
    out
}

fn detail(w: &Value) -> String {
    let mut out = format!(
        "{} {} v{}: {}\n",
        text(w, "type"),
        text(w, "id"),
        w["version"],
        text(w, "status")
    );
    if let Some(r) = w["reason"].as_str() {
        let _ = writeln!(out, "reason: {r}");
    }
    let _ = writeln!(
        out,
        "\n{:<14}  {:<20}  {:<13}  {:<12}  {:>8}  LAST ERROR",
        "STEP", "ACTIVITY", "KIND", "STATE", "ATTEMPTS"
    );
    for s in w["steps"].as_array().into_iter().flatten() {
        let err = match &s["last_error"] {
            Value::Object(e) => format!(
                "{}: {}",
                e.get("code").and_then(Value::as_str).unwrap_or(""),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<14}  {:<20}  {:<13}  {:<12}  {:>8}  {err}",
            text(s, "name"),
            text(s, "activity"),
            text(s, "kind"),
            text(s, "status"),
            s["attempts"],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use orderflow_core::Registry;
    use orderflow_engine::api::{self, AppState};
    use orderflow_testkit::{TestEnv, sagas, start_order};

    use super::*;

    const SECRET: &str = "cli-test-secret-cli-test-secret-cli-0001";

    fn args(api: &str, command: WorkflowsCommand) -> WorkflowsArgs {
        WorkflowsArgs {
            api: api.to_owned(),
            json: false,
            token: None,
            jwt_secret: Some(SECRET.into()),
            operator: "ops".into(),
            command,
        }
    }

    /// The CLI against the engine's real REST API on port 0 (no engine loops: the saga stays
    /// where it started, which is all these commands need).
    #[tokio::test]
    async fn lists_shows_and_acts_through_the_rest_api() -> anyhow::Result<()> {
        let env = TestEnv::new().await?;
        let applier = env.applier(Arc::new(Registry::new().with(sagas::fast_order())));
        let app = api::router(
            AppState::standalone(env.pool.clone(), applier.clone(), env.queue()),
            api::ApiAuth::new(orderflow_auth::KeyRing::new(SECRET)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let id = start_order(&env, &applier).await?;
        let other = start_order(&env, &applier).await?;
        let client = authenticated(&args(&url, WorkflowsCommand::Show { id: id.to_string() }))?;
        let anonymous = execute(
            &Client::new(),
            &args(&url, WorkflowsCommand::Show { id: id.to_string() }),
        )
        .await
        .expect_err("no token");
        assert!(anonymous.to_string().starts_with("401"), "{anonymous}");

        let list = execute(
            &client,
            &args(
                &url,
                WorkflowsCommand::List {
                    status: Some("running".into()),
                    workflow_type: None,
                    business_key: None,
                    created_after: None,
                    created_before: None,
                    cursor: None,
                    limit: 1,
                },
            ),
        )
        .await?;
        assert!(list.contains(&other.to_string()), "newest first: {list}");
        assert!(list.contains("more: --cursor"), "{list}");

        let show = execute(
            &client,
            &args(&url, WorkflowsCommand::Show { id: id.to_string() }),
        )
        .await?;
        assert!(show.contains("running"), "{show}");
        assert!(show.contains("inventory.reserve"), "{show}");

        let done = execute(
            &client,
            &args(
                &url,
                WorkflowsCommand::Terminate(Action {
                    id: id.to_string(),
                    reason: "duplicate order".into(),
                }),
            ),
        )
        .await?;
        assert!(done.contains("the saga is terminated"), "{done}");
        assert_eq!(env.status(id).await?, "terminated");
        let (actor,): (String,) = sqlx::query_as(
            "select event->>'actor' from history where workflow_id = $1 \
             and event->>'type' = 'terminate_requested'",
        )
        .bind(id)
        .fetch_one(&env.pool)
        .await?;
        assert_eq!(actor, "operator:ops", "the actor is the token's operator");

        let refused = execute(
            &client,
            &args(
                &url,
                WorkflowsCommand::Retry(Action {
                    id: id.to_string(),
                    reason: "again".into(),
                }),
            ),
        )
        .await
        .expect_err("a terminated saga cannot be retried");
        assert!(refused.to_string().starts_with("409"), "{refused}");

        let bad = execute(
            &client,
            &args(&url, WorkflowsCommand::Show { id: "x".into() }),
        )
        .await
        .expect_err("not an id");
        assert!(bad.to_string().contains("400 Bad Request: id:"), "{bad}");
        Ok(())
    }

    /// `resolve` on a saga whose compensation failed for good: recorded through the REST API,
    /// the saga finishes compensating; a step with nothing to resolve is the API's 409.
    #[tokio::test]
    async fn resolves_a_failed_compensation_through_the_rest_api() -> anyhow::Result<()> {
        use orderflow_core::{ActivityError, Event, TaskId, WorkflowId};
        let env = TestEnv::new().await?;
        let applier = env.applier(Arc::new(Registry::new().with(sagas::fast_order())));
        let app = api::router(
            AppState::standalone(env.pool.clone(), applier.clone(), env.queue()),
            api::ApiAuth::new(orderflow_auth::KeyRing::new(SECRET)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let id = start_order(&env, &applier).await?;
        let wf = WorkflowId(id);
        let task = |what: &str| TaskId(wf.derive(&format!("task/{what}/1")));
        // Reserve succeeds, the card is declined, and the release fails for good.
        let events = [
            Event::ActivityCompleted {
                task_id: task("reserve/forward"),
                output: json!({"reservation_id": "r1"}),
            },
            Event::ActivityFailed {
                task_id: task("charge/forward"),
                error: ActivityError::permanent("card_declined", "declined"),
            },
            Event::ActivityFailed {
                task_id: task("reserve/compensate"),
                error: ActivityError::permanent("gone", "the reservation table was dropped"),
            },
        ];
        for e in events {
            env.committer(&applier).apply(vec![(wf, e)], None).await?;
        }
        assert_eq!(env.status(id).await?, "needs_attention");
        let resolve = |step: &str| {
            args(
                &url,
                WorkflowsCommand::Resolve {
                    action: Action {
                        id: id.to_string(),
                        reason: "released the units by hand".into(),
                    },
                    step: step.into(),
                },
            )
        };
        let client = authenticated(&resolve("charge"))?;
        let wrong = execute(&client, &resolve("charge"))
            .await
            .expect_err("charge has no failing compensation");
        assert!(wrong.to_string().starts_with("409"), "{wrong}");
        let done = execute(&client, &resolve("reserve")).await?;
        assert!(done.contains("the saga is compensated"), "{done}");
        assert_eq!(env.status(id).await?, "compensated");
        Ok(())
    }

    #[test]
    fn resolve_without_its_step_names_the_flag() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            w: WorkflowsArgs,
        }
        let err = Cli::try_parse_from(["x", "resolve", "0194", "--reason", "r"]).unwrap_err();
        assert!(err.to_string().contains("--step"), "{err}");
    }
}
