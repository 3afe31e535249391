//! Message history and recovery for the chat (see `channels::layers::History`): every
//! `chat.message` carries its position (`"epoch"`, `"offset"`), and a client that comes back
//! with `?since=EPOCH:OFFSET` (or SSE's `Last-Event-ID`) gets what it missed before the live
//! stream, or `{"type": "chat.unrecovered"}` first when that position is gone.

use std::sync::Arc;

use channels::layers::{Admit, History, Message, StreamCursor, StreamPosition};
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

/// What a returning client gets before the live stream, and its cursor for the live stream.
pub(crate) struct Replay {
    /// `chat.unrecovered` when the position is gone, else the missed `chat.message`s in order.
    pub(crate) messages: Vec<Message>,
    /// Drops the live messages already replayed, and fills gaps.
    pub(crate) cursor: Option<StreamCursor>,
}

/// Reads what followed `since` in `group` (which the client has joined already).
pub(crate) async fn replay(history: &ChatHistory, group: &str, since: &StreamPosition) -> Replay {
    let Some(history) = history else {
        return Replay { messages: vec![unrecovered(None)], cursor: None };
    };
    match history.recover(group, since).await {
        Ok(recovery) if recovery.recovered => {
            let cursor = Some(recovery.cursor());
            Replay { messages: recovery.messages, cursor }
        }
        Ok(recovery) => {
            let cursor = Some(recovery.cursor());
            Replay { messages: vec![unrecovered(Some(&recovery.position))], cursor }
        }
        Err(e) => {
            tracing::warn!(error = %e, %group, "could not read the room's history");
            Replay { messages: vec![unrecovered(None)], cursor: None }
        }
    }
}

/// `{"type": "chat.unrecovered"}`, with the room's current position when known.
fn unrecovered(position: Option<&StreamPosition>) -> Message {
    let value = match position {
        Some(p) => serde_json::json!({"type": "chat.unrecovered", "epoch": &*p.epoch, "offset": p.offset}),
        None => serde_json::json!({"type": "chat.unrecovered"}),
    };
    Message::new(&value).expect("a map with a type")
}

/// A newcomer's cursor (one without `?since=`): from the room's position as it joins (it has
/// joined already), so that it gets every message sent after that, in offset order.
pub(crate) async fn start(history: &ChatHistory, group: &str) -> Option<StreamCursor> {
    match history.as_ref()?.position(group).await {
        Ok(position) => Some(StreamCursor::at(position)),
        Err(e) => {
            tracing::warn!(error = %e, %group, "could not read the room's position");
            None
        }
    }
}

/// What to do with a live message: deliver it, drop it (delivered already), or deliver
/// [`fill`]'s messages instead (some before it are missing).
pub(crate) fn admit(cursor: &mut Option<StreamCursor>, message: &Message) -> Admit {
    match cursor {
        Some(cursor) => cursor.admit(message),
        None => Admit::Deliver,
    }
}

/// [`admit`] for a decoded event.
pub(crate) fn admit_event(cursor: &mut Option<StreamCursor>, event: &ChatEvent) -> Admit {
    match (cursor, event) {
        (Some(cursor), ChatEvent::Message { epoch: Some(epoch), offset: Some(offset), .. }) => {
            cursor.admit_position(&StreamPosition::new(epoch.clone(), *offset))
        }
        _ => Admit::Deliver,
    }
}

/// After [`Admit::Gap`]: the missing messages from the history, then `message`; a
/// `chat.unrecovered` first when the history no longer has them all.
pub(crate) async fn fill(
    history: &ChatHistory,
    cursor: &mut Option<StreamCursor>,
    group: &str,
    message: &Message,
) -> Vec<Message> {
    let (Some(history), Some(cursor)) = (history, cursor) else {
        return vec![message.clone()];
    };
    let filled = cursor.fill(history, group, message).await;
    if filled.complete {
        return filled.messages;
    }
    let mut messages = vec![unrecovered(cursor.position())];
    messages.extend(filled.messages);
    messages
}
