mod common;
use common::*;

#[test]
fn token_info_through_keytrail_matches_direct() {
    let fx = Fixture::new();
    let direct = open(&softhsm_module());
    let d = direct.get_token_info(token_slot(&direct)).unwrap();
    direct.finalize().unwrap();
    let kt = open(&keytrail_module());
    let k = kt.get_token_info(token_slot(&kt)).unwrap();
    assert_eq!(d.label(), k.label());
    assert_eq!(d.serial_number(), k.serial_number());
    let _ = fx;
}
