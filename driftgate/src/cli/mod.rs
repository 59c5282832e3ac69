//! The subcommands that run without Kafka: the simulated fleet (`demo`), replay of
//! recorded input (`replay`), and detector evaluation on recorded streams (`eval`, which
//! reads them with `input`).

pub mod demo;
pub mod eval;
pub mod input;
pub mod replay;
