//! `channels.js`: the browser client, compiled into the program, to mount at a route of yours.
//!
//! One dependency-free ES module that connects to a consumer and keeps the connection up:
//! reconnect with exponential backoff and jitter, a heartbeat, automatic fallback from
//! WebSocket to server-sent events + POST to long polling, resume from the last position
//! (`?since=`), a bounded queue for messages sent while offline, and an event for every change
//! of state. Its API and behaviour are described in `docs/client.md`; the file itself is
//! `channels-core/src/client/channels.js` in the repository, usable as a plain file too.
//!
//! ```
//! use channels_core::client::channels_js;
//! use channels_core::routing::Router;
//!
//! // The page then loads it with `import { Channel } from "/static/channels.js";`.
//! let router = Router::new().http("/static/channels.js", channels_js());
//! # let _ = router;
//! ```
//!
//! The heartbeat needs nothing from your consumers: the server answers an empty text frame
//! with an empty text frame itself, before any consumer sees it (browsers cannot send or see
//! WebSocket pings). See [`WebsocketConsumer::receive`](crate::consumer::WebsocketConsumer::receive).

use http::{StatusCode, header};

use crate::http::{HttpHandler, HttpRequest, response, text};

/// The source of `channels.js`, to serve or embed yourself (with your own cache headers, in a
/// bundle, ...).
///
/// ```
/// assert!(channels_core::client::CHANNELS_JS.contains("export class Channel"));
/// ```
pub const CHANNELS_JS: &str = include_str!("client/channels.js");

/// A handler that serves [`CHANNELS_JS`] as `text/javascript` to `GET` and `HEAD` (405 to
/// other methods), with `cache-control: no-cache` so browsers revalidate it after an upgrade
/// of the server, and an `ETag` so that revalidation costs a `304`.
///
/// ```
/// use channels_core::client::channels_js;
/// use channels_core::routing::Router;
///
/// let router = Router::new().http("/static/channels.js", channels_js());
/// # let _ = router;
/// ```
pub fn channels_js() -> impl HttpHandler {
    move |request: HttpRequest| async move {
        if !matches!(*request.scope.method(), http::Method::GET | http::Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let etag = etag();
        let fresh = request
            .scope
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
        let mut answer = if fresh {
            response(StatusCode::NOT_MODIFIED, "text/javascript; charset=utf-8", "")
        } else {
            response(StatusCode::OK, "text/javascript; charset=utf-8", CHANNELS_JS)
        };
        let headers = answer.headers_mut();
        headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
        if let Ok(value) = header::HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        answer
    }
}

/// A strong `ETag` for the compiled-in source: FNV-1a of its bytes.
fn etag() -> String {
    let hash = CHANNELS_JS
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etag_is_stable_and_quoted() {
        assert_eq!(etag(), etag());
        assert!(etag().starts_with('"') && etag().ends_with('"') && etag().len() == 18);
    }
}
