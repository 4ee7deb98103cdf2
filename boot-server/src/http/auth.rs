//! Who calls the admin API and what they may do, decided before any body is
//! read; and the audit log of every state-changing call.
//!
//! Callers: the admin Unix socket (file permissions authenticate; acts as
//! admin), the bootstrap admin token (`admin.token` or the config's
//! `admin_token`), and the API tokens of the store (admin, read-only, or an
//! operator of named environments). A missing or unknown token gets 401; a
//! known one asking for more than its role allows gets 403. Every call
//! that is not a read (`GET`/`HEAD`) — allowed or refused — is recorded as
//! an `audit` event: the token's name, role, method, path, status and
//! outcome (never the token; an unknown token by its short fingerprint).

use super::{ApiError, AppState, ViaAdminSocket};
use crate::control::ErrorKind;
use crate::model::{ApiToken, EventKind, TokenRole};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// Name of the bootstrap admin token in the audit log.
pub const BOOTSTRAP_NAME: &str = "admin";
/// Name of callers over the admin Unix socket in the audit log.
pub const SOCKET_NAME: &str = "admin-socket";

/// The authenticated caller of a request (a request extension after
/// [`authorize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name ([`BOOTSTRAP_NAME`], [`SOCKET_NAME`] or an API token's).
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// For operators: the environments it may operate.
    pub environments: Vec<String>,
}

impl Principal {
    fn admin(name: &str) -> Principal {
        Principal {
            name: name.to_string(),
            role: TokenRole::Admin,
            environments: Vec::new(),
        }
    }
}

impl From<ApiToken> for Principal {
    fn from(t: ApiToken) -> Self {
        Principal {
            name: t.name,
            role: t.role,
            environments: t.environments,
        }
    }
}

/// Whether a method only reads.
pub fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Paths only an admin may touch, even to read: the state database copy
/// (it holds every digest), the token table and environment bundles.
fn admin_only(path: &str) -> bool {
    path == "/api/backup"
        || path == "/api/tokens"
        || path.starts_with("/api/tokens/")
        // Bundles carry whole disks.
        || path == "/api/bundles"
        || (path.starts_with("/api/environments/") && path.ends_with("/export"))
}

/// The environment a state-changing call operates, when it is one an
/// operator may be given: changing an environment, activating,
/// deactivating, scaling it, adding, removing or quarantining a node, its
/// policy. (Creating and deleting environments stay with admins.)
pub fn operated_environment(method: &Method, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/environments/")?;
    let (name, action) = match rest.split_once('/') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let operates = matches!(
        (method.as_str(), action),
        ("PATCH", None)
            | (
                "POST",
                Some(
                    "activate"
                        | "deactivate"
                        | "scale"
                        | "add-node"
                        | "remove-node"
                        | "clone"
                        | "quarantine"
                ),
            )
            | ("PUT", Some("policy"))
    );
    if !operates || name.is_empty() {
        return None;
    }
    // The same decoding axum's `Path` applies to the handler's argument.
    percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()
        .map(|n| n.into_owned())
}

/// Whether `p` may call `method path`; why not.
pub fn allows(p: &Principal, method: &Method, path: &str) -> Result<(), String> {
    match p.role {
        TokenRole::Admin => Ok(()),
        _ if admin_only(path) => Err(format!(
            "token {:?} is {}: only an admin token may read backups, manage tokens or export and import environments",
            p.name,
            p.role.as_str()
        )),
        _ if is_read(method) => Ok(()),
        TokenRole::ReadOnly => Err(format!(
            "token {:?} is read-only: it cannot change anything",
            p.name
        )),
        TokenRole::Operator => match operated_environment(method, path) {
            Some(env) if p.environments.contains(&env) => Ok(()),
            Some(env) => Err(format!(
                "token {:?} may operate environment(s) {}, not {env:?}",
                p.name,
                p.environments.join(", ")
            )),
            None => Err(format!(
                "token {:?} is an operator token: it may read, and operate environment(s) {} \
                 (change, activate, deactivate, scale, add/remove/quarantine nodes, policy)",
                p.name,
                p.environments.join(", ")
            )),
        },
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(boot_proto::ADMIN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Who the request comes from: 401 unless over the admin socket or with
/// the bootstrap admin token or a known API token.
async fn authenticate(
    s: &AppState,
    via_socket: bool,
    given: Option<String>,
) -> Result<Principal, (ApiError, Option<String>)> {
    if via_socket {
        return Ok(Principal::admin(SOCKET_NAME));
    }
    let Some(given) = given else {
        return Err((
            ApiError::new(
                ErrorKind::Unauthorized,
                "a token is required (Authorization: Bearer <token>)",
            ),
            None,
        ));
    };
    if crate::secret::constant_time_eq(given.as_bytes(), s.admin_token.as_bytes()) {
        return Ok(Principal::admin(BOOTSTRAP_NAME));
    }
    match s.control.token_by_secret(&given).await {
        Ok(Some(t)) => Ok(t.into()),
        Ok(None) => Err((
            ApiError::new(
                ErrorKind::Unauthorized,
                "unknown or revoked token (Authorization: Bearer <token>)",
            ),
            Some(crate::secret::fingerprint(&given)),
        )),
        Err(e) => Err((ApiError(e), Some(crate::secret::fingerprint(&given)))),
    }
}

/// The admin API's authorisation layer: authenticates, checks the role
/// against the method and path (before any handler reads the body), and
/// audits every call that is not a read.
pub async fn authorize(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let changing = !is_read(&method);
    let via_socket = req.extensions().get::<ViaAdminSocket>().is_some();
    let given = bearer(req.headers()).map(str::to_string);
    let principal = match authenticate(&s, via_socket, given).await {
        Ok(p) => p,
        Err((e, fingerprint)) => {
            let resp = e.into_response();
            if changing {
                audit(&s, None, fingerprint, &method, &path, &resp, "unauthorized");
            }
            return resp;
        }
    };
    if let Err(why) = allows(&principal, &method, &path) {
        let resp = ApiError::new(ErrorKind::Forbidden, why).into_response();
        if changing {
            audit(
                &s,
                Some(&principal),
                None,
                &method,
                &path,
                &resp,
                "forbidden",
            );
        }
        return resp;
    }
    req.extensions_mut().insert(principal.clone());
    let resp = next.run(req).await;
    if changing {
        let outcome = if resp.status().is_success() {
            "ok"
        } else {
            "failed"
        };
        audit(&s, Some(&principal), None, &method, &path, &resp, outcome);
    }
    resp
}

fn audit(
    s: &AppState,
    who: Option<&Principal>,
    fingerprint: Option<String>,
    method: &Method,
    path: &str,
    resp: &Response,
    outcome: &str,
) {
    s.control.events.emit(
        None,
        EventKind::Audit,
        json!({
            "token": who.map(|p| p.name.as_str()),
            "role": who.map(|p| p.role),
            "credential": fingerprint,
            "method": method.as_str(),
            "path": path,
            "status": resp.status().as_u16(),
            "outcome": outcome,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(envs: &[&str]) -> Principal {
        Principal {
            name: "ops".into(),
            role: TokenRole::Operator,
            environments: envs.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn roles_decide_by_method_and_path() {
        let admin = Principal::admin("a");
        let ro = Principal {
            role: TokenRole::ReadOnly,
            ..op(&[])
        };
        let web = op(&["web"]);
        for (m, p) in [
            (Method::POST, "/api/nodes"),
            (Method::DELETE, "/api/tokens/x"),
            (Method::GET, "/api/backup"),
        ] {
            assert!(allows(&admin, &m, p).is_ok());
        }
        assert!(allows(&ro, &Method::GET, "/api/nodes").is_ok());
        assert!(allows(&ro, &Method::POST, "/api/environments/web/scale").is_err());
        assert!(allows(&ro, &Method::GET, "/api/backup").is_err());
        assert!(allows(&ro, &Method::GET, "/api/tokens").is_err());
        assert!(allows(&web, &Method::POST, "/api/environments/web/scale").is_ok());
        assert!(allows(&web, &Method::PUT, "/api/environments/web/policy").is_ok());
        assert!(allows(&web, &Method::PATCH, "/api/environments/web").is_ok());
        assert!(allows(&web, &Method::POST, "/api/environments/db/scale").is_err());
        assert!(allows(&web, &Method::DELETE, "/api/environments/web").is_err());
        assert!(allows(&web, &Method::POST, "/api/environments").is_err());
        assert!(allows(&web, &Method::POST, "/api/nodes").is_err());
        assert!(allows(&web, &Method::PUT, "/api/environments/web/scale").is_err());
        // The name is compared as the handler sees it (percent-decoded).
        assert!(allows(
            &op(&["w b"]),
            &Method::POST,
            "/api/environments/w%20b/scale"
        )
        .is_ok());
        assert!(allows(&web, &Method::POST, "/api/environments/w%65b/scale").is_ok());
    }
}
