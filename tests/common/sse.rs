//! A Server-Sent Events client for the feed tests: a hyper HTTP/1
//! connection over TCP or the Unix socket, parsed by `eventsource-stream`.

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyStream, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

pub type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub enum Via<'a> {
    Tcp(u16),
    Unix(&'a Path),
}

/// `GET path_and_query` with `headers`; the status and, on 200, the events.
pub async fn open(
    via: Via<'_>,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Events) {
    let request = headers
        .iter()
        .fold(
            hyper::Request::get(path_and_query).header("host", "localhost"),
            |request, (name, value)| request.header(*name, *value),
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = match via {
        Via::Tcp(port) => {
            let io = TokioIo::new(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
        Via::Unix(path) => {
            let io = TokioIo::new(tokio::net::UnixStream::connect(path).await.unwrap());
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
    };
    let status = response.status();
    let bytes = BodyStream::new(response.into_body())
        .filter_map(|frame| async move { frame.ok().and_then(|f| f.into_data().ok()) })
        .map(Ok::<Bytes, std::convert::Infallible>);
    let events = bytes
        .eventsource()
        .filter_map(|event| async move { event.ok() });
    (status, Box::pin(events))
}

/// The next event, or None when the stream ended; panics on a hang.
pub async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("no event within 60 s")
}
