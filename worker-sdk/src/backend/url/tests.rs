use super::*;

#[test]
fn parses_grpc() {
    let u = QueueUrl::parse("grpc://127.0.0.1:50051").expect("valid");
    assert_eq!(u.scheme, Scheme::Grpc);
    assert_eq!(u.authority, "127.0.0.1:50051");
    assert!(QueueUrl::parse("grpc://[::1]:7").is_ok());
    assert!(QueueUrl::parse("grpc://localhost:7/").is_ok());
}

#[test]
fn parses_several_grpc_endpoints() {
    let u = QueueUrl::parse("grpcs://a.example:50051,b.example:50052").expect("valid");
    assert_eq!(
        u.endpoints().collect::<Vec<_>>(),
        ["a.example:50051", "b.example:50052"]
    );
    assert_eq!(u.host(), "a.example");
    assert!(u.tls);
    for bad in ["grpc://a:1,", "grpc://a:1,b", "grpc://,a:1"] {
        assert!(
            matches!(QueueUrl::parse(bad), Err(Error::InvalidUrl { .. })),
            "{bad}"
        );
    }
}

#[test]
fn rejects_bad_urls() {
    for bad in [
        "127.0.0.1:50051",
        "http://x:1",
        "grpc://",
        "grpc://host",
        "grpc://host:port",
        "grpc://h:1/path",
    ] {
        assert!(
            matches!(QueueUrl::parse(bad), Err(Error::InvalidUrl { .. })),
            "{bad}"
        );
    }
}

#[test]
fn passwords_are_redacted() {
    let u = QueueUrl::parse("amqp://guest:secret@h:5672/%2f").expect("valid");
    assert_eq!(u.redacted(), "amqp://guest:***@h:5672/%2f");
    assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
    assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    assert_eq!(redact("grpc://h:1"), "grpc://h:1");
}

#[test]
fn parses_redis_and_amqp() {
    let u = QueueUrl::parse("redis://127.0.0.1:6379").expect("valid");
    assert_eq!(u.scheme, Scheme::Redis);
    let u = QueueUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
    assert_eq!(u.scheme, Scheme::Amqp);
}
