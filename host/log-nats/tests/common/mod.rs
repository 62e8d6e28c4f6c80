//! What several of the NATS log's test files share: a client of the
//! test's own, to read and write the buckets as another host (or a crash)
//! left them.

use async_nats::jetstream;
use plugbus_nats_server::NatsServer;

/// A client of its own, with a runtime to drive it from a test.
pub struct Buckets {
    /// The runtime its requests run on.
    pub runtime: tokio::runtime::Runtime,
    /// The JetStream context.
    pub js: jetstream::Context,
}

impl Buckets {
    /// Connects to `server`.
    pub fn connect(server: &NatsServer) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let js = runtime
            .block_on(async { async_nats::connect(server.url()).await.map(jetstream::new) })
            .expect("connect");
        Self { runtime, js }
    }

    /// The bucket `name`.
    pub fn bucket(&self, name: &str) -> jetstream::kv::Store {
        self.runtime
            .block_on(self.js.get_key_value(name))
            .expect("the bucket")
    }
}
