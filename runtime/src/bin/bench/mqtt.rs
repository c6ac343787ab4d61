//! A minimal MQTT 3.1.1 client for the benchmark (QoS 0 publish, subscribe).
