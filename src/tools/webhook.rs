//! HTTP webhooks: the call's arguments as a JSON body (POST, PUT) or a plain GET,
//! bounded as [`http`] says.

use std::time::Duration;

use serde_json::Value;

use super::{http, http_failure, Failure};

const NAME: &str = "the webhook";

/// Calls `url` and returns the start of the answer.
pub fn call(method: &str, url: &str, arguments: &Value, timeout: Duration) -> Result<String, Failure> {
    let request = http::agent(timeout).request(method, url);
    let response = if method == "GET" { request.call() } else { request.send_json(arguments.clone()) };
    let response = response.map_err(|e| http_failure(NAME, e))?;
    Ok(http::read_body(NAME, response)?.chars().take(200).collect())
}
