use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

fn transient() -> Error {
    Error::Unavailable {
        code: tonic::Code::Unavailable,
        message: "down".into(),
        retry_after: None,
    }
}

#[test]
fn doubles_up_to_max() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
    for (d, base) in delays.iter().zip([100u64, 200, 400, 400, 400]) {
        let base = Duration::from_millis(base);
        assert!(
            *d >= base - base / 8 && *d <= base + base / 8,
            "{d:?} vs {base:?}"
        );
    }
    b.reset();
    let d = b.next_delay();
    assert!(d <= Duration::from_millis(113), "{d:?}");
}

#[test]
fn polls_are_not_jittered() {
    let mut b = Backoff::for_poll(Duration::from_millis(30));
    let delays: Vec<_> = (0..3).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(delays, [10, 20, 30]);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_when_the_next_wait_would_pass_the_deadline() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let result: Result<()> = retry(
        Backoff::for_server(),
        start + Duration::from_secs(1),
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        },
        Error::is_transient,
        |_, _| {},
    )
    .await;
    assert!(result.is_err());
    // 100 + 200 + 400 ms fit in a second (jitter or not); 800 more do not.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_an_error_that_is_not_retriable_and_at_success() {
    let calls = AtomicU32::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused: Result<()> = retry(
        Backoff::for_server(),
        deadline,
        || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::Protocol("no".into())) }
        },
        Error::is_transient,
        |_, _| {},
    )
    .await;
    assert!(matches!(refused, Err(Error::Protocol(_))));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    let answer = retry(
        Backoff::for_server(),
        deadline,
        || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err(transient()) } else { Ok(n) } }
        },
        Error::is_transient,
        |_, _| {},
    )
    .await;
    assert_eq!(answer.ok(), Some(2));
}
