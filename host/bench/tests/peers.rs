//! The benchmark peers of `plugins/peers` work, so that the boundary
//! benchmark compares plugbus with a plugin that does the same work.

/// FNV-1a, as the `checksum` fixture and the Extism peer compute it.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_extism_peer_hashes_the_payload_like_the_checksum_fixture() {
    let wasm = std::fs::read(plugbus_artifacts::EXTISM_CHECKSUM).expect("the Extism peer");
    let manifest = extism::Manifest::new([extism::Wasm::data(wasm)]);
    let mut plugin = extism::PluginBuilder::new(manifest)
        .with_fuel_limit(1_000_000_000)
        .build()
        .expect("the Extism plugin loads");
    let data = br#"{"sku":"sku-123","new_quantity":4}"#;
    let expected = checksum(data).to_le_bytes();

    let out = plugin
        .call::<&[u8], &[u8]>("handle_data", data)
        .expect("handle_data");
    assert_eq!(out, expected);

    let event = serde_json::json!({
        "specversion": "1.0", "id": "1", "source": "/pos", "type": "inventory.stock_changed",
        "tenant": "acme-pos", "data": {"sku": "sku-123", "new_quantity": 4},
    });
    let out = plugin
        .call::<&[u8], &[u8]>("handle_event", &serde_json::to_vec(&event).expect("json"))
        .expect("handle_event");
    assert_eq!(out, expected);

    let err = plugin
        .call::<&[u8], &[u8]>("handle_data", b"")
        .expect_err("an empty payload fails");
    assert!(err.to_string().contains("nothing to hash"), "{err}");
}
