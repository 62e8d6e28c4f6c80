//! What `/metrics` shows: only the series of plugins and tenants that
//! exist now.
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

use std::collections::HashSet;

/// The plugins and tenants whose series are shown.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// (tenant, plugin) of every plugin the host knows.
    pub plugins: HashSet<(String, String)>,
    /// Every tenant with a token or a plugin.
    pub tenants: HashSet<String>,
}

/// `text` (Prometheus text format) without the samples of plugins and
/// tenants that are not [`Live`]. Comment lines stay.
pub(crate) fn retain_live(text: &str, live: &Live) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if keep(line, live) {
            out.push_str(line);
        }
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
        let kept = retain_live(text, &live);
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
