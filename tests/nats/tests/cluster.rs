//! The cluster starter: three nodes form a JetStream cluster, an R3 stream
//! is made on it, its leader is killed (the stream goes on under a new
//! leader, nothing acknowledged lost) and restarted (it rejoins and
//! catches up).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use plugbus_nats_server::NatsCluster;

/// Retries `attempt` until it succeeds, for up to a minute (a cluster
/// between leaders refuses requests for a while).
async fn retry<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e:?}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_that_survives_a_node() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.len(), 3);
    let meta = cluster.meta_leader().expect("a meta leader");
    assert!(cluster.index_of(&meta).is_some(), "{meta}");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let mut stream = retry("create the stream", || {
        js.create_stream(stream::Config {
            name: "s".into(),
            subjects: vec!["s.>".into()],
            num_replicas: 3,
            ..stream::Config::default()
        })
    })
    .await;
    let info = stream.info().await.expect("stream info");
    let placed = info.cluster.clone().expect("a clustered stream");
    assert_eq!(placed.replicas.len(), 2, "two followers: {placed:?}");
    let leader = cluster
        .index_of(placed.leader.as_deref().expect("a stream leader"))
        .expect("a node of ours leads");
    for n in 0..10 {
        js.publish("s.x", format!("{n}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    cluster.kill(leader);
    for n in 10..20 {
        retry("publish after the kill", || async {
            js.publish("s.x", format!("{n}").into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    }
    let info = retry("stream info after the kill", || async {
        let mut stream = js.get_stream("s").await.map_err(|e| e.to_string())?;
        stream.info().await.cloned().map_err(|e| e.to_string())
    })
    .await;
    assert!(info.state.messages >= 20, "{:?}", info.state);
    cluster.restart(leader);
    // The restarted node rejoins the stream's group and catches up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = retry("stream info after the restart", || async {
            let mut stream = js.get_stream("s").await.map_err(|e| e.to_string())?;
            stream.info().await.cloned().map_err(|e| e.to_string())
        })
        .await;
        assert!(info.state.messages >= 20);
        let placed = info.cluster.clone().expect("a clustered stream");
        if placed.replicas.len() == 2
            && placed
                .replicas
                .iter()
                .all(|peer| peer.current && !peer.offline)
        {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up: {placed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
