//! pushgate-tests: black-box tests that start the real `pushgate` binary on loopback ports.
//! The end-to-end suite arrives with the runtime.
