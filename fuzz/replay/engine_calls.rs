// The body of the `engine_calls` fuzz target, shared (by `include!`) with
// `queue-server/tests/fuzz_regressions.rs`, which replays the inputs kept in
// `fuzz/regressions/engine_calls/`.
//
// The input is a sequence of calls: an opcode byte, a byte choosing the
// queue name and the lease tokens / item ids to use, a length byte, then that
// many bytes decoded as the call's protobuf request (a request that does not
// decode is sent as its default). Every call goes to queue-server's gRPC
// service (`GrpcService`, its `QueueService` methods called directly, no
// network) over an engine on the memory store, on a paused tokio clock (lease
// waits, expiries and back-offs pass at once). After each call, every queue's
// counters must balance: enqueued = pending + delayed + leased + completed +
// dead. Any panic is a finding.

use std::sync::Arc;
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_server::QueueService as _;

/// Queue names the calls use (a fourth choice keeps the decoded one).
const QUEUES: [&str; 3] = ["a", "b", "c"];
/// Calls in one input at most (keeps each run short).
const MAX_CALLS: usize = 64;

/// Runs the calls `data` encodes; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(calls(data));
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte().unwrap_or(0)).min(self.0.len());
        let (chunk, rest) = self.0.split_at(n);
        self.0 = rest;
        chunk
    }
}

/// What the calls so far handed out, for later calls to name.
#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    ids: Vec<String>,
}

impl Seen {
    fn keep(list: &mut Vec<String>, new: impl IntoIterator<Item = String>) {
        list.extend(new);
        let over = list.len().saturating_sub(16);
        list.drain(..over);
    }

    /// `decoded`, or (by `pick`) up to three of the tokens seen.
    fn tokens(&self, pick: u8, decoded: Vec<String>) -> Vec<String> {
        pick_from(&self.tokens, pick, decoded)
    }

    fn ids(&self, pick: u8, decoded: Vec<String>) -> Vec<String> {
        pick_from(&self.ids, pick, decoded)
    }
}

fn pick_from(list: &[String], pick: u8, decoded: Vec<String>) -> Vec<String> {
    let how = pick >> 2;
    if how & 0b11 == 0b11 || list.is_empty() {
        return decoded;
    }
    let n = usize::from(how & 0b11) + 1;
    let start = usize::from(how >> 2);
    (0..n)
        .map(|i| list[(start + i * 3) % list.len()].clone())
        .collect()
}

fn queue(pick: u8, decoded: String) -> String {
    match QUEUES.get(usize::from(pick & 0b11)) {
        Some(q) => (*q).to_owned(),
        None => decoded,
    }
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> M {
    M::decode(bytes).unwrap_or_default()
}

fn limits() -> queue_server::settings::Limits {
    queue_server::settings::Limits {
        max_queues: 8,
        max_payload_bytes: 4096,
        max_message_bytes: 64 * 1024,
        max_queued_bytes: 256 * 1024,
        ..queue_server::settings::Limits::default()
    }
}

async fn calls(data: &[u8]) {
    let engine = queue_server::Engine::open(
        Arc::new(queue_server::store::MemoryStore),
        limits(),
        queue_server::settings::QueueSettings::default(),
    )
    .expect("engine");
    let svc = queue_server::grpc::GrpcService::new(engine.clone());
    let mut seen = Seen::default();
    let mut input = Input(data);
    for _ in 0..MAX_CALLS {
        let (Some(op), Some(pick)) = (input.byte(), input.byte()) else {
            break;
        };
        let body = input.chunk();
        call(&svc, &mut seen, op, pick, body).await;
        check(&engine, op);
    }
    let _ = engine.close().await;
}

fn req<T>(m: T) -> tonic::Request<T> {
    tonic::Request::new(m)
}

async fn call(
    svc: &queue_server::grpc::GrpcService,
    seen: &mut Seen,
    op: u8,
    pick: u8,
    body: &[u8],
) {
    match op % 15 {
        0 => {
            let mut m: pb::CreateQueueRequest = decode(body);
            m.name = queue(pick, m.name);
            let _ = svc.create_queue(req(m)).await;
        }
        1 => {
            let mut m: pb::GetQueueRequest = decode(body);
            m.name = queue(pick, m.name);
            let _ = svc.get_queue(req(m)).await;
        }
        2 => {
            let m: pb::ListQueuesRequest = decode(body);
            let _ = svc.list_queues(req(m)).await;
        }
        3 => {
            let mut m: pb::UpdateQueueRequest = decode(body);
            if let Some(q) = m.queue.as_mut() {
                q.name = queue(pick, std::mem::take(&mut q.name));
            }
            let _ = svc.update_queue(req(m)).await;
        }
        4 => {
            let mut m: pb::DeleteQueueRequest = decode(body);
            m.name = queue(pick, m.name);
            let _ = svc.delete_queue(req(m)).await;
        }
        5 => {
            let mut m: pb::PurgeQueueRequest = decode(body);
            m.name = queue(pick, m.name);
            let _ = svc.purge_queue(req(m)).await;
        }
        6 => {
            let mut m: pb::SealQueueRequest = decode(body);
            m.name = queue(pick, m.name);
            let _ = svc.seal_queue(req(m)).await;
        }
        7 | 8 => {
            let mut m: pb::EnqueueRequest = decode(body);
            m.queue = queue(pick, m.queue);
            if let Ok(r) = svc.enqueue(req(m)).await {
                Seen::keep(
                    &mut seen.ids,
                    r.into_inner().items.into_iter().map(|i| i.id),
                );
            }
        }
        9 | 10 => {
            let mut m: pb::LeaseRequest = decode(body);
            m.queue = queue(pick, m.queue);
            m.complete_tokens = seen.tokens(pick, m.complete_tokens);
            if op % 15 == 10 {
                m.complete_tokens.clear();
            }
            if let Ok(r) = svc.lease(req(m)).await {
                let items = r.into_inner().items;
                Seen::keep(&mut seen.ids, items.iter().map(|i| i.id.clone()));
                Seen::keep(&mut seen.tokens, items.into_iter().map(|i| i.lease_token));
            }
        }
        11 => {
            let mut m: pb::CompleteRequest = decode(body);
            m.queue = queue(pick, m.queue);
            m.lease_tokens = seen.tokens(pick, m.lease_tokens);
            let _ = svc.complete(req(m)).await;
        }
        12 => {
            let mut m: pb::FailRequest = decode(body);
            m.queue = queue(pick, m.queue);
            m.lease_tokens = seen.tokens(pick, m.lease_tokens);
            let _ = svc.fail(req(m)).await;
        }
        13 => {
            if pick & 0b1000_0000 == 0 {
                let mut m: pb::ReleaseRequest = decode(body);
                m.queue = queue(pick, m.queue);
                m.lease_tokens = seen.tokens(pick, m.lease_tokens);
                let _ = svc.release(req(m)).await;
            } else {
                let mut m: pb::RenewRequest = decode(body);
                m.queue = queue(pick, m.queue);
                m.lease_tokens = seen.tokens(pick, m.lease_tokens);
                let _ = svc.renew(req(m)).await;
            }
        }
        _ => {
            if pick & 0b1000_0000 == 0 {
                let mut m: pb::ListDeadRequest = decode(body);
                m.queue = queue(pick, m.queue);
                if let Ok(r) = svc.list_dead(req(m)).await {
                    Seen::keep(
                        &mut seen.ids,
                        r.into_inner().items.into_iter().map(|i| i.id),
                    );
                }
            } else {
                let mut m: pb::RequeueDeadRequest = decode(body);
                m.queue = queue(pick, m.queue);
                m.item_ids = seen.ids(pick, m.item_ids);
                let _ = svc.requeue_dead(req(m)).await;
            }
        }
    }
}

/// Every queue's counters balance.
fn check(engine: &queue_server::Engine, op: u8) {
    let (queues, _) = engine.list_queues_page(None, 1000);
    for q in queues {
        let c = q.counters;
        assert!(
            c.balanced(),
            "after op {op}: queue {} unbalanced: {c:?}",
            q.name
        );
    }
}
