//! The smallest HTTP/1.1 server Prometheus needs: `GET /metrics`, one
//! request per connection (`Connection: close`). Each connection is a task
//! of its own with a deadline, and only so many are served at once, so a
//! slow or hostile client costs a socket for a while, never the GC's time:
//! the runtime only waits on sockets, the datapath is read on a blocking
//! thread.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{CONTENT_TYPE, Exposition};

/// A connection is closed after this long, whatever it is doing.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as accepted.
const MAX_CONNECTIONS: usize = 32;
/// Longest request head accepted (request line and headers).
const MAX_HEAD: usize = 8192;

/// Accepts connections on `listener` and answers them, until the task is
/// dropped.
pub async fn serve(listener: TcpListener, exposition: Arc<Exposition>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut warned = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: say it once, back off.
                if !warned {
                    eprintln!(
                        "bpfmasq run: warning: metrics endpoint: accepting a connection: {e}"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            continue; // dropped: closed at once
        }
        let open = Arc::clone(&open);
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, exposition)).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads one request and writes its response.
async fn answer(mut stream: TcpStream, exposition: Arc<Exposition>) -> std::io::Result<()> {
    let Some(head) = read_head(&mut stream).await? else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
    };
    match route(&head) {
        Route::Metrics => {
            let rendered = tokio::task::spawn_blocking(move || exposition.render()).await;
            match rendered {
                Ok(Ok(text)) => respond(&mut stream, "200 OK", CONTENT_TYPE, &text).await,
                Ok(Err(e)) => {
                    let body = format!("bpfmasq: {e:#}\n");
                    respond(
                        &mut stream,
                        "500 Internal Server Error",
                        "text/plain",
                        &body,
                    )
                    .await
                }
                Err(_) => {
                    let body = "bpfmasq: reading the metrics failed\n";
                    respond(&mut stream, "500 Internal Server Error", "text/plain", body).await
                }
            }
        }
        Route::NotFound => {
            let body = "bpfmasq serves its Prometheus metrics on /metrics only\n";
            respond(&mut stream, "404 Not Found", "text/plain", body).await
        }
        Route::BadMethod => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
    }
}

/// Reads up to the blank line ending the request head; `None` when the
/// client closes first or the head is too long.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
}

/// What the request line asks for.
fn route(head: &str) -> Route {
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (request_line.next(), request_line.next().unwrap_or_default());
    if method != Some("GET") {
        return Route::BadMethod;
    }
    // Prometheus may add parameters (`?name[]=...`); they change nothing here.
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_get_metrics_only() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::BadMethod);
        assert_eq!(route(""), Route::BadMethod);
    }
}
