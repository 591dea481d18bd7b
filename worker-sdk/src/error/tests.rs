use super::*;
use tonic::{Code, Status};
use workq_proto::errors::Rejection;

fn refusal(code: Code, reason: ErrorReason) -> Status {
    Rejection::new(code, reason, "words")
        .meta("queue", "q")
        .meta("item", "7")
        .to_status()
}

#[test]
fn statuses_map_to_what_failed() {
    let e = Error::from_status("q", Status::not_found("queue q not found"));
    assert!(matches!(e, Error::QueueNotFound { ref queue } if queue == "q"));
    // A server that sends no reason: on a token call, a stale token.
    let e = Error::from_token_status(
        "q",
        Status::failed_precondition("lease 1.2 is no longer held"),
    );
    assert!(matches!(
        e,
        Error::LeaseLost {
            reason: LeaseLostReason::Unknown,
            ..
        }
    ));
    // Outside token calls, a reasonless FAILED_PRECONDITION is a refusal.
    let e = Error::from_status("q", Status::failed_precondition("queue q is sealed"));
    assert!(matches!(
        e,
        Error::Refused {
            code: Code::FailedPrecondition,
            reason: None,
            ..
        }
    ));
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::ResourceExhausted,
    ] {
        let e = Error::from_status("q", Status::new(code, "x"));
        assert!(e.is_transient(), "{code:?}");
    }
    let e = Error::from_status("q", Status::internal("disk full"));
    assert!(matches!(e, Error::Server { .. }) && !e.is_transient());
}

#[test]
fn reasons_decide_not_the_call() {
    for (reason, lost) in [
        (ErrorReason::LeaseExpired, LeaseLostReason::Expired),
        (ErrorReason::LeaseTaken, LeaseLostReason::Taken),
        (ErrorReason::LeaseFinished, LeaseLostReason::Finished),
        (ErrorReason::ItemCompleted, LeaseLostReason::ItemCompleted),
        (ErrorReason::ItemDead, LeaseLostReason::ItemDead),
    ] {
        // Whether or not the call carried tokens.
        let e = Error::from_status("q", refusal(Code::FailedPrecondition, reason));
        assert_eq!(e.lease_lost_reason(), Some(lost), "{reason:?}");
        assert!(matches!(e, Error::LeaseLost { item: Some(ref i), .. } if i == "7"));
    }
    // A sealed queue on a token call (Lease with complete_tokens) is not a lost lease.
    let e = Error::from_token_status(
        "q",
        refusal(Code::FailedPrecondition, ErrorReason::QueueSealed),
    );
    assert!(
        matches!(e, Error::QueueSealed { ref queue } if queue == "q"),
        "{e:?}"
    );
    let e = Error::from_token_status("q", refusal(Code::NotFound, ErrorReason::QueueNotFound));
    assert!(matches!(e, Error::QueueNotFound { .. }), "{e:?}");
    // An item not found is not a missing queue.
    let e = Error::from_status("q", refusal(Code::NotFound, ErrorReason::ItemNotFound));
    assert!(
        matches!(
            e,
            Error::Refused {
                reason: Some("ITEM_NOT_FOUND"),
                ..
            }
        ),
        "{e:?}"
    );
    let e = Error::from_status(
        "q",
        refusal(Code::InvalidArgument, ErrorReason::LimitExceeded),
    );
    assert!(
        matches!(
            e,
            Error::Refused {
                reason: Some("LIMIT_EXCEEDED"),
                ..
            }
        ),
        "{e:?}"
    );
    for reason in [
        ErrorReason::ServerFull,
        ErrorReason::ShuttingDown,
        ErrorReason::StoreFailed,
    ] {
        let st = Rejection::new(Code::Unavailable, reason, "later")
            .retry_after(Duration::from_secs(3))
            .to_status();
        let e = Error::from_status("q", st);
        assert!(e.is_transient(), "{reason:?}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }
    // A reason from another domain, or one this SDK does not know: by code.
    let e = Error::from_status("q", Status::failed_precondition("x"));
    assert!(matches!(e, Error::Refused { .. }));
}
