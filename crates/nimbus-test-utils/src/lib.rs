//! nimbus-test-utils
