//! HTTP webhooks: the call's arguments as a JSON body (POST, PUT) or a plain GET.

use std::time::Duration;

use serde_json::Value;

use super::{http_failure, Failure};

const NAME: &str = "the webhook";

/// Calls `url` and returns the start of the answer.
pub fn call(method: &str, url: &str, arguments: &Value, timeout: Duration) -> Result<String, Failure> {
    let request = ureq::request(method, url).timeout(timeout);
    let response = if method == "GET" { request.call() } else { request.send_json(arguments.clone()) };
    let response = response.map_err(|e| http_failure(NAME, e))?;
    Ok(response.into_string().unwrap_or_default().chars().take(200).collect())
}
