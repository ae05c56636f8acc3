//! Docker's attach stream as the byte pipes a supervisor [`Link`] needs.

use std::pin::Pin;

use agent_core::supervisor::{Handshake, Link, SupervisorLog};
use bollard::container::LogOutput;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio_util::io::StreamReader;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Starts a link over a container's attach streams: the multiplexed output is split into the
/// supervisor's stdout (the protocol) and its stderr (logged).
pub(crate) fn link(
    label: String,
    output: Output,
    input: Pin<Box<dyn AsyncWrite + Send>>,
) -> (Link, Handshake) {
    let log = SupervisorLog::new(label.clone());
    let stderr = log.clone();
    let stdout = output.filter_map(move |item| {
        futures::future::ready(match item {
            Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
            Ok(LogOutput::StdErr { message }) => {
                stderr.push(&message);
                None
            }
            Ok(_) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    });
    Link::start(label, StreamReader::new(Box::pin(stdout)), input, log)
}
