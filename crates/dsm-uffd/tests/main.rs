//! Integration tests of dsm-uffd: real userfaultfd faults on real regions, both delivery
//! modes running the same test bodies.

// Test patterns cast small, known values (page indices, thread numbers) to bytes.
#![allow(clippy::cast_possible_truncation)]

mod suite;
