//! The load generators of `plugbus-bench`, run as a user runs them, against
//! real components: every scenario reports its figures, failures set the
//! exit status, and the durable and HTTP paths deliver every event.

use std::process::Command;

use plugbus_artifacts as artifacts;

/// Runs `plugbus-bench` with `args`: its exit status, its stdout's JSON
/// lines and its stderr.
fn run_bench(args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus-bench"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run plugbus-bench");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    (
        output.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn bench(plugin: &str, scenarios: &str) -> (i32, Vec<serde_json::Value>, String) {
    run_bench(&[
        "bench",
        "--plugin",
        plugin,
        "--events",
        "200",
        "--json",
        "--scenario",
        scenarios,
    ])
}

#[test]
fn bench_reports_every_scenario() {
    let (code, rows, stderr) = bench(
        artifacts::FIXTURE_NOOP,
        "one-plugin,ten-plugins,hundred-tenants",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let expected = [(1, 200), (10, 2000), (100, 200)];
    for (row, (plugins, deliveries)) in rows.iter().zip(expected) {
        assert_eq!(row["plugins"], plugins, "{row}");
        assert_eq!(row["events"], 200, "{row}");
        assert_eq!(row["deliveries"], deliveries, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
        for figure in [
            "events_per_s",
            "cpu_us_per_event",
            "p50_us",
            "p99_us",
            "p999_us",
        ] {
            assert!(
                row[figure].as_f64().is_some_and(|v| v > 0.0),
                "{figure} in {row}"
            );
        }
        assert!(row["p50_us"].as_u64() <= row["p999_us"].as_u64(), "{row}");
    }
}

#[test]
fn bench_fails_when_deliveries_fail_and_names_a_missing_plugin() {
    let (code, rows, stderr) = bench(artifacts::FIXTURE_PANIC, "one-plugin");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(rows[0]["failed"], 200);
    assert!(stderr.contains("200 deliveries failed"), "{stderr}");
    let (code, _, stderr) = bench("/nonexistent/plugin.wasm", "one-plugin");
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/plugin.wasm"), "{stderr}");
}

#[test]
fn bench_reload_reports_swap_latency_and_throughput() {
    let (code, rows, stderr) = run_bench(&[
        "bench-reload",
        "--plugin",
        artifacts::FIXTURE_NOOP,
        "--swaps",
        "2",
        "--large-mib",
        "1",
        "--seconds",
        "1",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let swaps: Vec<_> = rows
        .iter()
        .filter(|r| r.get("median_ms").is_some())
        .collect();
    assert_eq!(swaps.len(), 4, "{rows:?}");
    for row in &swaps {
        assert!(
            row["median_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{row}"
        );
        assert_eq!(row["swaps"], 2);
    }
    let loads: Vec<_> = rows
        .iter()
        .filter(|r| r.get("events_per_s").is_some())
        .collect();
    assert_eq!(loads.len(), 3, "{rows:?}");
    assert!(loads.iter().all(|r| r["events_per_s"].as_f64() > Some(0.0)));
}

#[test]
fn bench_runs_through_the_durable_log() {
    let (code, rows, stderr) = run_bench(&[
        "bench",
        "--plugin",
        artifacts::FIXTURE_NOOP,
        "--events",
        "300",
        "--json",
        "--durable",
        "--scenario",
        "one-plugin,ten-plugins",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 2, "{stderr}");
    assert_eq!(rows[0]["deliveries"], 300);
    assert_eq!(rows[1]["deliveries"], 3000);
    for row in &rows {
        assert_eq!(row["failed"], 0);
        assert!(row["startup_cached_ms"].is_null(), "{row}");
        assert!(row["p50_us"].as_u64().is_some_and(|us| us > 0), "{row}");
    }
}

/// `bench --durable --http` publishes through the HTTP API, one event per
/// request and in batches, and every event is delivered.
#[test]
fn bench_runs_over_http() {
    for batch in ["1", "25"] {
        let (code, rows, stderr) = run_bench(&[
            "bench",
            "--plugin",
            artifacts::FIXTURE_NOOP,
            "--events",
            "200",
            "--json",
            "--durable",
            "--http",
            "--batch",
            batch,
            "--scenario",
            "one-plugin,hundred-tenants",
        ]);
        assert_eq!(code, 0, "batch {batch}: {stderr}");
        assert_eq!(rows.len(), 2, "{stderr}");
        for row in &rows {
            assert_eq!(row["deliveries"], 200, "batch {batch}: {row}");
            assert_eq!(row["failed"], 0);
            assert!(row["p50_us"].as_u64().is_some_and(|us| us > 0), "{row}");
        }
    }
    // Without --durable there is no HTTP front to measure.
    let (code, _, stderr) = run_bench(&["bench", "--plugin", artifacts::FIXTURE_NOOP, "--http"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--durable"), "{stderr}");
}

/// `bench --durable --rate` paces its publishes and still delivers every
/// event, one at a time and in batches.
#[test]
fn bench_paces_publishes_at_a_rate() {
    for batch in ["1", "10"] {
        let (code, rows, stderr) = run_bench(&[
            "bench",
            "--plugin",
            artifacts::FIXTURE_NOOP,
            "--events",
            "300",
            "--json",
            "--durable",
            "--rate",
            "2000",
            "--batch",
            batch,
            "--scenario",
            "one-plugin",
        ]);
        assert_eq!(code, 0, "batch {batch}: {stderr}");
        assert_eq!(rows[0]["deliveries"], 300, "{stderr}");
        assert_eq!(rows[0]["failed"], 0);
    }
    // --rate paces the durable path only.
    let (code, _, stderr) =
        run_bench(&["bench", "--plugin", artifacts::FIXTURE_NOOP, "--rate", "10"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--durable"), "{stderr}");
}

/// `bench-sqlite-peer` reports both rows.
#[test]
fn bench_sqlite_peer_reports_single_and_batched() {
    let (code, rows, stderr) = run_bench(&[
        "bench-sqlite-peer",
        "--events",
        "500",
        "--single-events",
        "50",
        "--batch",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["mode"], "single");
    assert_eq!(rows[0]["events"], 50);
    assert_eq!(rows[1]["mode"], "batched");
    assert_eq!(rows[1]["batch"], 20);
    for row in &rows {
        assert!(row["events_per_s"].as_f64() > Some(0.0), "{row}");
    }
}

/// `bench-throughput` runs its rows as children of a plugbus-bench binary
/// (here this one, as before and as after) and prints the table, with an
/// ack row's pacing taken from its throughput row.
#[test]
fn bench_throughput_prints_the_table() {
    let output = Command::new(env!("CARGO_BIN_EXE_plugbus-bench"))
        .args([
            "bench-throughput",
            "--plugin",
            artifacts::FIXTURE_NOOP,
            "--before",
            env!("CARGO_BIN_EXE_plugbus-bench"),
            "--runs",
            "1",
            "--rows",
            "ack1,memory,peer-batched",
            "--durable-events",
            "400",
            "--memory-events",
            "300",
            "--peer-events",
            "300",
        ])
        .output()
        .expect("run plugbus-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for row in [
        "| 1 plugin, durable | ≥ 150,000 |",
        "| ack p99 at half load: 1 plugin | < 10 ms |",
        "| in-memory publish, 1 plugin, batched | ≥ 1,000,000 |",
        "| peer: SQLite alone, 100 events per transaction | (floor) |",
    ] {
        assert!(stdout.contains(row), "{row} in {stdout}");
    }
    assert!(stdout.contains("after ÷ before"), "{stdout}");
    assert!(stderr.contains("--rate"), "the ack row is paced: {stderr}");
}
