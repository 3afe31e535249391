//! Message history and recovery for the chat (see `channels::layers::History`): every
//! `chat.message` carries its position (`"epoch"`, `"offset"`), and a client that comes back
//! with `?since=EPOCH:OFFSET` (or SSE's `Last-Event-ID`) gets what it missed before the live
//! stream, or `{"type": "chat.unrecovered"}` first when that position is gone.

use std::sync::Arc;

use channels::layers::{History, LiveFilter, Message, StreamPosition};
use channels::prelude::*;

use super::ChatEvent;

/// The chat's history: `None` when turned off (`--history 0` or `--history-window 0`).
pub(crate) type ChatHistory = Option<Arc<History>>;

/// The `?since=` position asked for, if any; an error to show the client for a malformed one.
pub(crate) fn since_of(scope: &Scope, last_event_id: bool) -> Result<Option<StreamPosition>, String> {
    let header = if last_event_id { scope.header("last-event-id").filter(|h| !h.is_empty()) } else { None };
    // SSE's own reconnects send the newer position in Last-Event-ID, with the first URL.
    let raw = match header {
        Some(h) => Some(h.to_owned()),
        None => scope.query_param("since").filter(|s| !s.is_empty()),
    };
    match raw {
        None => Ok(None),
        Some(raw) => raw.parse::<StreamPosition>().map(Some).map_err(|e| e.to_string()),
    }
}

/// What a returning client gets before the live stream, and the filter for the live stream.
pub(crate) struct Replay {
    /// `chat.unrecovered` when the position is gone, else the missed `chat.message`s in order.
    pub(crate) messages: Vec<Message>,
    /// Drops the live messages already replayed.
    pub(crate) filter: Option<LiveFilter>,
}

/// Reads what followed `since` in `group` (which the client has joined already).
pub(crate) async fn replay(history: &ChatHistory, group: &str, since: &StreamPosition) -> Replay {
    let Some(history) = history else {
        return Replay { messages: vec![unrecovered(None)], filter: None };
    };
    match history.recover(group, since).await {
        Ok(recovery) if recovery.recovered => {
            let filter = Some(recovery.live_filter());
            Replay { messages: recovery.messages, filter }
        }
        Ok(recovery) => {
            let filter = Some(recovery.live_filter());
            Replay { messages: vec![unrecovered(Some(&recovery.position))], filter }
        }
        Err(e) => {
            tracing::warn!(error = %e, %group, "could not read the room's history");
            Replay { messages: vec![unrecovered(None)], filter: None }
        }
    }
}

/// `{"type": "chat.unrecovered"}`, with the room's current position when known.
fn unrecovered(position: Option<&StreamPosition>) -> Message {
    let value = match position {
        Some(p) => serde_json::json!({"type": "chat.unrecovered", "epoch": p.epoch, "offset": p.offset}),
        None => serde_json::json!({"type": "chat.unrecovered"}),
    };
    Message::new(&value).expect("a map with a type")
}

/// Whether a live `event` passes `filter` (which is dropped at the first new message: the
/// live stream has then moved past what was replayed).
pub(crate) fn admit_event(filter: &mut Option<LiveFilter>, event: &ChatEvent) -> bool {
    let (Some(f), ChatEvent::Message { epoch: Some(epoch), offset: Some(offset), .. }) = (filter.as_ref(), event)
    else {
        return true;
    };
    let admitted = f.admit_position(&StreamPosition::new(epoch.clone(), *offset));
    if admitted {
        *filter = None;
    }
    admitted
}

/// [`admit_event`] for a message not decoded yet.
pub(crate) fn admit_message(filter: &mut Option<LiveFilter>, message: &Message) -> bool {
    let Some(f) = filter.as_ref() else {
        return true;
    };
    if message.message_type() != "chat.message" {
        return true;
    }
    let admitted = f.admit(message);
    if admitted {
        *filter = None;
    }
    admitted
}
