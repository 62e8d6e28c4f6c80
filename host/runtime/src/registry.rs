//! The loaded plugins by tenant, and routing: which plugins an event reaches.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dispatch::Plugin;

/// The plugins of every tenant. Immutable once built: the host swaps in a
/// whole new registry, so a routing decision always sees one consistent set.
#[derive(Default)]
pub struct Registry {
    tenants: BTreeMap<String, Vec<Arc<Plugin>>>,
}

impl Registry {
    /// A registry of `plugins`, grouped by tenant and sorted by name.
    pub fn new(plugins: impl IntoIterator<Item = Arc<Plugin>>) -> Self {
        let mut tenants: BTreeMap<String, Vec<Arc<Plugin>>> = BTreeMap::new();
        for plugin in plugins {
            tenants
                .entry(plugin.tenant().to_owned())
                .or_default()
                .push(plugin);
        }
        for plugins in tenants.values_mut() {
            plugins.sort_by(|a, b| a.name().cmp(b.name()));
        }
        Self { tenants }
    }

    /// The plugins an event of `tenant` with type `ty` reaches: exactly that
    /// tenant's plugins whose subscriptions match the type, by name.
    pub fn route<'a>(&'a self, tenant: &str, ty: &'a str) -> impl Iterator<Item = &'a Arc<Plugin>> {
        self.tenants
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(move |p| p.manifest().subscribes_to(ty))
    }

    /// Every loaded plugin, by tenant and name.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.tenants.values().flatten()
    }

    /// The tenants that have at least one plugin.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }
}
