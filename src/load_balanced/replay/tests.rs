use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use tonic::body::Body;

use super::{ChannelBuffer, Limits, Replay};

const ROOMY: Limits = Limits {
    per_call: 1 << 20,
    per_channel: 16 << 20,
};

fn frames(parts: &[&'static str], trailers: Option<HeaderMap>) -> Body {
    let mut frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = parts
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(http_body::Frame::trailers(t)));
    }
    Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

async fn read(body: Body) -> Result<(Vec<u8>, Option<HeaderMap>), tonic::Status> {
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn a_second_attempt_sends_what_the_first_sent_and_then_the_rest() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-end", "1".parse().unwrap());
    let channel = Arc::new(ChannelBuffer::default());
    let (replay, first) = Replay::start(
        frames(&["ab", "cd"], Some(trailers)),
        ROOMY,
        channel.clone(),
    );
    let first = read(first).await.unwrap();
    assert_eq!(first.0, b"abcd");
    assert_eq!(channel.held(), 4);
    let second = read(replay.attempt().unwrap()).await.unwrap();
    assert_eq!(second, first, "the replay differs from the first attempt");
    drop(replay);
    assert_eq!(channel.held(), 0, "a finished call keeps nothing");
}

#[tokio::test]
async fn a_body_past_the_call_limit_cannot_be_sent_again() {
    let channel = Arc::new(ChannelBuffer::default());
    let limits = Limits {
        per_call: 3,
        ..ROOMY
    };
    let (replay, first) = Replay::start(frames(&["ab", "cd"], None), limits, channel.clone());
    let first = read(first).await.unwrap();
    assert_eq!(
        first.0, b"abcd",
        "the first attempt is whole past the limit"
    );
    assert!(
        replay.attempt().is_none(),
        "a second attempt would lose `cd`"
    );
    assert_eq!(channel.held(), 0, "what was kept is given back at once");
}

#[tokio::test]
async fn a_full_channel_budget_makes_a_call_not_retryable() {
    let channel = Arc::new(ChannelBuffer::default());
    let limits = Limits {
        per_call: 100,
        per_channel: 5,
    };
    let (mut one, first_of_one) = Replay::start(frames(&["abcd"], None), limits, channel.clone());
    let (two, first_of_two) = Replay::start(frames(&["efgh"], None), limits, channel.clone());
    read(first_of_one).await.unwrap();
    read(first_of_two).await.unwrap();
    assert!(one.attempt().is_some(), "the first call fits the budget");
    assert!(
        two.attempt().is_none(),
        "the second call is past the channel's budget"
    );
    one.commit();
    assert_eq!(channel.held(), 0, "a committed call gives its bytes back");
}

#[tokio::test]
async fn a_stale_attempt_reads_nothing_of_the_callers_body() {
    let channel = Arc::new(ChannelBuffer::default());
    let (replay, stale) = Replay::start(frames(&["ab", "cd"], None), ROOMY, channel);
    let fresh = replay.attempt().unwrap();
    assert!(read(stale).await.is_err(), "a replaced attempt must fail");
    assert_eq!(read(fresh).await.unwrap().0, b"abcd");
}

#[tokio::test]
async fn a_committed_call_keeps_nothing_more() {
    let channel = Arc::new(ChannelBuffer::default());
    let (mut replay, body) = Replay::start(frames(&["ab", "cd"], None), ROOMY, channel.clone());
    replay.commit();
    assert_eq!(
        read(body).await.unwrap().0,
        b"abcd",
        "the attempt goes on whole"
    );
    assert_eq!(channel.held(), 0);
    assert!(replay.attempt().is_none());
}

#[tokio::test]
async fn a_unary_body_is_taken_whole_and_sent_with_its_end() {
    let channel = Arc::new(ChannelBuffer::default());
    let (mut replay, mut first) = Replay::start(frames(&["abc"], None), ROOMY, channel.clone());
    assert!(matches!(replay, Replay::Whole(Some(_))), "{replay:?}");
    assert_eq!(
        channel.held(),
        3,
        "the kept bytes count in the channel's budget"
    );
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "abc");
    assert!(
        http_body::Body::is_end_stream(&first),
        "the one frame carries the end of the stream"
    );
    let second = read(replay.attempt().unwrap()).await.unwrap();
    assert_eq!(second.0, b"abc");
    replay.commit();
    assert_eq!(channel.held(), 0, "a committed call gives its bytes back");
    assert!(replay.attempt().is_none());
}

#[tokio::test]
async fn a_whole_body_past_the_call_limit_is_sent_once() {
    let channel = Arc::new(ChannelBuffer::default());
    let limits = Limits {
        per_call: 2,
        ..ROOMY
    };
    let (replay, first) = Replay::start(frames(&["abc"], None), limits, channel.clone());
    assert_eq!(read(first).await.unwrap().0, b"abc");
    assert!(replay.attempt().is_none());
    assert_eq!(channel.held(), 0);
}

#[tokio::test]
async fn a_body_not_ready_at_the_start_is_kept_as_it_is_read() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(4);
    let source = Body::new(http_body_util::StreamBody::new(tokio_stream_of(rx)));
    let channel = Arc::new(ChannelBuffer::default());
    let (replay, first) = Replay::start(source, ROOMY, channel.clone());
    assert!(matches!(replay, Replay::Streaming(_)), "{replay:?}");
    for part in ["ab", "cd"] {
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(
            part.as_bytes(),
        ))))
        .await
        .unwrap();
    }
    drop(tx);
    assert_eq!(read(first).await.unwrap().0, b"abcd");
    assert_eq!(read(replay.attempt().unwrap()).await.unwrap().0, b"abcd");
}

#[tokio::test]
async fn frames_read_ahead_go_first_and_the_rest_follows() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(4);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"ab"))))
        .await
        .unwrap();
    let source = Body::new(http_body_util::StreamBody::new(tokio_stream_of(rx)));
    let (replay, first) = Replay::start(source, ROOMY, Arc::new(ChannelBuffer::default()));
    assert!(matches!(replay, Replay::Streaming(_)), "{replay:?}");
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"cd"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(read(first).await.unwrap().0, b"abcd");
    assert_eq!(read(replay.attempt().unwrap()).await.unwrap().0, b"abcd");
}

/// A stream of what `rx` receives.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

#[tokio::test]
async fn a_body_that_fails_at_once_fails_its_attempt_and_is_read_no_further() {
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = polls.clone();
    let source = Body::new(http_body_util::StreamBody::new(
        futures_util::stream::poll_fn(move |_| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::task::Poll::Ready(match n {
                0 => Some(Err(tonic::Status::internal("broken"))),
                _ => Some(Ok(http_body::Frame::data(Bytes::from_static(b"late")))),
            })
        }),
    ));
    let (_replay, first) = Replay::start(source, ROOMY, Arc::new(ChannelBuffer::default()));
    assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(read(first).await.is_err());
}

#[tokio::test]
async fn an_empty_body_is_sent_as_ended() {
    let (replay, first) = Replay::start(Body::empty(), ROOMY, Arc::new(ChannelBuffer::default()));
    assert!(http_body::Body::is_end_stream(&first));
    assert!(http_body::Body::is_end_stream(&replay.attempt().unwrap()));
}
