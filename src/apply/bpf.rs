//! Classic BPF opcodes (linux/filter.h) for the socket filters portcullis attaches: the
//! health checker's raw socket (answers to its SYNs) and the failover kick's capture (pure
//! ACKs). Named once, so each filter reads as its instructions.

/// A = byte at k.
pub const LDB_ABS: u16 = 0x30;
/// A = half-word at k.
pub const LDH_ABS: u16 = 0x28;
/// X = 4 × (byte at k & 0xf): an IP header's length.
pub const LDX_MSH: u16 = 0xb1;
/// A = byte at X + k.
pub const LDB_IND: u16 = 0x50;
/// A &= k.
pub const AND: u16 = 0x54;
/// A >>= k.
pub const RSH: u16 = 0x74;
/// A += X.
pub const ADD_X: u16 = 0x0c;
/// Jump if A == k.
pub const JEQ: u16 = 0x15;
/// Jump if A == X.
pub const JEQ_X: u16 = 0x1d;
/// Jump if A & k.
pub const JSET: u16 = 0x45;
/// M[k] = A.
pub const ST: u16 = 0x02;
/// X = M[k].
pub const LDX_MEM: u16 = 0x61;
/// Return k: the bytes to keep (0 drops the packet).
pub const RET: u16 = 0x06;
