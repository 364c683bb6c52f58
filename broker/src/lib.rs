//! The Sluice broker.
//!
//! # Layout
//! - [`storage`]: the [`storage::LogStorage`] trait and the segment-file implementation.
pub mod storage;
