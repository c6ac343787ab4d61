//! A minimal NATS core client for the benchmark (PUB, SUB, PING/PONG).
