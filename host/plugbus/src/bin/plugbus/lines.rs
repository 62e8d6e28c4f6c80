//! The lines `dispatch` and `serve --stdin` read and write: CloudEvents
//! in, one JSON object per line (each at most [`MAX_LINE_BYTES`]), and one
//! JSON line per delivery out ([`DeliveryLine`]).

use plugbus::{Delivery, Event, Outcome};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

/// The longest input line accepted.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The lines of `input` with their numbers, counting from 1.
pub(crate) fn numbered_lines(
    input: impl tokio::io::AsyncRead + Unpin + Send,
) -> impl futures::Stream<Item = std::io::Result<(usize, InputLine)>> + Send {
    futures::stream::unfold(
        (tokio::io::BufReader::new(input), 0usize),
        |(mut reader, number)| async move {
            match read_line(&mut reader).await {
                Ok(None) => None,
                Ok(Some(line)) => Some((Ok((number + 1, line)), (reader, number + 1))),
                Err(e) => Some((Err(e), (reader, number + 1))),
            }
        },
    )
}

/// One input line, or the length of a line too long to keep.
pub(crate) enum InputLine {
    Text(Vec<u8>),
    TooLong(usize),
}

/// Reads the next line, keeping at most [`MAX_LINE_BYTES`] of it in memory:
/// the rest of a longer line is read and dropped. `None` at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<InputLine>> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::new();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let read = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() <= MAX_LINE_BYTES || line.ends_with(b"\n") {
        return Ok(Some(InputLine::Text(line)));
    }
    let mut length = line.len();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        let (used, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        reader.consume(used);
        length += used;
        if done {
            break;
        }
    }
    Ok(Some(InputLine::TooLong(length)))
}

/// Parses one input line; `None` for a blank line.
pub(crate) fn parse_line(line: &InputLine) -> Option<Result<Event, String>> {
    let bytes = match line {
        InputLine::TooLong(length) => {
            return Some(Err(format!(
                "the line is {length} bytes long; at most {MAX_LINE_BYTES} are accepted"
            )));
        }
        InputLine::Text(bytes) => bytes,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.trim(),
        Err(e) => return Some(Err(format!("not valid UTF-8: {e}"))),
    };
    if text.is_empty() {
        return None;
    }
    Some(Event::from_json(text).map_err(|e| e.to_string()))
}

/// One line of `dispatch` output.
#[derive(Serialize)]
pub(crate) struct DeliveryLine<'a> {
    event_id: &'a str,
    tenant: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    plugin: &'a str,
    plugin_version: &'a str,
    outcome: &'static str,
    error_kind: Option<&'static str>,
    error_message: Option<&'a str>,
    fuel: u64,
    micros: u64,
    causationid: Option<&'a str>,
    emitted: &'a [plugbus::EmittedEvent],
}

impl<'a> From<&'a Delivery> for DeliveryLine<'a> {
    fn from(d: &'a Delivery) -> Self {
        let failure = match &d.outcome {
            Outcome::Handled => None,
            Outcome::Failed(f) => Some(f),
        };
        Self {
            event_id: &d.event_id,
            tenant: &d.tenant,
            ty: &d.event_type,
            plugin: &d.plugin,
            plugin_version: &d.plugin_version,
            outcome: if failure.is_some() {
                "failed"
            } else {
                "handled"
            },
            error_kind: failure.map(|f| f.kind.as_str()),
            error_message: failure.map(|f| f.message.as_str()),
            fuel: d.fuel,
            micros: u64::try_from(d.duration.as_micros()).unwrap_or(u64::MAX),
            causationid: d.causation_id.as_deref(),
            emitted: &d.emitted,
        }
    }
}
