//! Reads an agent's stdout or stderr line by line into actor messages, with a cap on line length so
//! an agent that prints an endless line cannot exhaust memory, and a cap on the bytes read but not
//! yet handled, so an agent that prints faster than the session handles its lines waits on its
//! pipe (back-pressure) instead of growing the operator's memory.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest line kept; the rest of a longer line is dropped (the line is still delivered).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of one stream's lines read but not yet handled; past this the reader stops reading.
pub const IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;

/// One line, holding its share of the stream's in-flight budget until it is dropped (handled).
#[derive(Debug)]
pub struct Line {
    pub text: String,
    _budget: OwnedSemaphorePermit,
}

/// Reads one line of at most `cap` bytes (without the newline); `None` at end of input.
pub async fn read_line_capped<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    cap: usize,
) -> std::io::Result<Option<String>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut seen_any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(seen_any.then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        seen_any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(if done { take + 1 } else { take });
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

/// Spawns a task that casts `wrap(line)` for each line, then `eof` (if given).
pub fn forward_lines<R, M>(stream: R, to: ActorRef<M>, wrap: fn(Line) -> M, eof: Option<M>)
where
    R: AsyncRead + Unpin + Send + 'static,
    M: ractor::Message,
{
    tokio::spawn(async move {
        let sent = pump(stream, IN_FLIGHT_BYTES, |line| to.cast(wrap(line)).is_ok()).await;
        if let (true, Some(m)) = (sent, eof) {
            let _ = to.cast(m);
        }
    });
}

/// Reads lines into `send` while it accepts them (`false`: the receiver is gone), each line
/// first taking its size from a budget of `budget` bytes that it gives back when dropped.
/// Returns whether the end of the stream was reached.
async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    budget: usize,
    mut send: impl FnMut(Line) -> bool,
) -> bool {
    let budget = budget.clamp(1, u32::MAX as usize);
    let pool = Arc::new(Semaphore::new(budget));
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    while let Ok(Some(text)) = read_line_capped(&mut r, MAX_LINE_BYTES).await {
        // A line longer than the whole budget waits for all of it.
        let share = (text.len() + 1).min(budget) as u32;
        let Ok(permit) = pool.clone().acquire_many_owned(share).await else {
            return false;
        };
        if !send(Line {
            text,
            _budget: permit,
        }) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        let data = format!("one\r\ntwo\n{}\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        assert_eq!(
            read_line_capped(&mut r, 10).await.unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            read_line_capped(&mut r, 10).await.unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(
            read_line_capped(&mut r, 10).await.unwrap().unwrap(),
            "x".repeat(10)
        );
        assert_eq!(
            read_line_capped(&mut r, 10).await.unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(read_line_capped(&mut r, 10).await.unwrap(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_waits_when_its_lines_are_not_handled() {
        // 1,000 lines of 100 bytes against a budget of 1,000 bytes: at most 10 are in flight.
        let data = format!("{}\n", "y".repeat(99)).repeat(1000);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            pump(std::io::Cursor::new(data.into_bytes()), 1000, |l| {
                tx.send(l).is_ok()
            })
            .await
        });
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let mut held = Vec::new();
        while let Ok(l) = rx.try_recv() {
            held.push(l);
        }
        assert_eq!(
            held.len(),
            10,
            "the reader did not wait for its lines to be handled"
        );
        // Handling them (dropping) lets it go on to the end.
        drop(held);
        let mut n = 10;
        while n < 1000 {
            if let Some(l) = rx.recv().await {
                drop(l);
                n += 1;
            }
        }
        assert!(reader.await.unwrap(), "the end of the stream was reached");
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        let data: &[u8] = b"ok \xff\xfe bytes\n";
        let mut r = BufReader::new(data);
        let line = read_line_capped(&mut r, 100).await.unwrap().unwrap();
        assert!(line.starts_with("ok ") && line.ends_with(" bytes"));
    }
}
