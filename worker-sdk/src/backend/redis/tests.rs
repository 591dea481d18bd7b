use super::*;

#[test]
fn digests_are_rediswq_item_keys() {
    // hashlib.sha224(b"apple").hexdigest()
    assert_eq!(
        item_digest(b"apple"),
        "b7bbfdf1a1012999b3c466fdeb906a629caa5e3e022428d1eb702281"
    );
    let k = Keys::new(&QueueName::new("job2").expect("valid"));
    assert_eq!(k.processing, "job2:processing");
    assert!(k.lease("ab").starts_with("job2:leased_by_session:"));
}
