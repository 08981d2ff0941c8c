//! Reads an agent's stdout or stderr line by line into actor messages, with a cap on line length so
//! an agent that prints an endless line cannot exhaust memory.

use ractor::ActorRef;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest line kept; the rest of a longer line is dropped (the line is still delivered).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

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
pub fn forward_lines<R, M>(stream: R, to: ActorRef<M>, wrap: fn(String) -> M, eof: Option<M>)
where
    R: AsyncRead + Unpin + Send + 'static,
    M: ractor::Message,
{
    tokio::spawn(async move {
        let mut r = BufReader::with_capacity(64 * 1024, stream);
        while let Ok(Some(line)) = read_line_capped(&mut r, MAX_LINE_BYTES).await {
            if to.cast(wrap(line)).is_err() {
                return;
            }
        }
        if let Some(m) = eof {
            let _ = to.cast(m);
        }
    });
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

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        let data: &[u8] = b"ok \xff\xfe bytes\n";
        let mut r = BufReader::new(data);
        let line = read_line_capped(&mut r, 100).await.unwrap().unwrap();
        assert!(line.starts_with("ok ") && line.ends_with(" bytes"));
    }
}
