//! Errors that wrap another error keep it as their `source()`, so that a report of the chain
//! (`anyhow`'s `{:#}`, `tracing`'s error fields) still shows what failed underneath.

use std::error::Error;

use channels_core::consumer::JsonFrameError;
use channels_core::context::ContextError;
use channels_core::layer::{GroupError, ReceiveError, SendError};

#[derive(Debug)]
struct ConnectionLost;

impl std::fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection lost")
    }
}

impl Error for ConnectionLost {}

fn json_error() -> serde_json::Error {
    serde_json::from_str::<u8>("not json").expect_err("invalid JSON")
}

/// Every error of the chain below `error`, top first.
fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut below = Vec::new();
    let mut next = error.source();
    while let Some(error) = next {
        below.push(error.to_string());
        next = error.source();
    }
    below
}

#[test]
fn a_backend_failure_is_the_source_of_a_send_error() {
    let error = SendError::Backend(Box::new(ConnectionLost));
    assert_eq!(chain(&error), ["connection lost"]);
}

#[test]
fn a_backend_failure_is_the_source_of_a_receive_error() {
    let error = ReceiveError::Backend(Box::new(ConnectionLost));
    assert_eq!(chain(&error), ["connection lost"]);
}

#[test]
fn a_backend_failure_is_the_source_of_a_group_error() {
    let error = GroupError::Backend(Box::new(ConnectionLost));
    assert_eq!(chain(&error), ["connection lost"]);
}

#[test]
fn a_context_error_for_a_group_leads_to_the_backend_failure() {
    // The group error's message is the context error's own, so the chain goes on below it.
    let error = ContextError::Group(GroupError::Backend(Box::new(ConnectionLost)));
    assert_eq!(chain(&error), ["connection lost"]);
}

#[test]
fn a_context_error_for_json_keeps_the_json_error() {
    let error = ContextError::Json(json_error());
    assert_eq!(chain(&error), [json_error().to_string()]);
}

#[test]
fn a_json_frame_error_keeps_the_json_error() {
    let error = JsonFrameError::Invalid(json_error());
    assert_eq!(chain(&error), [json_error().to_string()]);
}

#[test]
fn errors_without_a_cause_have_no_source() {
    assert!(ContextError::Closed.source().is_none());
    assert!(JsonFrameError::Binary.source().is_none());
    assert!(SendError::ChannelFull { channel: "full".into() }.source().is_none());
}
