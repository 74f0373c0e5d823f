//! One address for the whole platform: a request under `/api/v1/<resource>` goes to the service
//! that owns the resource, the way Kong routes by path in production (`deploy/kong`), and
//! anything else to the engine (its API, the admin UI, `/health`). Each service keeps its own
//! router, state and metrics; the gateway only picks one.

use axum::{Router, extract::Request};
use tower::ServiceExt as _;

/// Routes by path prefix: the first `(prefix, router)` whose prefix is the path or a parent of
/// it answers; otherwise `rest` does.
pub fn router(routes: Vec<(String, Router)>, rest: Router) -> Router {
    Router::new().fallback(move |req: Request| {
        let routes = routes.clone();
        let rest = rest.clone();
        async move {
            let path = req.uri().path();
            let target = routes
                .iter()
                .find(|(prefix, _)| owns(prefix, path))
                .map_or(rest, |(_, r)| r.clone());
            match target.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    })
}

/// Whether `path` is `prefix` or under it (`/api/v1/orders` owns `/api/v1/orders/1`, not
/// `/api/v1/orders-archive`).
fn owns(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode, routing::get};

    use super::*;

    fn answering(name: &'static str) -> Router {
        Router::new().fallback(move || async move { name })
    }

    async fn who(app: &Router, path: &str) -> String {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn each_prefix_goes_to_its_service_and_the_rest_to_the_engine() {
        let app = router(
            vec![
                ("/api/v1/orders".to_owned(), answering("order")),
                ("/api/v1/products".to_owned(), answering("inventory")),
            ],
            Router::new()
                .route("/health", get(|| async { "engine" }))
                .fallback(|| async { "engine" }),
        );
        assert_eq!(who(&app, "/api/v1/orders").await, "order");
        assert_eq!(who(&app, "/api/v1/orders/42/cancel").await, "order");
        assert_eq!(who(&app, "/api/v1/products?limit=3").await, "inventory");
        assert_eq!(who(&app, "/api/v1/orders-archive").await, "engine");
        assert_eq!(who(&app, "/api/v1/workflows").await, "engine");
        assert_eq!(who(&app, "/health").await, "engine");
    }
}
