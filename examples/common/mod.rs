//! What the cost examples measure with: one typical `use` record.

use keytrail::audit::event::{Event, OperationInfo, Started};
use keytrail::audit::keys::KeyIdentity;
use keytrail::audit::mechanism::Mechanism;
use keytrail::config::Lifecycle;

/// An HMAC signature's record (key 2 without its identity).
pub fn sign_record() -> Event {
    let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
    e.session = Some(1);
    e.slot_id = Some(123456);
    e.session_state = Some("rw_user");
    e.mechanism = Some(Mechanism::bare(0x251));
    e.key("key", 2, None);
    e.operation = Some(OperationInfo {
        kind: "sign",
        init: "C_SignInit",
        parts: 1,
        in_len: 64,
        out_len: 32,
        end: "completed",
    });
    e
}

/// The same record with its key's identity, as a record of a key keytrail knows (what
/// the agent's examples send).
#[allow(dead_code)] // Not every example that includes this module uses it.
pub fn sign_record_with_identity() -> Event {
    let mut e = sign_record();
    let mut id = KeyIdentity::default();
    id.class = Some("CKO_SECRET_KEY");
    id.key_type = Some("CKK_GENERIC_SECRET");
    id.label = Some("hmac-key".into());
    id.id_hex = Some("0102".into());
    e.keys.clear();
    e.key("key", 2, Some(std::sync::Arc::new(id)));
    e
}
