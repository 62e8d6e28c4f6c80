//! Leases and the host registry against a real nats-server: two logs (two
//! hosts) contend for leases; one wins, renews, releases; an expired lease
//! goes to the other under a higher epoch, and the stale holder's renewal
//! fails.

use std::time::{Duration, Instant};

use plugbus_log::{Commit, CursorStore, LeaseGrant, LeaseKey, LeaseStore, LeaseTerms, LogError};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

/// Terms under which nothing expires during a test.
const LONG: LeaseTerms = LeaseTerms {
    ttl: Duration::from_secs(600),
    margin: Duration::from_secs(1),
};

/// Terms under which a lease soon expires.
const SHORT: LeaseTerms = LeaseTerms {
    ttl: Duration::from_millis(200),
    margin: Duration::from_millis(50),
};

fn two_hosts(server: &NatsServer) -> (NatsLog, NatsLog) {
    let config = NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    };
    (
        NatsLog::open(config.clone()).expect("open a"),
        NatsLog::open(config).expect("open b"),
    )
}

fn held(grant: &LeaseGrant) -> u64 {
    match grant {
        LeaseGrant::Held { epoch, .. } => *epoch,
        LeaseGrant::Refused { current } => panic!("refused; held as {current:?}"),
    }
}

fn holder(grant: &LeaseGrant) -> Option<String> {
    match grant {
        LeaseGrant::Held { .. } => panic!("granted, expected a refusal"),
        LeaseGrant::Refused { current } => current.as_ref().map(|c| c.holder.clone()),
    }
}

/// Asks `log` for `key` for `host` until it is granted.
fn take_when_free(log: &NatsLog, key: &LeaseKey, host: &str, terms: LeaseTerms) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let grant = log.acquire(key, host, terms).wait().expect("acquire");
        if let LeaseGrant::Held { epoch, .. } = grant {
            return epoch;
        }
        assert!(Instant::now() < deadline, "never granted: {grant:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_of_two_wins_and_keeps_its_epoch_while_it_renews() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    assert!(a.shared());
    let key = LeaseKey::new("shop", "audit");
    let epoch = held(&a.acquire(&key, "host-a", LONG).wait().expect("a"));
    assert!(epoch > 0);
    let refused = b.acquire(&key, "host-b", LONG).wait().expect("b");
    assert_eq!(holder(&refused).as_deref(), Some("host-a"));

    // Renewed, and taken again by its holder: the same epoch.
    let renewed = a.renew(&key, "host-a", epoch, LONG).wait().expect("renew");
    assert_eq!(held(&renewed), epoch);
    let again = a.acquire(&key, "host-a", LONG).wait().expect("again");
    assert_eq!(held(&again), epoch);
    // Nobody else renews it, nor its holder under another epoch.
    let stolen = b
        .renew(&key, "host-b", epoch, LONG)
        .wait()
        .expect("renew b");
    assert_eq!(holder(&stolen).as_deref(), Some("host-a"));
    let wrong = a
        .renew(&key, "host-a", epoch + 1, LONG)
        .wait()
        .expect("renew");
    assert_eq!(holder(&wrong).as_deref(), Some("host-a"));
    let seen = b.lease(&key).expect("lease").expect("recorded");
    assert_eq!((seen.holder.as_str(), seen.epoch), ("host-a", epoch));

    // Another plugin's lease is another lease.
    let other = LeaseKey::new("shop", "mixed");
    held(&b.acquire(&other, "host-b", LONG).wait().expect("other"));
}

#[test]
fn racing_takes_grant_each_lease_once() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    for i in 0..20 {
        let key = LeaseKey::new("race", &format!("p{i}"));
        // Both in flight at once.
        let (ra, rb) = (
            a.acquire(&key, "host-a", LONG),
            b.acquire(&key, "host-b", LONG),
        );
        let (ga, gb) = (ra.wait().expect("a"), rb.wait().expect("b"));
        let winners = [&ga, &gb]
            .iter()
            .filter(|g| matches!(g, LeaseGrant::Held { .. }))
            .count();
        assert_eq!(winners, 1, "{ga:?} {gb:?}");
    }
}

#[test]
fn an_expired_lease_goes_to_the_other_under_a_higher_epoch() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    let key = LeaseKey::new("shop", "audit");
    let first = held(&a.acquire(&key, "host-a", SHORT).wait().expect("a"));
    let second = take_when_free(&b, &key, "host-b", SHORT);
    assert!(second > first, "{second} after {first}");
    // The stale holder can neither renew nor release it.
    let stale = a.renew(&key, "host-a", first, SHORT).wait().expect("renew");
    assert_eq!(holder(&stale).as_deref(), Some("host-b"));
    assert!(!a.release(&key, "host-a", first).wait().expect("release"));
    let seen = a.lease(&key).expect("lease").expect("recorded");
    assert_eq!((seen.holder.as_str(), seen.epoch), ("host-b", second));
    // And taking it back, later, is a third epoch.
    let third = take_when_free(&a, &key, "host-a", SHORT);
    assert!(third > second);
}

#[test]
fn a_released_lease_is_taken_at_once_under_a_higher_epoch() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    let key = LeaseKey::new("shop", "audit");
    let first = held(&a.acquire(&key, "host-a", LONG).wait().expect("a"));
    assert!(a.release(&key, "host-a", first).wait().expect("release"));
    assert_eq!(b.lease(&key).expect("lease"), None);
    let second = held(&b.acquire(&key, "host-b", LONG).wait().expect("b"));
    assert!(second > first);
    assert!(!a.release(&key, "host-a", first).wait().expect("again"));
    assert!(
        b.release(&key, "host-b", second)
            .wait()
            .expect("b releases")
    );
}

#[test]
fn the_registry_lists_the_live_hosts() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    a.register("host-a", LONG).wait().expect("register a");
    b.register("host-b", LONG).wait().expect("register b");
    a.register("host-a", LONG).wait().expect("renew a");
    let ids = |log: &NatsLog| -> Vec<String> {
        log.hosts()
            .expect("hosts")
            .into_iter()
            .map(|h| h.host)
            .collect()
    };
    assert_eq!(ids(&a), ["host-a", "host-b"]);
    a.deregister("host-a").wait().expect("deregister");
    assert_eq!(ids(&b), ["host-b"]);
    // An entry not renewed is gone once its ttl has passed.
    a.register("host-c", SHORT).wait().expect("register c");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids(&b).contains(&"host-c".to_owned()) {
        assert!(Instant::now() < deadline, "host-c never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ids(&b), ["host-b"]);
}

#[test]
fn a_host_id_that_is_no_key_is_refused() {
    let server = NatsServer::start();
    let (a, _) = two_hosts(&server);
    let err = a.register("web.1", LONG).wait().expect_err("a dot");
    assert!(err.to_string().contains("host id"), "{err}");
    let key = LeaseKey::new("shop", "audit");
    assert!(a.acquire(&key, "a b", LONG).wait().is_err());
}

/// Deletes the leases bucket with a client of its own, as an operator
/// might; the next log to open makes it again, counting from revision 1.
fn delete_the_leases_bucket(server: &NatsServer) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let url = server.url();
    runtime.block_on(async move {
        let client = async_nats::connect(url).await.expect("connect");
        async_nats::jetstream::new(client)
            .delete_key_value("plugbus_leases")
            .await
            .expect("delete the bucket");
    });
}

/// A commit of only a cursor, made under `epoch`.
fn commit_under(log: &NatsLog, key: &LeaseKey, cursor: u64, epoch: u64) -> Result<(), LogError> {
    log.commit(Commit {
        tenant: key.tenant.clone(),
        plugin: key.plugin.clone(),
        cursor,
        lease: Some(epoch),
        ..Commit::default()
    })
    .wait()
    .map(|_| ())
}

/// A leases bucket made again counts its revisions from 1, below the
/// epochs the cursor records have fenced: a new take's epoch still passes
/// them, so the new holder commits and the holder from before is refused.
#[test]
fn epochs_keep_growing_across_a_leases_bucket_made_again() {
    let server = NatsServer::start();
    let (a, _) = two_hosts(&server);
    let key = LeaseKey::new("shop", "audit");
    // Other plugins' leases push the bucket's revisions up.
    for i in 0..30 {
        let other = LeaseKey::new("shop", &format!("p{i}"));
        held(&a.acquire(&other, "host-a", LONG).wait().expect("other"));
    }
    let old = held(&a.acquire(&key, "host-a", LONG).wait().expect("a"));
    assert!(old > 30, "{old}");
    commit_under(&a, &key, 5, old).expect("commit under the first lease");

    delete_the_leases_bucket(&server);
    // A host that opens the log now makes the bucket again.
    let b = NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open b");
    let new = held(&b.acquire(&key, "host-b", LONG).wait().expect("b"));
    assert!(new > old, "the new epoch {new} passes the fenced {old}");
    assert_eq!(b.lease(&key).expect("lease").map(|l| l.epoch), Some(new));
    commit_under(&b, &key, 6, new).expect("the new holder commits");
    assert_eq!(b.cursor("shop", "audit").expect("cursor"), Some(6));
    let stale = commit_under(&a, &key, 7, old).expect_err("the old holder is refused");
    assert!(matches!(stale, LogError::LeaseLost { .. }), "{stale}");
    // The old holder's renewal finds the lease gone to the new one.
    let renewal = a.renew(&key, "host-a", old, LONG).wait().expect("renew");
    assert_eq!(holder(&renewal).as_deref(), Some("host-b"));

    // Later takes in the new bucket keep growing: a release and a take,
    // then an expiry and a take, each without a commit in between.
    assert!(b.release(&key, "host-b", new).wait().expect("release"));
    let third = held(&a.acquire(&key, "host-a", SHORT).wait().expect("third"));
    assert!(third > new, "{third} after {new}");
    let fourth = take_when_free(&b, &key, "host-b", LONG);
    assert!(fourth > third, "{fourth} after {third}");
    commit_under(&b, &key, 8, fourth).expect("the fourth holder commits");
    let stale = commit_under(&a, &key, 9, third).expect_err("the third is refused");
    assert!(matches!(stale, LogError::LeaseLost { .. }), "{stale}");
}

/// The one epoch a take cannot see: a holder's whose lease went with the
/// bucket before it committed. Its late commit fences the plugin above the
/// new holder, whose commit is then refused; the new holder's keeper takes
/// the lease again and gets an epoch above that commit, instead of its
/// own refused one back.
#[test]
fn a_holder_refused_after_the_bucket_was_made_again_takes_a_higher_epoch() {
    let server = NatsServer::start();
    let (a, b) = two_hosts(&server);
    let key = LeaseKey::new("shop", "audit");
    for i in 0..30 {
        let other = LeaseKey::new("shop", &format!("p{i}"));
        held(&a.acquire(&other, "host-a", LONG).wait().expect("other"));
    }
    let first = held(&a.acquire(&key, "host-a", LONG).wait().expect("a"));
    commit_under(&a, &key, 5, first).expect("commit under the first lease");
    assert!(a.release(&key, "host-a", first).wait().expect("release"));
    // Taken, and not yet committed under, when the bucket goes.
    let unseen = held(&b.acquire(&key, "host-b", LONG).wait().expect("b"));
    assert!(unseen > first);

    delete_the_leases_bucket(&server);
    let c = NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open c");
    let new = held(&c.acquire(&key, "host-c", LONG).wait().expect("c"));
    assert!(new > first, "{new} after the fenced {first}");
    // The new bucket's first revision over the fence does not reach the
    // epoch the old bucket gave last: the case under test.
    assert!(unseen > new, "{unseen} and {new}");
    // The holder from before commits late, above the new holder...
    commit_under(&b, &key, 6, unseen).expect("the late commit");
    let refused = commit_under(&c, &key, 7, new).expect_err("fenced above");
    assert!(matches!(refused, LogError::LeaseLost { .. }), "{refused}");
    // ...whose keeper takes the lease again: a new epoch, above it.
    let again = held(&c.acquire(&key, "host-c", LONG).wait().expect("again"));
    assert!(again > unseen, "{again} after {unseen}");
    commit_under(&c, &key, 8, again).expect("the new holder commits again");
    let stale = commit_under(&b, &key, 9, unseen).expect_err("the late one is refused");
    assert!(matches!(stale, LogError::LeaseLost { .. }), "{stale}");
    // Taken again by its holder while nothing passed it: the same epoch.
    let current = c.lease(&key).expect("lease").expect("held").epoch;
    let kept = held(&c.acquire(&key, "host-c", LONG).wait().expect("kept"));
    assert_eq!(kept, current);
}
