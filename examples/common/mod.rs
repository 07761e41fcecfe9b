//! What the cost examples measure with: one typical `use` record.

use keytrail::audit::event::{Event, OperationInfo, Started};
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
