//! `pushgate-bench`: the load generator of the side-by-side benchmark. It drives pushgate (MPush's
//! phone and gateway protocols), mosquitto (MQTT 3.1.1) and nats-server (NATS core) with the
//! same workloads and the same client-side effort per message.
mod mqtt;
mod nats;

fn main() {}
