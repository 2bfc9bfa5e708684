//! `Message::encoded_len` against the frames `encode` really makes.

use crate::encode;

#[test]
fn encoded_len_is_the_length_of_every_sample_frame() {
    let samples = crate::tests::samples();
    assert!(!samples.is_empty());
    for message in &samples {
        let frame = encode(message, 7, 3);
        assert_eq!(message.encoded_len(), frame.len(), "{message:?}");
    }
}

#[test]
fn a_counting_writer_stores_nothing() {
    let message = &crate::tests::samples()[0];
    let mut counter = crate::codec::Writer::counter();
    message.encode_body(&mut counter);
    assert!(counter.written() > 0);
    assert!(counter.finish().is_empty());
}
