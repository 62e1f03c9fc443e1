//! One-shot commands (`POST /exec`) and the command log (`GET /logs`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, authorize};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::ids;
use crate::runtime::ExecSpec;
use crate::state::AppState;
use crate::store::{CommandLogEntry, LogPage};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/projects/{p}/exec", post(exec))
        .route("/api/projects/{p}/logs", get(logs))
}

#[derive(Deserialize)]
struct ExecBody {
    argv: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    timeout_s: Option<u32>,
    #[serde(default)]
    label: Option<String>,
}

/// Longest timeout accepted for one command.
const MAX_TIMEOUT_S: u32 = 3600;

/// A command line for the log: words with spaces or quotes shown quoted.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn exec(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    let body = body?;
    if body.argv.is_empty() || body.argv[0].is_empty() {
        return Err(Error::BadRequest("argv must name a program".into()));
    }
    if body.argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::BadRequest("argv must not contain NUL bytes".into()));
    }
    let cwd = ids::file_path(body.cwd.as_deref().unwrap_or(""))?;
    let timeout_s = body.timeout_s.unwrap_or(60);
    if timeout_s == 0 || timeout_s > MAX_TIMEOUT_S {
        return Err(Error::BadRequest(format!(
            "timeout_s must be 1..{MAX_TIMEOUT_S}"
        )));
    }
    // A command may change files: hibernation waits for it (see write_gates).
    let writing = state.write_gates.enter(&p).await?;
    // 404 / 409 project_not_active, and counts as activity (idle hibernation).
    let agent = state.active_agent(&p).await?;
    let spec = ExecSpec {
        argv: body.argv.clone(),
        cwd,
        env: body.env,
        stdin: body.stdin.unwrap_or_default().into_bytes(),
        timeout_ms: timeout_s * 1000,
        max_output_bytes: state.config.max_exec_output,
    };
    let out = match &body.container {
        Some(c) => {
            ids::container_name(c)?;
            let container = state.container(&p, c).await?;
            let mut spec = spec;
            let mut env = container.env.clone();
            env.extend(spec.env);
            spec.env = env;
            state.runtime.container_exec(&p, c, spec).await
        }
        None => agent.run(spec).await,
    };
    // A failure is counted by the request middleware (agent RPC errors by
    // route), as every agent failure that becomes the answer is.
    let out = out?;
    writing.finish().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let label = body.label.unwrap_or_else(|| match &body.container {
        Some(c) => format!("{c}: exec"),
        None => "exec".into(),
    });
    state
        .log_command(
            CommandLogEntry::new(&p, label, shell_join(&body.argv))
                .took_ms(out.duration_ms)
                .exited(out.exit_code, stdout.clone(), stderr.clone()),
        )
        .await;
    Ok(Json(json!({
        "exit_code": out.exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "duration_ms": out.duration_ms,
        "timed_out": out.timed_out,
        "truncated": out.truncated,
    })))
}

/// `?limit=&before=` of `GET /logs`.
#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    before: Option<i64>,
}

/// Entries per page of `GET /logs` by default, and at most.
const LOG_PAGE: u32 = 100;
const MAX_LOG_PAGE: u32 = 1000;

/// `GET /logs`: the newest `limit` entries (100 by default, at most 1000)
/// with an id below `before`, oldest first; the next page back is
/// `?before=<the first entry's id>`.
async fn logs(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<CommandLogEntry>>> {
    authorize(&claims, &p)?;
    let limit = q.limit.unwrap_or(LOG_PAGE);
    if limit == 0 || limit > MAX_LOG_PAGE {
        return Err(Error::BadRequest(format!(
            "limit must be 1..{MAX_LOG_PAGE}"
        )));
    }
    state.project(&p).await?;
    let page = LogPage {
        limit,
        before: q.before,
    };
    Ok(Json(state.store.list_logs(&p, page).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_join_quotes() {
        let argv: Vec<String> = ["sh", "-c", "echo hi", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(super::shell_join(&argv), "sh -c 'echo hi' 'it'\\''s'");
    }
}
