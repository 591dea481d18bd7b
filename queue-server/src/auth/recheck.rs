//! The grants of a long-lived call (a `Work` stream), looked up again each
//! time the grants file is reloaded: a withdrawn grant ends the call.

use super::{Auth, Caller, Credential, Verb};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::Status;

/// A call's caller, followed across reloads of the grants file.
#[derive(Debug)]
pub struct Recheck {
    auth: Arc<Auth>,
    caller: Caller,
    reloads: watch::Receiver<u64>,
}

impl Recheck {
    /// The caller of `req`, followed from now on; `None` with
    /// authentication off.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<Self> {
        let auth = req.extensions().get::<Arc<Auth>>()?.clone();
        let caller = req.extensions().get::<Caller>()?.clone();
        let reloads = auth.reloads.subscribe();
        Some(Recheck {
            auth,
            caller,
            reloads,
        })
    }

    /// Resolves, with PERMISSION_DENIED naming verb, queue and identity,
    /// once a reload of the grants file no longer grants the caller `verb`
    /// on `queue`; never while it does. Cancel-safe.
    pub async fn withdrawn(&mut self, verb: Verb, queue: &str) -> Status {
        loop {
            if self.reloads.changed().await.is_err() {
                // Authentication is gone with the server: nothing changes.
                return std::future::pending().await;
            }
            let now = self.auth.regrant(&self.caller);
            if let Err(refused) = now.check(verb, queue) {
                return Status::with_details_and_metadata(
                    refused.code(),
                    format!("{} (the grants file changed)", refused.message()),
                    refused.details().to_vec().into(),
                    refused.metadata().clone(),
                );
            }
        }
    }
}

impl Auth {
    /// `caller` with the grants the files give its credential now.
    fn regrant(&self, caller: &Caller) -> Caller {
        let loaded = self.current();
        let principals = match &caller.credential {
            Credential::Token(hash) => loaded.grants.token_by_hash(hash).into_iter().collect(),
            Credential::ServiceAccount { namespace, name } => {
                loaded.grants.serviceaccount(namespace, name)
            }
            Credential::Certificate(cn) => loaded.grants.certificate(cn),
        };
        Caller {
            principals,
            ..caller.clone()
        }
    }
}
