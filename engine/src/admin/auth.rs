//! Who may use the admin UI. An operator logs in with the account configured for the process;
//! the session lives in the engine database's `admin_sessions` (so any engine replica serves it
//! and logout ends it everywhere) behind a random token in an HttpOnly, SameSite=Strict cookie. Each session has its
//! own CSRF token, which every POST form carries and [`Operator::check_csrf`] compares; the login
//! form gets a token of its own in a short-lived cookie (double submit), since there is no
//! session yet to hold one.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        FromRequestParts, Query, State,
        rejection::{FormRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AdminError, AdminState, views};

/// The session cookie: a random token whose hash keys `admin_sessions`.
pub const SESSION_COOKIE: &str = "orderflow_admin";
/// The login form's CSRF token (double submit), set when the form is shown.
pub const LOGIN_COOKIE: &str = "orderflow_admin_login";
/// A one-shot message for the next page (what an action did, or why it was refused).
pub const FLASH_COOKIE: &str = "orderflow_admin_flash";

/// A logged-in operator, taken from the session cookie. Handlers that take one can only be
/// reached with a session; without one the request is sent to the login page.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who the history records as the actor of this operator's actions (`admin:<user>`).
    pub actor: String,
    /// The session's CSRF token, embedded in every form of its pages.
    pub csrf: String,
}

impl Operator {
    /// Refuses a POST whose form does not carry this session's CSRF token.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), AdminError> {
        match given {
            Some(g) if ct_eq(g.as_bytes(), self.csrf.as_bytes()) => Ok(()),
            Some(_) => Err(AdminError::forbidden(
                "csrf",
                "the form's CSRF token does not match this session; reload the page and try again",
            )),
            None => Err(AdminError::forbidden(
                "csrf",
                "the form carries no CSRF token",
            )),
        }
    }
}

impl FromRequestParts<AdminState> for Operator {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, st: &AdminState) -> Result<Self, AdminError> {
        // After login a GET goes back where it was; a refused POST goes to the list instead of
        // turning into a GET of an action's URL.
        let next = match (&parts.method, parts.uri.path_and_query()) {
            (&Method::GET, Some(pq)) => pq.as_str().to_owned(),
            _ => "/admin/workflows".to_owned(),
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(AdminError::LoginRequired { next });
        };
        match st.db.session(&sha256(&token)).await? {
            Some(session) => Ok(Operator {
                actor: session.actor,
                csrf: session.csrf_token,
            }),
            None => Err(AdminError::LoginRequired { next }),
        }
    }
}

/// Failed logins per user name, so a password cannot be guessed at network speed. Kept per
/// process: each replica allows its own few attempts, which still stops brute force.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    const MAX_FAILURES: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(300);

    fn blocked(&self, user: &str) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(user)
            .is_some_and(|(n, since)| *n >= Self::MAX_FAILURES && since.elapsed() < Self::WINDOW)
    }

    fn failed(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, since)| since.elapsed() < Self::WINDOW);
        }
        let entry = map.entry(user.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= Self::WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(user);
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /admin/login`: the form, or straight on when already logged in.
pub async fn login_page(
    State(st): State<AdminState>,
    headers: HeaderMap,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let next = safe_next(q.ok().and_then(|Query(q)| q.next).as_deref());
    if let Some(token) = cookie(&headers, SESSION_COOKIE)
        && st.db.session(&sha256(&token)).await?.is_some()
    {
        return Ok(Redirect::to(&next).into_response());
    }
    Ok(login_form(&st, &next, None, StatusCode::OK))
}

fn login_form(st: &AdminState, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_token();
    let page = views::login(next, &csrf, error, st.config.credential.is_some());
    let cookie = set_cookie(LOGIN_COOKIE, &csrf, Some(600), st.config.secure_cookies);
    (
        status,
        [
            (header::SET_COOKIE, cookie),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
        ],
        page.into_string(),
    )
        .into_response()
}

/// `POST /admin/login`: checks the account and opens a session.
pub async fn login(
    State(st): State<AdminState>,
    headers: HeaderMap,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AdminError> {
    let f = Fields::from(form)?;
    let expected = cookie(&headers, LOGIN_COOKIE);
    match (f.one("csrf"), expected.as_deref()) {
        (Some(given), Some(exp)) if ct_eq(given.as_bytes(), exp.as_bytes()) => {}
        _ => {
            return Err(AdminError::forbidden(
                "csrf",
                "the login form's CSRF token is missing or stale; reload the login page",
            ));
        }
    }
    let user = f.required("username")?.trim().to_owned();
    let password = f.required("password")?;
    let next = safe_next(f.one("next"));
    if st.throttle.blocked(&user) {
        return Err(AdminError::TooManyAttempts(
            "too many failed logins for this user; try again in a few minutes".into(),
        ));
    }
    let ok = st.config.credential.as_ref().is_some_and(|c| {
        // Hashing first makes both sides the same length, so the comparison takes the same
        // time whatever was typed.
        let user_ok = ct_eq(&sha256(&user), &sha256(&c.user));
        let pass_ok = ct_eq(&sha256(password), &sha256(&c.password));
        user_ok & pass_ok
    });
    if !ok {
        st.throttle.failed(&user);
        tracing::warn!(user = %user, "admin login failed");
        return Ok(login_form(
            &st,
            &next,
            Some("Wrong user name or password."),
            StatusCode::UNAUTHORIZED,
        ));
    }
    st.throttle.succeeded(&user);
    let token = random_token();
    let csrf = random_token();
    let ttl = st.config.session_ttl;
    st.db
        .open_session(&sha256(&token), &format!("admin:{user}"), &csrf, ttl)
        .await?;
    tracing::info!(user = %user, "admin logged in");
    let secure = st.config.secure_cookies;
    let mut res = Redirect::to(&next).into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, Some(ttl.as_secs()), secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", Some(0), secure),
    );
    Ok(res)
}

/// `POST /admin/logout`: ends the session everywhere.
pub async fn logout(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AdminError> {
    let f = Fields::from(form)?;
    op.check_csrf(f.one("csrf"))?;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        st.db.close_session(&sha256(&token)).await?;
    }
    let mut res = Redirect::to("/admin/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Some(0), st.config.secure_cookies),
    );
    Ok(res)
}

/// A form's fields in order. Read by hand rather than into a struct so that repeated fields
/// (checked boxes) are kept and a missing field is answered by name.
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn from(
        form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
    ) -> Result<Self, AdminError> {
        form.map(|axum::Form(pairs)| Fields(pairs))
            .map_err(|e| AdminError::bad("body", e.body_text()))
    }

    /// The first value of `name`, if any.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, if it is not blank.
    pub fn filled(&self, name: &str) -> Option<&str> {
        self.one(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `name`, or 400 naming the field.
    pub fn required(&self, name: &str) -> Result<&str, AdminError> {
        self.filled(name)
            .ok_or_else(|| AdminError::bad(name, format!("`{name}` is required")))
    }
}

/// Where to go after login: only a path inside the admin UI, so the login page cannot be used
/// to send someone elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin")
                && !n.starts_with("/admin/login")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/admin/workflows".to_owned(),
    }
}

/// The value of cookie `name` from any `Cookie` header.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value scoped to the admin UI, HttpOnly and SameSite=Strict. `max_age` of
/// `Some(0)` deletes the cookie; `value` must already be cookie-safe.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// 256 random bits from the thread's CSPRNG (seeded by the OS), hex-encoded.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Equality whose time does not depend on where the inputs differ (`subtle`, whose comparison
/// the optimiser cannot turn into an early exit). Inputs of different lengths are unequal; the
/// tokens compared are all of one length, and passwords are hashed first.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_admin_ui() {
        assert_eq!(safe_next(Some("/admin/stuck?x=1")), "/admin/stuck?x=1");
        for evil in [
            "https://evil.example/",
            "//evil.example",
            "/admin//evil",
            "/admin/login",
            "/api/v1/workflows",
            "/admin\\@evil",
        ] {
            assert_eq!(safe_next(Some(evil)), "/admin/workflows", "{evil}");
        }
        assert_eq!(safe_next(None), "/admin/workflows");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; orderflow_admin=tok"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        let t = random_token();
        assert!(ct_eq(t.as_bytes(), t.clone().as_bytes()));
        let mut other = t.clone().into_bytes();
        other[63] ^= 1;
        assert!(!ct_eq(t.as_bytes(), &other));
        assert!(!ct_eq(t.as_bytes(), &t.as_bytes()[..63]));
        assert!(!ct_eq(b"", t.as_bytes()));
    }

    #[test]
    fn throttle_blocks_after_repeated_failures() {
        let t = LoginThrottle::default();
        for _ in 0..LoginThrottle::MAX_FAILURES {
            assert!(!t.blocked("eve"));
            t.failed("eve");
        }
        assert!(t.blocked("eve"));
        assert!(!t.blocked("ada"));
        t.succeeded("eve");
        assert!(!t.blocked("eve"));
    }
}
