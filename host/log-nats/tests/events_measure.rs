//! Throughput of the events role on this machine, printed: run with
//! `cargo test -p plugbus-log-nats --test events_measure -- --ignored --nocapture`.
//! Not a check (the machine is shared and noisy): numbers for the report.

use std::time::Instant;

use plugbus_core::event::Event;
use plugbus_log::{EventStore, ReadLimit};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

fn event(tenant: &str, id: &str) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": "order.placed",
        "tenant": tenant,
        "partitionkey": "order-1",
        "data": { "total": 12 },
    }))
    .expect("a valid event")
}

#[test]
#[ignore = "a measurement, not a check"]
fn measure_append_and_read_throughput() {
    let server = NatsServer::start();
    let log = NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open");
    let n = 10_000;
    let events: Vec<Event> = (0..n).map(|i| event("acme", &format!("e-{i}"))).collect();

    let start = Instant::now();
    for e in events.iter().take(2_000) {
        log.append(vec![e.clone()]).wait().expect("append");
    }
    let one = 2_000.0 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for chunk in events[2_000..].chunks(100) {
        log.append(chunk.to_vec()).wait().expect("append");
    }
    let hundred = (n - 2_000) as f64 / start.elapsed().as_secs_f64();
    println!("append: batches of 1: {one:.0} events/s; batches of 100: {hundred:.0} events/s");

    // Reads of 256 from where the last stopped, as a consumer reads.
    let start = Instant::now();
    let mut after = 0;
    let mut read = 0;
    loop {
        let got = log
            .read_bounded("acme", after, ReadLimit::events(256))
            .expect("read");
        let Some(last) = got.last() else { break };
        after = last.seq;
        read += got.len();
    }
    assert_eq!(read, n);
    let batched = n as f64 / start.elapsed().as_secs_f64();
    println!("read (batched direct get, reads of 256): {batched:.0} events/s");

    // The alternative: one direct get per event.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let per_event = runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("plugbus_events").await.expect("stream");
        let start = Instant::now();
        let mut next = 1;
        let mut read = 0;
        while let Ok(m) = stream
            .direct_get_next_for_subject("plugbus.events.acme.0", Some(next))
            .await
        {
            let _ = Event::from_json(std::str::from_utf8(&m.payload).expect("utf-8"))
                .expect("an event");
            next = m.sequence + 1;
            read += 1;
        }
        assert_eq!(read, n);
        n as f64 / start.elapsed().as_secs_f64()
    });
    println!("read (one direct get per event): {per_event:.0} events/s");

    // The other alternative: an ordered pull consumer over the subject,
    // read through once (its creation included).
    let ordered = runtime.block_on(async {
        use futures::StreamExt as _;
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("plugbus_events").await.expect("stream");
        let start = Instant::now();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "plugbus.events.acme.0".to_owned(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut read = 0;
        while read < n {
            let m = messages.next().await.expect("a message").expect("no error");
            let _ = Event::from_json(std::str::from_utf8(&m.payload).expect("utf-8"))
                .expect("an event");
            read += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    println!("read (an ordered pull consumer, streamed): {ordered:.0} events/s");

    let start = Instant::now();
    for _ in 0..1_000 {
        log.count_after("acme", 0, u64::MAX).expect("count");
    }
    println!(
        "count_after: {:.0} µs each",
        start.elapsed().as_secs_f64() * 1e6 / 1_000.0
    );
}
