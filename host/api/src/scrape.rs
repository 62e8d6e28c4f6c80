//! What `/metrics` shows: only the series of plugins and tenants that
//! exist now, in a stable order: families by name, each with its `# HELP`
//! and `# TYPE`, its series by their labels (the exporter writes them in
//! hash order, which changes from one scrape to the next).
//!
//! The Prometheus exporter (metrics-exporter-prometheus 0.17) has no way to
//! remove one series: its only removal is the recorder-wide idle timeout,
//! which would also drop the series of a quiet plugin that is still loaded,
//! and for good, because the dispatcher registers its counters once per
//! plugin and keeps the handles (a handle whose key was dropped is no
//! longer rendered). So the rendered text is filtered instead: a sample
//! labelled with a `plugin` is shown while that tenant's plugin is known to
//! the host (loaded, or failed to load), and one labelled only with a
//! `tenant` while the tenant has a token or a plugin. The recorder still
//! holds the values of removed plugins (a few series each, for the life of
//! the process): a plugin that comes back continues its counters.

use std::collections::{BTreeMap, HashSet};

/// The plugins and tenants whose series are shown.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// (tenant, plugin) of every plugin the host knows.
    pub plugins: HashSet<(String, String)>,
    /// Every tenant with a token or a plugin.
    pub tenants: HashSet<String>,
}

/// One metric family of the exporter's text: its comment lines and its
/// samples by series.
#[derive(Default)]
struct Family<'a> {
    help: Option<&'a str>,
    kind: Option<&'a str>,
    /// By the labels that tell the series apart (not a histogram's `le`
    /// nor a summary's `quantile`); each series' lines in the exporter's
    /// order (buckets up, then sum and count).
    series: BTreeMap<Vec<(&'a str, String)>, Vec<&'a str>>,
}

/// `text` (the exporter's Prometheus text) with only the samples of
/// [`Live`] plugins and tenants, families sorted by name and series by
/// labels; a family with no sample left is left out whole.
pub(crate) fn tidy(text: &str, live: &Live) -> String {
    let mut families: BTreeMap<&str, Family<'_>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let (Some(which @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            current = Some(name);
            let family = families.entry(name).or_default();
            match which {
                "HELP" => family.help = Some(trimmed),
                _ => family.kind = Some(trimmed),
            }
            continue;
        }
        if !keep(trimmed, live) {
            continue;
        }
        let name = trimmed.split(['{', ' ']).next().unwrap_or_default();
        // A histogram's samples are `<family>_bucket`, `_sum`, `_count`.
        let family = match current {
            Some(family)
                if name
                    .strip_prefix(family)
                    .is_some_and(|suffix| matches!(suffix, "" | "_bucket" | "_sum" | "_count")) =>
            {
                family
            }
            _ => name,
        };
        let key = labels_of(trimmed)
            .unwrap_or_default()
            .into_iter()
            .filter(|(label, _)| !matches!(*label, "le" | "quantile"))
            .collect();
        families
            .entry(family)
            .or_default()
            .series
            .entry(key)
            .or_default()
            .push(trimmed);
    }
    let mut out = String::with_capacity(text.len());
    for family in families.values().filter(|f| !f.series.is_empty()) {
        for line in [family.help, family.kind].into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
        for line in family.series.values().flatten() {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn keep(line: &str, live: &Live) -> bool {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return true;
    }
    let Some(labels) = labels_of(trimmed) else {
        return true;
    };
    let (mut tenant, mut plugin) = (None, None);
    for (name, value) in labels {
        match name {
            "tenant" => tenant = Some(value),
            "plugin" => plugin = Some(value),
            _ => {}
        }
    }
    match (tenant, plugin) {
        (Some(tenant), Some(plugin)) => live.plugins.contains(&(tenant, plugin)),
        // Refusals before a tenant is known carry an empty tenant.
        (Some(tenant), None) => tenant.is_empty() || live.tenants.contains(&tenant),
        _ => true,
    }
}

/// The labels of a sample line, their values unescaped; `None` when it
/// has none (or is not a well-formed sample).
fn labels_of(line: &str) -> Option<Vec<(&str, String)>> {
    let open = line.find('{')?;
    if line[..open].contains(' ') {
        return None;
    }
    let mut rest = &line[open + 1..];
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.starts_with('}') {
            return Some(labels);
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '"' => break at,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_plugins_and_tenants_are_left_out() {
        let text = "\
# TYPE plugbus_deliveries_total counter
plugbus_deliveries_total{tenant=\"acme\",plugin=\"audit\",outcome=\"handled\",kind=\"\"} 3
plugbus_deliveries_total{tenant=\"acme\",plugin=\"gone\",outcome=\"handled\",kind=\"\"} 1
plugbus_deliveries_total{tenant=\"globex\",plugin=\"audit\",outcome=\"handled\",kind=\"\"} 2

# TYPE plugbus_ingested_events_total counter
plugbus_ingested_events_total{tenant=\"acme\"} 3
plugbus_ingested_events_total{tenant=\"former\"} 3
plugbus_rejected_requests_total{tenant=\"\",status=\"401\",reason=\"unauthorized\"} 1
plugbus_http_connections_refused_total 4
plugbus_handle_seconds_bucket{tenant=\"acme\",plugin=\"gone\",le=\"0.5\"} 1
plugbus_handle_seconds_bucket{tenant=\"acme\",plugin=\"audit\",le=\"+Inf\"} 3
odd{path=\"a\\\"}\\\\\",tenant=\"former\"} 1
";
        let live = Live {
            plugins: [("acme", "audit"), ("globex", "audit")]
                .into_iter()
                .map(|(t, p)| (t.to_owned(), p.to_owned()))
                .collect(),
            tenants: ["acme", "globex"].into_iter().map(str::to_owned).collect(),
        };
        let kept = tidy(text, &live);
        assert!(!kept.contains("gone"), "{kept}");
        assert!(!kept.contains("former"), "{kept}");
        for expected in [
            "# TYPE plugbus_deliveries_total counter\n",
            "plugin=\"audit\",outcome",
            "tenant=\"globex\",plugin=\"audit\"",
            "plugbus_ingested_events_total{tenant=\"acme\"} 3\n",
            "status=\"401\"",
            "plugbus_http_connections_refused_total 4\n",
            "le=\"+Inf\"",
        ] {
            assert!(kept.contains(expected), "{expected} in {kept}");
        }
    }

    #[test]
    fn families_and_series_come_sorted_with_their_comments() {
        let text = "\
# TYPE plugbus_retries_total counter
plugbus_retries_total{tenant=\"b\",plugin=\"p\"} 1
plugbus_retries_total{tenant=\"a\",plugin=\"q\"} 2
plugbus_retries_total{tenant=\"gone\",plugin=\"p\"} 2

# HELP plugbus_handle_seconds Time.
# TYPE plugbus_handle_seconds histogram
plugbus_handle_seconds_bucket{tenant=\"b\",plugin=\"p\",le=\"0.5\"} 1
plugbus_handle_seconds_bucket{tenant=\"b\",plugin=\"p\",le=\"+Inf\"} 1
plugbus_handle_seconds_sum{tenant=\"b\",plugin=\"p\"} 0.1
plugbus_handle_seconds_count{tenant=\"b\",plugin=\"p\"} 1
plugbus_handle_seconds_bucket{tenant=\"a\",plugin=\"q\",le=\"0.5\"} 0
plugbus_handle_seconds_bucket{tenant=\"a\",plugin=\"q\",le=\"+Inf\"} 1
plugbus_handle_seconds_sum{tenant=\"a\",plugin=\"q\"} 0.7
plugbus_handle_seconds_count{tenant=\"a\",plugin=\"q\"} 1

# HELP plugbus_dead_letters Depth.
# TYPE plugbus_dead_letters gauge
plugbus_dead_letters{tenant=\"gone\",plugin=\"p\"} 1

# TYPE plugbus_http_connections_open gauge
plugbus_http_connections_open 3
";
        let live = Live {
            plugins: [("a", "q"), ("b", "p")]
                .into_iter()
                .map(|(t, p)| (t.to_owned(), p.to_owned()))
                .collect(),
            tenants: ["a", "b"].into_iter().map(str::to_owned).collect(),
        };
        assert_eq!(
            tidy(text, &live),
            "\
# HELP plugbus_handle_seconds Time.
# TYPE plugbus_handle_seconds histogram
plugbus_handle_seconds_bucket{tenant=\"a\",plugin=\"q\",le=\"0.5\"} 0
plugbus_handle_seconds_bucket{tenant=\"a\",plugin=\"q\",le=\"+Inf\"} 1
plugbus_handle_seconds_sum{tenant=\"a\",plugin=\"q\"} 0.7
plugbus_handle_seconds_count{tenant=\"a\",plugin=\"q\"} 1
plugbus_handle_seconds_bucket{tenant=\"b\",plugin=\"p\",le=\"0.5\"} 1
plugbus_handle_seconds_bucket{tenant=\"b\",plugin=\"p\",le=\"+Inf\"} 1
plugbus_handle_seconds_sum{tenant=\"b\",plugin=\"p\"} 0.1
plugbus_handle_seconds_count{tenant=\"b\",plugin=\"p\"} 1

# TYPE plugbus_http_connections_open gauge
plugbus_http_connections_open 3

# TYPE plugbus_retries_total counter
plugbus_retries_total{tenant=\"a\",plugin=\"q\"} 2
plugbus_retries_total{tenant=\"b\",plugin=\"p\"} 1

"
        );
    }

    #[test]
    fn labels_are_read_with_their_escapes() {
        assert_eq!(
            labels_of("m{a=\"x\\\"}\",b=\"\\\\\",c=\"l\\n\"} 1"),
            Some(vec![
                ("a", "x\"}".to_owned()),
                ("b", "\\".to_owned()),
                ("c", "l\n".to_owned())
            ])
        );
        assert_eq!(labels_of("m 1"), None);
        assert_eq!(labels_of("m{} 1"), Some(vec![]));
        assert_eq!(labels_of("m{a=\"unterminated} 1"), None);
    }
}
