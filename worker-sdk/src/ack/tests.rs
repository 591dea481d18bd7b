use super::*;
use crate::types::LeaseOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_fails_only_its_own_completion() {
    let server = queue_server::start(queue_server::ServerConfig::memory())
        .await
        .expect("server");
    let url = format!("grpc://{}", server.grpc_addr());
    let q = crate::connect(&url)
        .await
        .expect("connect")
        .queue("acker")
        .expect("name");
    q.push(["a", "b", "c"]).await.expect("push");
    let leased = q
        .lease(&LeaseOptions {
            max_items: 3,
            lease: Some(workq_proto::defaults::LEASE),
            wait: Duration::ZERO,
            max_bytes: None,
        })
        .await
        .expect("lease");
    let tokens: Vec<LeaseToken> = leased.items.iter().map(|i| i.token.clone()).collect();
    assert_eq!(tokens.len(), 3);
    q.release(&tokens[1..2]).await.expect("release b");

    let acker = Acker::start(q.clone());
    let results = futures::future::join_all(
        tokens
            .iter()
            .map(|t| acker.complete(&q, t.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(Error::LeaseLost { .. })),
        "{results:?}"
    );
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.pending), (2, 1));
    server.shutdown().await.expect("stops");
}
